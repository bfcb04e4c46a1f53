package blk

import (
	"fmt"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// pollRig is a rig whose device serves inline and holds (Options.Holdoff):
// the test plays the transport's notification goroutine, calling Poll.
type pollRig struct {
	*rig
	hold time.Duration
}

func newPollRig(t *testing.T, drop uint64) pollRig {
	return newPollRigHold(t, drop, time.Hour) // the test decides when to call
}

func newPollRigHold(t *testing.T, drop uint64, hold time.Duration) pollRig {
	fb := newFakeBackend(1 << 20)
	fb.inline = true
	r := newRig(t, Options{Backend: fb, QueueSize: 64, Holdoff: hold}, drop)
	// The worker's goroutine serves once as it starts; after that only
	// the test's calls do.
	<-r.dev.workers[0].first
	return pollRig{r, hold}
}

// post makes a 4 KiB read available on queue 0 without notifying, and
// reports whether the driver would have to notify for it (Linux's
// virtqueue_kick_prepare).
func (r pollRig) post() (kick bool) {
	r.t.Helper()
	d := r.drv[0]
	old := d.AvailIdx()
	q := r.newReq(typeIn, 8, 4096)
	if _, ok := d.post(q.segs(typeIn)...); !ok {
		r.t.Fatal("ring full")
	}
	if r.feat&virtio.FeatureRingEventIdx != 0 {
		// vring_need_event(avail_event, new, old)
		return d.AvailIdx()-d.AvailEvent()-1 < d.AvailIdx()-old
	}
	return d.UsedFlags()&1 == 0 // VRING_USED_F_NO_NOTIFY
}

// poll calls Poll for queue 0 and checks that everything posted is used.
func (r pollRig) poll(step string) time.Duration {
	r.t.Helper()
	again := r.dev.Poll(0)
	if d := r.drv[0]; d.UsedIdx() != d.AvailIdx() {
		r.t.Fatalf("%s: used idx %d after Poll, avail idx %d: a request was left; %v", step, d.UsedIdx(), d.AvailIdx(), r.dev.Describe())
	}
	return again
}

// TestPollHolds: a kick that finds requests holds the queue: the
// completions are pushed at once but their interrupt waits, and the
// driver's next requests need no kick, until a poll finds nothing new,
// which interrupts once and turns notifications back on.
func TestPollHolds(t *testing.T) {
	for _, c := range []struct {
		name string
		drop uint64
	}{{"event_idx", 0}, {"flags", virtio.FeatureRingEventIdx}} {
		t.Run(c.name, func(t *testing.T) {
			r := newPollRig(t, c.drop)
			irqs := r.irq.used.Load()
			if !r.post() {
				t.Fatal("the first request needs no kick: notifications were off before the hold")
			}
			if got := r.poll("kick"); got != r.hold {
				t.Fatalf("Poll after a kick with a request returned %v, want the holdoff %v (no pace known yet)", got, r.hold)
			}
			for i := range 3 {
				if r.post() {
					t.Fatalf("request %d during the hold needs a kick", i+2)
				}
				if got := r.poll("poll"); got <= 0 {
					t.Fatalf("poll %d found a request and returned %v, want a hold", i+1, got)
				}
			}
			if n := r.irq.used.Load() - irqs; n != 0 {
				t.Fatalf("%d interrupts during the hold, want 0", n)
			}
			if got := r.poll("quiet poll"); got != 0 {
				t.Fatalf("a poll that found nothing returned %v, want 0 (the hold ends)", got)
			}
			if n := r.irq.used.Load() - irqs; n != 1 {
				t.Fatalf("%d interrupts when the hold ended, want 1", n)
			}
			if got := len(r.drv[0].reap()); got != 4 {
				t.Fatalf("%d requests completed, want 4", got)
			}
			if !r.post() {
				t.Fatal("after the hold, a request needs no kick: notifications were left off")
			}
			r.poll("kick after the hold")
		})
	}
}

// TestPollDepthOne: a driver that waits for each request (depth 1) is
// held only by probes, one hold in probeEvery: the holds between them end
// at their kick, and each probe that gains nothing makes the kicks after
// it skip holding, 1, 3, 7 ... of them, so that probes, each an interval
// the driver waits, come rarer and rarer. Every kick completes its request
// and interrupts before Poll returns, but for a probe's.
func TestPollDepthOne(t *testing.T) {
	r := newPollRig(t, 0)
	const kicks = 256
	var probes []int
	for i := range kicks {
		irqs := r.irq.used.Load()
		r.post()
		if got := r.poll("kick"); got > 0 {
			probes = append(probes, i)
			if r.irq.used.Load() != irqs {
				t.Fatalf("kick %d: held and interrupted", i)
			}
			if got := r.poll("quiet poll"); got != 0 {
				t.Fatalf("kick %d: the quiet poll returned %v, want 0", i, got)
			}
		}
		if r.irq.used.Load() == irqs {
			t.Fatalf("kick %d: no interrupt", i)
		}
		r.drv[0].reap()
	}
	// Probes at kick 0, then after each back-off (1, 3, 7, 15 kicks)
	// and probeEvery-1 holds ending at their kick.
	want := []int{0}
	for skip := 1; want[len(want)-1]+skip+probeEvery < kicks; skip = min(2*skip+1, maxHoldSkip) {
		want = append(want, want[len(want)-1]+skip+probeEvery)
	}
	if fmt.Sprint(probes) != fmt.Sprint(want) {
		t.Errorf("kicks held (probes) %v, want %v", probes, want)
	}
	if p, w := r.dev.workers[0].penalty, min(1<<len(want)-1, maxHoldSkip); p != w {
		t.Errorf("back-off %d kicks after %d probes that gained nothing, want %d", p, len(want), w)
	}
}

// TestPollDepthRecovers: a queue whose learned depth fell to 1 (a probe
// whose poll found nothing) notices, at its next probe, a driver that
// sends 4 requests one after another again, and from then on holds for
// each such burst until its 4th request.
func TestPollDepthRecovers(t *testing.T) {
	r := newPollRig(t, 0)
	r.post()
	r.poll("probe")
	r.poll("quiet poll") // depth 1, one kick to skip
	r.drv[0].reap()
	// burst sends 4 requests, Poll after each, and says which of those
	// Polls held the queue.
	burst := func() (held [4]bool) {
		for i := range held {
			r.post()
			held[i] = r.poll("burst") > 0
		}
		if held[3] {
			r.poll("quiet poll")
		}
		r.drv[0].reap()
		return held
	}
	// The next probe is hold number probeEvery, after the one kick
	// skipped and probeEvery-1 holds ending at their kick: the first
	// request of burst probeEvery/4+1.
	want := probeEvery/4 + 1
	for n := 1; n <= want; n++ {
		h := burst()
		if held := h[0] && h[1] && h[2]; held != (n == want) {
			t.Fatalf("burst %d held %v; want held only at burst %d, the next probe", n, h, want)
		}
	}
	for i := range 4 {
		if h := burst(); h != [4]bool{true, true, true, false} {
			t.Fatalf("burst %d after the depth was learned again: held %v, want the first 3 (depth 4)", i, h)
		}
	}
}

// TestPollDepth: a hold that ended quiet teaches the queue the driver's
// depth; the next hold ends, and interrupts, as soon as it has gathered
// that many requests, without waiting for a quiet poll.
func TestPollDepth(t *testing.T) {
	r := newPollRig(t, 0)
	burst := func(step string, quiet bool) {
		t.Helper()
		irqs := r.irq.used.Load()
		for i := range 4 {
			r.post()
			got := r.poll(step)
			last := i == 3 && !quiet
			if last && got != 0 {
				t.Fatalf("%s: the 4th request's poll returned %v, want 0: the depth is 4", step, got)
			}
			if !last && got <= 0 {
				t.Fatalf("%s: request %d's poll returned %v, want a hold", step, i+1, got)
			}
			if n := r.irq.used.Load() - irqs; !last && n != 0 {
				t.Fatalf("%s: %d interrupts during the hold", step, n)
			}
		}
		if quiet {
			if got := r.poll(step + ": quiet poll"); got != 0 {
				t.Fatalf("%s: quiet poll returned %v", step, got)
			}
		}
		if n := r.irq.used.Load() - irqs; n != 1 {
			t.Fatalf("%s: %d interrupts, want 1", step, n)
		}
		if got := len(r.drv[0].reap()); got != 4 {
			t.Fatalf("%s: %d requests completed, want 4", step, got)
		}
	}
	burst("first hold (a probe)", true)
	for i := range probeEvery - 1 {
		burst(fmt.Sprintf("hold %d", i+1), false)
	}
	burst("the next probe", true)
}

// TestPollDepthKept: one hold that ends quiet early (a driver of depth 4
// pausing after 2 requests) does not teach the queue depth 2: the depth is
// the largest of the last quietKept holds that ended quiet or at the
// depth, so the next burst of 4 is held to its 4th request, and so is
// every burst until quietKept short holds have come in a row; then the
// depth is 2.
func TestPollDepthKept(t *testing.T) {
	r := newPollRig(t, 0)
	// burst sends n requests, Poll after each, says which of those Polls
	// held the queue, and ends a hold still open with a quiet poll.
	burst := func(n int) []bool {
		held := make([]bool, n)
		for i := range held {
			r.post()
			held[i] = r.poll("burst") > 0
		}
		if held[n-1] {
			if got := r.poll("quiet poll"); got != 0 {
				t.Fatalf("quiet poll returned %v", got)
			}
		}
		r.drv[0].reap()
		return held
	}
	if h := fmt.Sprint(burst(4)); h != "[true true true true]" {
		t.Fatalf("the first burst (a probe) held %s", h)
	}
	if h := fmt.Sprint(burst(2)); h != "[true true]" {
		t.Fatalf("the short burst held %s, want both (depth 4)", h)
	}
	if h := fmt.Sprint(burst(4)); h != "[true true true false]" {
		t.Fatalf("after one short burst, a burst of 4 held %s, want until its 4th request (depth 4 kept)", h)
	}
	// That hold ended at the depth and counts: the next quietKept-1
	// short bursts leave the depth at 4, the quietKept-th makes it 2.
	for i := range quietKept {
		if h := fmt.Sprint(burst(2)); h != "[true true]" {
			t.Fatalf("short burst %d held %s, want both", i+1, h)
		}
		want := 4
		if i == quietKept-1 {
			want = 2
		}
		if d := r.dev.workers[0].depth; d != want {
			t.Fatalf("after %d short bursts in a row the depth is %d, want %d", i+1, d, want)
		}
	}
	if h := fmt.Sprint(burst(4)); h != "[true false true false]" {
		t.Fatalf("after %d short bursts, a burst of 4 held %s, want two holds of 2 (depth 2)", quietKept, h)
	}
}

// TestPollHoldEnds: a driver that keeps adding requests still gets an
// interrupt every holdPolls polls.
func TestPollHoldEnds(t *testing.T) {
	r := newPollRig(t, 0)
	irqs := r.irq.used.Load()
	r.post()
	r.poll("kick")
	for i := 1; i <= holdPolls; i++ {
		r.post()
		got := r.poll("busy poll")
		if i < holdPolls && got <= 0 {
			t.Fatalf("poll %d returned %v, want a hold", i, got)
		}
		if i == holdPolls && got != 0 {
			t.Fatalf("poll %d returned %v, want 0: a hold lasts at most %d polls", i, got, holdPolls)
		}
		r.drv[0].reap()
	}
	if n := r.irq.used.Load() - irqs; n != 1 {
		t.Fatalf("%d interrupts, want 1 as the hold ended", n)
	}
}

// TestKickNeverHolds: Kick, whose caller will not poll, serves and
// interrupts as before, with a holdoff set.
func TestKickNeverHolds(t *testing.T) {
	r := newPollRig(t, 0)
	for i := range 3 {
		irqs := r.irq.used.Load()
		r.post()
		r.dev.Kick(0)
		if r.irq.used.Load() == irqs {
			t.Fatalf("kick %d: no interrupt", i)
		}
		if !r.post() {
			t.Fatalf("kick %d: notifications left off", i)
		}
		r.dev.Kick(0)
		r.drv[0].reap()
	}
}

// TestResetWhileHolding: a reset during a hold returns, and the device
// activated again serves, holds and interrupts as before.
func TestResetWhileHolding(t *testing.T) {
	r := newPollRig(t, 0)
	r.post()
	if got := r.poll("kick"); got <= 0 {
		t.Fatalf("kick returned %v, want a hold", got)
	}
	done := make(chan struct{})
	go func() { r.dev.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Reset during a hold did not return")
	}
	if got := r.dev.Poll(0); got != 0 {
		t.Fatalf("Poll after Reset returned %v, want 0", got)
	}
	r.drv[0].reap()
	if err := r.dev.Activate(r.queues, r.irq); err != nil {
		t.Fatal(err)
	}
	<-r.dev.workers[0].first
	irqs := r.irq.used.Load()
	if !r.post() {
		t.Fatal("after the reset, a request needs no kick: notifications were left off")
	}
	if got := r.poll("kick after the reset"); got <= 0 {
		t.Fatalf("kick after the reset returned %v, want a hold (a probe)", got)
	}
	if got := r.poll("quiet poll"); got != 0 {
		t.Fatalf("quiet poll returned %v", got)
	}
	if n := r.irq.used.Load() - irqs; n != 1 {
		t.Fatalf("%d interrupts after the reset's hold, want 1", n)
	}
}

// TestPollCountsOthersServes: requests another goroutine took from the
// ring during a hold (a completion's serve, the worker's own kick) count
// as found by the next poll: the hold goes on, and its depth includes them.
func TestPollCountsOthersServes(t *testing.T) {
	r := newPollRig(t, 0)
	irqs := r.irq.used.Load()
	r.post()
	r.poll("kick")
	r.post()
	r.dev.Kick(0) // serves the request, the queue still held
	if n := r.irq.used.Load() - irqs; n != 0 {
		t.Fatalf("%d interrupts from a kick during the hold", n)
	}
	if got := r.poll("poll after another's serve"); got <= 0 {
		t.Fatalf("the poll after a serve during the hold returned %v: it ended the hold as quiet", got)
	}
	if got := r.poll("quiet poll"); got != 0 {
		t.Fatalf("quiet poll returned %v", got)
	}
	if d := r.dev.workers[0].depth; d != 2 {
		t.Fatalf("depth %d after a hold of 2 requests, want 2", d)
	}
}

// TestPollPace: the interval between polls follows the driver's pace
// between requests (half again the time per request found), within
// [shortestHold, Holdoff].
func TestPollPace(t *testing.T) {
	const longest = 40 * time.Millisecond
	r := newPollRigHold(t, 0, longest)
	r.post()
	if got := r.poll("kick"); got != longest {
		t.Fatalf("the first hold's interval is %v, want Holdoff (%v): no pace known", got, longest)
	}
	// One request per 10 ms: the interval is at least 15 ms.
	for i := range 3 {
		time.Sleep(10 * time.Millisecond)
		r.post()
		if got := r.poll("slow driver"); got < 15*time.Millisecond || got > longest {
			t.Fatalf("poll %d after 10 ms per request: interval %v, want 15 ms to %v", i+1, got, longest)
		}
	}
	// One request per 100 ms: capped at Holdoff.
	time.Sleep(100 * time.Millisecond)
	r.post()
	if got := r.poll("slower driver"); got != longest {
		t.Fatalf("after 100 ms per request: interval %v, want the cap %v", got, longest)
	}
	// Many requests at once: the pace shrinks (from 15 ms and more),
	// never below shortestHold.
	var got time.Duration
	for range 30 {
		for range 8 {
			r.post()
		}
		if got = r.poll("fast driver"); got < shortestHold || got > longest {
			t.Fatalf("interval %v outside [%v, %v]", got, shortestHold, longest)
		}
		r.drv[0].reap()
	}
	if got >= 5*time.Millisecond {
		t.Errorf("after 30 polls that found 8 requests each, back to back: interval %v, want it well under 15 ms", got)
	}
}

// TestPollAllocs holds the held path (kick, polls, the hold's end and its
// interrupt) to zero allocations per request, as TestDataPathAllocs does
// the plain one.
func TestPollAllocs(t *testing.T) {
	r := newPollRig(t, 0)
	d := r.drv[0]
	q := r.newReq(typeIn, 8, 4096)
	head, ok := d.post(q.segs(typeIn)...)
	if !ok {
		t.Fatal("ring full")
	}
	holds := 0
	step := func() {
		got := r.dev.Poll(0) // the kick
		if got > 0 {
			holds++
		}
		for got > 0 {
			got = r.dev.Poll(0) // until the hold ends
		}
		d.SetUsedEvent(d.UsedIdx())
		d.Add(head) // the same chain again
	}
	for range 100 {
		step()
	}
	if n := testing.AllocsPerRun(1000, step); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
	if holds == 0 {
		t.Error("no kick held the queue: the held path was not measured")
	}
}
