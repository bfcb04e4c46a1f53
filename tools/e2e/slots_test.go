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
// The tests whose 1-vCPU appliance needs a core to itself (ownCore) come
// next whatever their length, so that they run beside the Debian test's
// 1-vCPU appliance, the only one they fit beside, rather than hold a slot
// empty later.
var longest = map[string]int{
	"TestDebianClones":          610,
	"TestMaxVCPUs":              300,
	"TestGuestShapes/64cpu-2G":  290,
	"TestGuestShapes/8cpu-512M": 280,
	"TestCtlRemote":             150,
	"TestDataDisk":              130,
	"TestNetSwitchHung":         100,
	"TestMetrics":               125,
	"TestEscape":                90,
	"TestQcow2Kill":             90,
	"TestHostilePeer":           80,
	"TestDump":                  80,
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

// kind is what an appliance asks of the machine's two cores, for the bed
// to choose which tests may run side by side.
type kind int

const (
	// shared: a 2-vCPU appliance. Two of them share the machine (each
	// keeps 1.1 to 1.6 cores busy); most tests are this.
	shared kind = iota
	// oneCPU: a 1-vCPU appliance that does not mind its neighbour (the
	// Debian guests): it keeps at most one core busy.
	oneCPU
	// ownCore: a 1-vCPU appliance whose guest starves unless that CPU has
	// a core to itself (hundreds of vCPU threads, or APs that Linux gives
	// 10 s to come up): it runs beside oneCPU and ownCore appliances
	// only, never beside a 2-vCPU one, which would take part of its core.
	ownCore
	// alone: an appliance that needs the whole machine.
	alone
)

// fits says whether appliances of kinds a and b may run at once.
func fits(a, b kind) bool {
	switch {
	case a == alone || b == alone:
		return false
	case a == ownCore && b == shared, a == shared && b == ownCore:
		return false
	}
	return true
}

// bed hands out the test bed's slots: to the waiting test with the
// highest priority that fits beside the tests running (settle: the tests
// released together have all asked first; they arrive within
// milliseconds of each other; a late one only loses its place in the
// order, never its slot). A test that does not fit beside the running
// ones is passed over, not waited for: the slot goes to the next that
// fits, and the test gets one once what it cannot run beside has ended.
// Each time the bed falls idle it settles again: a sequential test's
// parallel subtests come in a burst of their own, before the suite's
// parallel tests.
type bed struct {
	quiet   time.Duration // how long no test must have asked before the first slots go
	mu      sync.Mutex
	size    int
	running []kind
	waiting []*waiter
	last    time.Time // when the latest test asked
	settled bool
	timer   *time.Timer
	gen     int // which timer is the bed's: one from before it fell idle is not
}

type waiter struct {
	prio  int
	kind  kind
	ready chan struct{}
}

func newBed(n int) *bed { return &bed{size: n, quiet: 200 * time.Millisecond} }

// take waits for a slot for a test of priority prio and kind k; give
// hands it back.
func (b *bed) take(prio int, k kind) {
	w := &waiter{prio: prio, kind: k, ready: make(chan struct{})}
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

// give returns a slot of kind k.
func (b *bed) give(k kind) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := slices.Index(b.running, k); i >= 0 {
		b.running = slices.Delete(b.running, i, i+1)
	}
	if b.settled {
		b.grantLocked()
	}
	if len(b.running) == 0 && len(b.waiting) == 0 {
		b.settled, b.timer = false, nil // idle: the next burst settles anew
	}
}

func (b *bed) grantLocked() {
	for len(b.running) < b.size {
		best := -1
		for i, w := range b.waiting {
			if (best < 0 || w.prio > b.waiting[best].prio) && b.fitsLocked(w.kind) {
				best = i
			}
		}
		if best < 0 {
			return
		}
		w := b.waiting[best]
		b.waiting = slices.Delete(b.waiting, best, best+1)
		b.running = append(b.running, w.kind)
		close(w.ready)
	}
}

func (b *bed) fitsLocked(k kind) bool {
	for _, r := range b.running {
		if !fits(r, k) {
			return false
		}
	}
	return true
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
		b.take(prio, shared)
		mu.Lock()
		order = append(order, prio)
		mu.Unlock()
		b.give(shared)
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

// TestBedKinds: a 1-vCPU appliance that must have a core to itself never
// starts beside a 2-vCPU one but does beside a 1-vCPU one, taking the slot
// a 2-vCPU test of lower priority would have had; while it runs, the free
// slot stays free rather than go to a test that would take part of its
// core; an appliance that needs the machine waits until it is empty.
func TestBedKinds(t *testing.T) {
	b := newBed(2)
	b.quiet = time.Hour // started by hand below, once all asked
	var mu sync.Mutex
	granted := map[string]bool{}
	ask := func(name string, prio int, k kind) {
		go func() {
			b.take(prio, k)
			mu.Lock()
			granted[name] = true
			mu.Unlock()
		}()
	}
	ask("debian", 610, oneCPU)
	ask("ctl", 150, shared)
	ask("max", 120, ownCore)
	ask("small", 50, shared)
	ask("shapes8", 17, alone)
	for {
		b.mu.Lock()
		n := len(b.waiting)
		if n == 5 {
			b.startLocked()
		}
		b.mu.Unlock()
		if n == 5 {
			break
		}
		runtime.Gosched()
	}
	// Slots are granted under the bed's lock, before give returns: what
	// runs can be read at once; whether a goroutine has noted it yet
	// cannot, so the test reads the bed.
	running := func() []kind {
		b.mu.Lock()
		defer b.mu.Unlock()
		r := slices.Clone(b.running)
		slices.Sort(r)
		return r
	}
	check := func(when string, want ...kind) {
		t.Helper()
		if got := running(); !slices.Equal(got, want) {
			t.Errorf("%s: running %v, want %v", when, got, want)
		}
	}
	check("first", shared, oneCPU)
	b.give(shared) // ctl ends: max, not small, beside debian
	check("after ctl", oneCPU, ownCore)
	b.give(oneCPU) // debian ends: small does not fit beside max
	check("after debian", ownCore)
	b.give(ownCore) // max ends: small; shapes8 waits for an empty bed
	check("after max", shared)
	b.give(shared)
	check("after small", alone)
	b.give(alone)
	check("at the end")
	for {
		mu.Lock()
		n := len(granted)
		mu.Unlock()
		if n == 5 {
			break
		}
		runtime.Gosched()
	}
}
