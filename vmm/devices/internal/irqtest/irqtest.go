// Package irqtest provides an irq.Line that records every level it is
// driven to, so device tests can assert on interrupt transitions.
package irqtest

import (
	"slices"
	"sync"
)

// Recorder is an irq.Line that remembers each Set. It is safe for
// concurrent use. Its zero value is a low line with no history.
type Recorder struct {
	mu     sync.Mutex
	levels []bool
}

// Set records level.
func (r *Recorder) Set(level bool) error {
	r.mu.Lock()
	r.levels = append(r.levels, level)
	r.mu.Unlock()
	return nil
}

// Level is the level last set (false when never set).
func (r *Recorder) Level() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.levels) > 0 && r.levels[len(r.levels)-1]
}

// History returns the levels set so far, oldest first.
func (r *Recorder) History() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.levels)
}

// Rises counts low-to-high transitions, which is what an edge-triggered
// interrupt controller turns into interrupts.
func (r *Recorder) Rises() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, prev := 0, false
	for _, l := range r.levels {
		if l && !prev {
			n++
		}
		prev = l
	}
	return n
}

// Reset forgets the history (the current level is kept as the only entry).
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.levels) > 0 {
		r.levels = []bool{r.levels[len(r.levels)-1]}
	}
}
