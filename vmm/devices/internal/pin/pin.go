// Package pin drives a device's interrupt line from the device's state
// without ever calling the line while the device's own lock is held.
package pin

import (
	"sync"

	"github.com/hyperroot/hyperroot/vmm/irq"
)

// Pin remembers the level a device wants on its irq.Line and drives the line
// to it.
//
// The protocol, shared by every legacy device: a device calls Want (or
// Pulse) with its own mutex held, which only records the wish, and Flush
// after releasing that mutex, which calls Line.Set. Flush combines
// concurrent callers: while one goroutine is inside Set, the others leave
// their wish behind and return, and the busy goroutine drives the line
// again before it leaves. Hence
//   - the line ends at the level of the last Want, in device-lock order;
//   - a low wish is never lost: a line that is high, asked low and then
//     high again before a Flush drives it low and high, so an
//     edge-triggered interrupt controller sees the new rising edge. A
//     guest that read "no interrupt" from the device saw the line low, and
//     the next event must interrupt it again (an 8250 driver polls the
//     UART until IIR says "none", then waits for an edge);
//   - Set is never called concurrently for one line;
//   - Set may call back into the device (and so into Flush) without
//     deadlock, because no lock is held while it runs.
//
// The line is assumed low before the first Flush. Errors from Set are not
// reported: the device cannot act on them; a VMM that wants them logged
// wraps its irq.Line.
type Pin struct {
	line irq.Line

	mu    sync.Mutex
	want  bool // level the device asked for last
	cur   bool // level last driven
	pulse bool // the line must fall before it is driven again
	low   bool // the device wanted the line low since it was last driven
	busy  bool // a goroutine is inside Flush's Set calls
}

// New returns a Pin for line. A nil line gives a Pin that drives nothing,
// so devices need no special case for "no interrupt wired".
func New(line irq.Line) *Pin { return &Pin{line: line} }

// Want records level as the line's desired level.
func (p *Pin) Want(level bool) {
	p.mu.Lock()
	p.want = level
	p.low = p.low || !level
	p.mu.Unlock()
}

// Pulse records level as the desired level and asks that a line which is
// currently high drop first, so that an edge-triggered input sees a new
// rising edge (a device that has a new event while its line is already
// high, like the i8042 loading its next byte).
func (p *Pin) Pulse(level bool) {
	p.mu.Lock()
	p.want = level
	p.pulse = true
	p.mu.Unlock()
}

// Levels reports the level last asked for and the level last driven (for
// a dump: a device that wants its line high while it was driven low has a
// Flush owed).
func (p *Pin) Levels() (want, driven bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.want, p.cur
}

// Flush drives the line to the recorded level. Call it without holding the
// device's lock.
func (p *Pin) Flush() {
	if p.line == nil {
		return
	}
	p.mu.Lock()
	if p.busy {
		// The goroutine inside Set re-reads want before it leaves.
		p.mu.Unlock()
		return
	}
	p.busy = true
	for {
		fall := (p.pulse || p.low) && p.cur
		p.pulse, p.low = false, false
		want := p.want
		if !fall && want == p.cur {
			break
		}
		p.mu.Unlock()
		if fall {
			_ = p.line.Set(false)
		}
		if want || !fall {
			_ = p.line.Set(want)
		}
		p.mu.Lock()
		p.cur = want
	}
	p.busy = false
	p.mu.Unlock()
}
