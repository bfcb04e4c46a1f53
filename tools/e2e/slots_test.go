package e2e

import (
	"flag"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// longest are the parallel tests that take longest, with their seconds in
// a CI run (the test report of 2026-12-05): they take the test bed's
// slots first, longest first, so that no slot idles at the end of the run
// while one of them still has minutes to go. Go resumes paused parallel
// tests in no fixed order: the Debian test once started 31 minutes into a
// run that its 10 minutes then pushed past the package's 40-minute limit.
var longest = map[string]int{
	"TestDebianClones":  610,
	"TestCtlRemote":     150,
	"TestDataDisk":      130,
	"TestNetSwitchHung": 100,
	"TestMetrics":       125,
	"TestGuestShapes":   120,
	"TestEscape":        90,
	"TestQcow2Kill":     90,
	"TestHostilePeer":   80,
	"TestDump":          80,
}

// TestMain lets every parallel test past t.Parallel at once (go test's
// -parallel is the number of CPUs otherwise, which would leave the order
// to Go), so that the bed below chooses which ones run.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.parallel"); f != nil {
		f.Value.Set("1000")
	}
	os.Exit(m.Run())
}

// bed hands out the test bed's slots: to the waiting test with the
// highest priority, once the tests released together have all asked
// (settle: they arrive within milliseconds of each other; a late one only
// loses its place in the order, never its slot). Each time the bed falls
// idle it settles again: a sequential test's parallel subtests (the guest
// shapes') come in a burst of their own, before the suite's parallel tests.
type bed struct {
	quiet   time.Duration // how long no test must have asked before the first slots go
	mu      sync.Mutex
	size    int
	free    int
	waiting []*waiter
	last    time.Time // when the latest test asked
	settled bool
	timer   *time.Timer
	gen     int // which timer is the bed's: one from before it fell idle is not
}

type waiter struct {
	prio  int
	ready chan struct{}
}

func newBed(n int) *bed { return &bed{size: n, free: n, quiet: 200 * time.Millisecond} }

// take waits for a slot.
func (b *bed) take(prio int) {
	w := &waiter{prio: prio, ready: make(chan struct{})}
	b.mu.Lock()
	b.waiting = append(b.waiting, w)
	b.last = time.Now()
	if b.settled {
		b.grantLocked()
	} else if b.timer == nil {
		b.gen++
		gen := b.gen
		b.timer = time.AfterFunc(b.quiet, func() { b.settle(gen) })
	}
	b.mu.Unlock()
	<-w.ready
}

// settle starts handing out slots once no test has asked for a while
// (gen: the timer that called it, ignored if it is no longer the bed's).
func (b *bed) settle(gen int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen || b.settled {
		return
	}
	if wait := b.quiet - time.Since(b.last); wait > 0 {
		b.timer.Reset(wait)
		return
	}
	b.startLocked()
}

// startLocked hands out the first slots.
func (b *bed) startLocked() {
	b.settled = true
	b.grantLocked()
}

// give returns a slot.
func (b *bed) give() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free++
	if b.settled {
		b.grantLocked()
	}
	if b.free == b.size && len(b.waiting) == 0 {
		b.settled, b.timer = false, nil // idle: the next burst settles anew
	}
}

func (b *bed) grantLocked() {
	for b.free > 0 && len(b.waiting) > 0 {
		best := 0
		for i, w := range b.waiting {
			if w.prio > b.waiting[best].prio {
				best = i
			}
		}
		w := b.waiting[best]
		b.waiting = append(b.waiting[:best], b.waiting[best+1:]...)
		b.free--
		close(w.ready)
	}
}

// TestBedOrder: tests that ask together get the slots highest priority
// first, whatever the order they asked in, and so does a second burst
// once the bed has fallen idle; one that asks while others run waits its
// turn; every slot given back is handed on.
func TestBedOrder(t *testing.T) {
	b := newBed(1)
	b.quiet = time.Hour // started by hand below, once all asked
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	run := func(prio int) {
		defer wg.Done()
		b.take(prio)
		mu.Lock()
		order = append(order, prio)
		mu.Unlock()
		b.give()
	}
	burst := func(prios ...int) []int {
		order = nil
		for _, p := range prios {
			wg.Add(1)
			go run(p)
		}
		for {
			b.mu.Lock()
			n := len(b.waiting)
			if n == len(prios) {
				b.startLocked()
			}
			b.mu.Unlock()
			if n == len(prios) {
				break
			}
			runtime.Gosched()
		}
		wg.Wait()
		return order
	}
	if got := burst(0, 5, 610, 80); !slices.Equal(got, []int{610, 80, 5, 0}) {
		t.Errorf("first burst: slots went to %v, want [610 80 5 0]", got)
	}
	if b.settled {
		t.Error("the bed did not settle anew once idle")
	}
	if got := burst(3, 0, 130); !slices.Equal(got, []int{130, 3, 0}) {
		t.Errorf("second burst: slots went to %v, want [130 3 0]", got)
	}
}
