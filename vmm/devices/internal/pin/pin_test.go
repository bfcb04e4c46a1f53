package pin

import (
	"slices"
	"sync"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
	"github.com/hyperroot/hyperroot/vmm/irq"
)

func TestTransitions(t *testing.T) {
	tests := []struct {
		name string
		ops  string // w = Want(true), l = Want(false), p = Pulse(true), q = Pulse(false), . = Flush
		want []bool
	}{
		{"raise", "w.", []bool{true}},
		{"no change no call", "l.l.l.", nil},
		{"raise lower", "w.l.", []bool{true, false}},
		{"repeat raise once", "w.w.w.", []bool{true}},
		{"pulse while high gives an edge", "w.p.", []bool{true, false, true}},
		{"pulse while low is a raise", "p.", []bool{true}},
		{"pulse low while high lowers once", "w.q.", []bool{true, false}},
		// The guest read "no interrupt" (the device wanted the line
		// low) and a new event came before the flush: the controller
		// must still see an edge.
		{"low wish between flushes gives an edge", "w.lw.", []bool{true, false, true}},
		{"low wishes between flushes give one edge", "w.lwlw.", []bool{true, false, true}},
		{"low wish while low is a raise", "lw.", []bool{true}},
		{"low wish ending low lowers once", "w.wl.", []bool{true, false}},
		{"last wish wins without a flush between", "wl.", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r irqtest.Recorder
			p := New(&r)
			for _, op := range tt.ops {
				switch op {
				case 'w':
					p.Want(true)
				case 'l':
					p.Want(false)
				case 'p':
					p.Pulse(true)
				case 'q':
					p.Pulse(false)
				case '.':
					p.Flush()
				}
			}
			if got := r.History(); !slices.Equal(got, tt.want) {
				t.Errorf("history %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNilLine(t *testing.T) {
	p := New(nil)
	p.Want(true)
	p.Flush() // must not panic
}

// TestReentrant proves Set may call back into Want/Flush without deadlock and
// that the line still ends at the last wanted level.
func TestReentrant(t *testing.T) {
	var r irqtest.Recorder
	var p *Pin
	depth := 0
	p = New(irq.Func(func(level bool) error {
		r.Set(level)
		if level && depth == 0 {
			depth++
			p.Want(false) // e.g. the handler read the status register
			p.Flush()
		}
		return nil
	}))
	p.Want(true)
	p.Flush()
	if got, want := r.History(), []bool{true, false}; !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
}

// TestConcurrentLastWins hammers one pin from many goroutines, each
// recording its wish under a shared "device" lock as devices do; after all
// have flushed the line must equal the last wish.
func TestConcurrentLastWins(t *testing.T) {
	var r irqtest.Recorder
	p := New(&r)
	var devMu sync.Mutex
	var last bool
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				devMu.Lock()
				last = (i+g)%3 == 0
				p.Want(last)
				devMu.Unlock()
				p.Flush()
			}
		})
	}
	wg.Wait()
	p.Flush()
	if r.Level() != last {
		t.Fatalf("line %v, last wish %v", r.Level(), last)
	}
	// Set must never have been called twice in a row with the same level.
	h := r.History()
	for i := 1; i < len(h); i++ {
		if h[i] == h[i-1] {
			t.Fatalf("redundant Set at %d: %v", i, h[max(0, i-3):i+1])
		}
	}
}
