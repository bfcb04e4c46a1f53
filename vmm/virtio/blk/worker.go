package blk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// minThrottle is the shortest timer armed after the limiter refuses: when
// Wait says "now" but Consume lost a race with another queue, the worker
// sleeps briefly instead of spinning.
const minThrottle = 50 * time.Microsecond

// worker serves one queue. Its mutex guards the queue and the slots;
// whichever goroutine holds it (Kick's, the Backend's delivering a
// completion, or the worker's own goroutine for timers and ErrBusy
// retries) does the work, so a request needs no goroutine hand-off.
type worker struct {
	d     *Device
	index int
	slots []slot
	wake  chan struct{} // to the goroutine: a Backend slot was freed (ErrBusy)
	timer *time.Timer

	kicked atomic.Bool // a kick found mu held: the holder serves before it unlocks
	busy   atomic.Bool // waiting for a Backend slot (ErrBusy); a completion wakes us

	mu   sync.Mutex
	idle sync.Cond // on mu: inflight dropped to 0 while stopping

	// Guarded by mu; per activation.
	free      []int32 // stack of free slot indices
	q         *virtio.Queue
	irq       virtio.Interrupt
	stop      chan struct{} // ends the goroutine
	first     chan struct{} // closed when the goroutine's first serve is over
	stopping  bool          // Reset began: serve nothing, drop results
	inflight  int           // slots the Backend holds
	pending   int32         // slot popped but refused by the limiter or the Backend, or -1
	throttled bool          // the limiter refused; the timer is armed
	broken    bool          // the queue's ring is corrupt: pop nothing more
	req       block.Request

	// The interrupt holdoff (poll): guarded by mu, per activation.
	popped   int            // requests taken from the ring, ever
	holding  bool           // notifications off, interrupts deferred: the kick loop polls
	mark     int            // popped when this hold's last kick or poll ended
	polls    int            // polls of this hold
	gathered int            // requests this hold found, its kick's included
	probe    bool           // this hold ignores depth
	holds    int            // holds begun
	depth    int            // the most requests of the last quietKept holds that ended quiet or at the depth, or 0
	quiet    [quietKept]int // requests each of the last holds that ended quiet gathered
	quietAt  int            // where the next hold that ends quiet goes in quiet
	penalty  int            // holds to skip after the next miss (doubling)
	skip     int            // kicks still to serve without holding
	served   time.Time      // when this hold last found requests
	gap      time.Duration  // the driver's pace during holds (moving average), or 0
}

func newWorker(d *Device, index int, size uint16) *worker {
	w := &worker{
		d:     d,
		index: index,
		slots: make([]slot, size),
		free:  make([]int32, 0, size),
		wake:  make(chan struct{}, 1),
		timer: time.NewTimer(time.Hour),
	}
	w.idle.L = &w.mu
	w.timer.Stop()
	// A valid request is a header, at most seg_max data segments and a
	// status byte: Walk refuses a longer chain (the ring alone would allow
	// 2*size-1 descriptors) before the slot's lists grow for it, so a
	// hostile driver cannot make every slot hold thousands of views, nor
	// hand the Backend more iovecs than IOV_MAX.
	for i := range w.slots {
		w.slots[i].chain.SetMaxDescriptors(d.segMax + 2)
	}
	// A slot's iov grows on its first requests (append, in prepare) and
	// is reused from then on: a chain may hold up to seg_max+2 buffers,
	// but preallocating that for every slot cost 12 KiB of heap per slot
	// (1.2 MiB resident per queue of 256) for an idle disk, where a
	// Linux guest sends one to a few data buffers per request. Slots are
	// taken last-freed first, so a shallow queue only ever grows a few.
	w.clear()
	return w
}

// clear returns the worker to its state after New; its goroutine must not
// be running and no request may be in flight.
func (w *worker) clear() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.free = w.free[:0]
	for i := len(w.slots) - 1; i >= 0; i-- {
		s := &w.slots[i]
		clear(s.iov)
		s.iov, s.status, s.state = s.iov[:0], nil, slotFree
		w.free = append(w.free, int32(i))
	}
	select { // drop a stale wake-up
	case <-w.wake:
	default:
	}
	w.timer.Stop()
	w.kicked.Store(false)
	w.busy.Store(false)
	w.q, w.irq, w.stop, w.stopping = nil, nil, nil, false
	w.inflight, w.pending, w.throttled, w.broken = 0, -1, false, false
	w.popped, w.holding, w.polls, w.gathered, w.penalty, w.skip = 0, false, 0, 0, 0, 0
	w.probe, w.holds, w.depth, w.mark = false, 0, 0, 0
	w.quiet, w.quietAt = [quietKept]int{}, 0
	w.served, w.gap = time.Time{}, 0
}

func (w *worker) start(q *virtio.Queue, irq virtio.Interrupt) {
	w.mu.Lock()
	w.q, w.irq = q, irq
	w.stop = make(chan struct{})
	w.first = make(chan struct{})
	w.mu.Unlock()
}

// run is the worker's goroutine: it serves the queue once (buffers made
// available before activation), then whenever the limiter's timer fires or
// a completion frees a Backend slot it was waiting for, until Reset.
func (w *worker) run(stop <-chan struct{}) {
	defer w.d.wg.Done()
	w.kick()
	close(w.first)
	for {
		select {
		case <-w.wake:
		case <-w.timer.C:
			w.mu.Lock()
			w.throttled = false
			w.mu.Unlock()
		case <-stop:
			return
		}
		w.kick()
	}
}

// kick serves the queue now if no other goroutine is, and otherwise leaves
// it to the one that is (see unlock): it never waits for the mutex.
func (w *worker) kick() {
	w.kicked.Store(true)
	if !w.mu.TryLock() {
		return
	}
	w.kicked.Store(false)
	w.serve()
	w.notify()
	w.unlock()
}

// poll is kick for the notification goroutine, which calls it again after
// the delay it returns (virtiopci.Poller). After a kick that brought
// requests it holds the queue: notifications stay off and the interrupt
// for what it completed waits, while the loop polls the ring (interval);
// the hold ends, and the interrupt goes, at the first poll that finds
// nothing new (the driver has stopped adding requests: it waits for
// these), once it has gathered the driver's depth (next), or after
// holdPolls polls. A driver with many requests to send (a deep queue)
// then sends them without a kick each, and takes their completions with
// one interrupt. Why: in the TCG test bed a guest's request costs
// 300-1000 µs of emulated CPU, most of it the exit of its kick and the
// injection of its interrupt. A driver that waits for each request
// (queue depth 1) would lose an interval per hold: it learns depth 1,
// which ends holds at once, and a hold whose first poll finds nothing
// makes the next 1, 3, 7 ... up to maxHoldSkip kicks go unheld.
func (w *worker) poll() time.Duration {
	hold := w.d.holdoff
	if hold <= 0 {
		w.kick()
		return 0
	}
	w.kicked.Store(true)
	if !w.mu.TryLock() {
		// The holder serves; come back, in case the queue is held.
		return hold
	}
	w.kicked.Store(false)
	again := w.pollLocked(hold)
	w.unlock()
	return again
}

const (
	shortestHold = 2 * time.Microsecond
	holdPolls    = 128 // the longest hold, in polls
	probeEvery   = 16  // holds that ignore the learned depth: one in probeEvery
	maxHoldSkip  = 127 // the most kicks served plainly after holds that gained nothing
	quietKept    = 4   // the holds that ended quiet whose largest gathering is the depth
)

// pollLocked is poll's work. w.mu must be held.
func (w *worker) pollLocked(longest time.Duration) time.Duration {
	if w.q == nil || w.stopping {
		w.holding = false
		return 0
	}
	if !w.holding {
		before := w.popped
		if w.skip > 0 || w.broken {
			w.skip = max(w.skip-1, 0)
			w.serve()
			w.notify()
			return 0
		}
		w.holding, w.polls = true, 0
		w.probe = w.holds%probeEvery == 0
		w.holds++
		w.serve()
		w.gathered = w.popped - before
		if w.gathered == 0 { // nothing to hold for
			w.endHold()
			return 0
		}
		w.served = time.Now()
		return w.next(longest)
	}
	// Requests others took during the hold (a completion's or the
	// goroutine's serve) count as this poll's.
	before := w.mark
	w.serve()
	w.polls++
	if got := w.popped - before; got > 0 {
		w.gathered += got
		// The driver's pace: the time since the last serve per
		// request found (an upper bound: they may have come early).
		now := time.Now()
		gap := now.Sub(w.served) / time.Duration(got)
		w.served = now
		if w.gap == 0 {
			w.gap = gap
		} else {
			w.gap += (gap - w.gap) / 4
		}
		if w.polls < holdPolls {
			return w.next(longest)
		}
		w.settle(true)
		w.endHold()
		return 0
	}
	// Quiet: the driver sent all it had, or paused; see learnDepth. If
	// nothing came after the kick, the driver waited for this request, and
	// the hold cost it a poll interval.
	w.learnDepth(w.gathered)
	w.settle(w.polls > 1)
	w.endHold()
	return 0
}

// learnDepth records what a hold that ended quiet or at the depth
// gathered; the depth is the largest of the last quietKept such counts,
// this one included. A driver with many requests outstanding (random
// writes at queue depth 32 in the TCG test bed) now and then pauses for
// longer than a poll interval in the middle of a batch; taking that short
// hold's count as the depth ended the holds after it at a few requests
// each (0.5-0.8 interrupts a request, against reads' 0.2-0.3 at the same
// depth) until the next probe. A hold that reaches the depth counts too,
// so that pauses scattered among full holds never make up the whole
// window. Holding for more than a driver sends costs it one poll
// interval, the quiet poll that ends the hold, and only until quietKept
// shorter holds have come in a row.
func (w *worker) learnDepth(gathered int) {
	w.quiet[w.quietAt] = gathered
	w.quietAt = (w.quietAt + 1) % quietKept
	w.depth = 0
	for _, n := range w.quiet {
		w.depth = max(w.depth, n)
	}
}

// settle ends a hold's accounting: a hold that gained nothing makes the
// next 1, 3, 7 ... up to maxHoldSkip kicks go unheld; one that gained
// requests ends the back-off.
func (w *worker) settle(gained bool) {
	if !gained {
		w.penalty = min(2*w.penalty+1, maxHoldSkip)
		w.skip = w.penalty
		return
	}
	w.penalty = 0
}

// next ends the hold once it has gathered the driver's depth, the most
// requests the driver had outstanding at the end of the last quiet holds
// (it cannot send more before it learns of a completion), and otherwise
// returns the time to the next poll. A probe (every probeEvery-th hold)
// ignores the depth, so that a driver that went deeper is noticed.
func (w *worker) next(longest time.Duration) time.Duration {
	if !w.probe && w.depth > 0 && w.gathered >= w.depth {
		// A hold that gathered more than its kick brought ends the
		// back-off. A depth-1 driver's hold, ending at its kick, cost
		// nothing and leaves it as it was: only a hold whose first
		// poll finds nothing (at depth 1, a probe) lengthens it, so a
		// depth-1 driver's probes, each an interval it waits, come
		// rarer and rarer, and a queue whose learned depth fell to 1
		// still probes every probeEvery holds, so that it notices the
		// driver going deep again.
		if w.gathered > 1 {
			w.settle(true)
		}
		w.learnDepth(w.gathered)
		w.endHold()
		return 0
	}
	w.mark = w.popped
	return w.interval(longest)
}

// interval is the time to the next poll of a hold: half again the
// driver's pace between requests (so that a poll usually finds the next
// one, and the last poll, which finds none, costs the driver little more
// than a request's time), within [shortestHold, longest]. Before any pace
// is known, longest.
func (w *worker) interval(longest time.Duration) time.Duration {
	if w.gap == 0 {
		return longest
	}
	return min(max(w.gap*3/2, shortestHold), longest)
}

// endHold ends a hold: notifications back on (serving what came before
// they were), then the interrupt for everything completed meanwhile.
func (w *worker) endHold() {
	w.holding = false
	w.serve()
	w.notify()
}

// unlock releases mu, first serving once more for every kick that found it
// held. A kicker sets kicked before trying the lock and a holder reads it
// after releasing, so either the kicker gets the lock or the holder sees
// the flag: no kick is lost.
func (w *worker) unlock() {
	for {
		w.mu.Unlock()
		if !w.kicked.Load() || !w.mu.TryLock() {
			return
		}
		w.kicked.Store(false)
		w.serve()
		w.notify()
	}
}

// describe says where the queue's requests are: taken by the Backend, held
// back (the limiter's or the Backend's refusal) or waiting in the ring.
func (w *worker) describe() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.q == nil {
		return fmt.Sprintf("queue %d: not activated", w.index)
	}
	return fmt.Sprintf("queue %d: %d in flight, %d slots free, held back=%d throttled=%v busy=%v kicked=%v broken=%v stopping=%v holding=%v; ring %s",
		w.index, w.inflight, len(w.free), w.pending, w.throttled, w.busy.Load(), w.kicked.Load(), w.broken, w.stopping, w.holding, w.q.Describe())
}

// Complete implements block.Completer: it runs on the Backend's goroutine,
// finishes the request, serves the queue (slots just freed, buffers the
// driver added meanwhile) and interrupts, then wakes queues waiting for a
// Backend slot.
func (w *worker) Complete(c block.Completion) {
	w.mu.Lock()
	i := uint32(c.Cookie)
	if i >= uint32(len(w.slots)) || w.slots[i].state != slotInFlight {
		w.unlock()
		return // not a request of ours in flight: cannot happen
	}
	w.inflight--
	if w.stopping {
		// Reset is waiting: the driver has reset the device, so guest
		// memory must not change any more; drop the result.
		w.slots[i].state = slotFree
		if w.inflight == 0 {
			w.idle.Broadcast()
		}
		w.mu.Unlock()
		w.d.wakeBusy()
		return
	}
	w.result(int32(i), c)
	w.serve()
	w.notify()
	w.unlock()
	w.d.wakeBusy()
}

// serve submits what the driver made available, then starts it all at once
// (requests are submitted deferred: one io_uring_enter per kick, not per
// request).
// w.mu must be held.
func (w *worker) serve() {
	if w.q == nil || w.stopping {
		return // not activated, or being reset
	}
	w.serveRing()
	w.d.backend.Commit()
}

// serveRing pops and submits requests until the ring is empty, the limiter
// or the Backend refuses, or every slot is in use. In the last three cases
// notifications stay disabled: the timer, the dispatcher or a completion
// brings the worker back.
func (w *worker) serveRing() {
	if w.broken || w.throttled {
		return
	}
	if w.pending >= 0 {
		i := w.pending
		if !w.submit(i) {
			return
		}
		w.pending = -1
	}
	for {
		w.q.DisableNotifications()
		for {
			if len(w.free) == 0 {
				return
			}
			head, ok, err := w.q.Pop()
			if err != nil {
				w.breakQueue(err)
				return
			}
			if !ok {
				break
			}
			w.popped++
			i := w.free[len(w.free)-1]
			w.free = w.free[:len(w.free)-1]
			s := &w.slots[i]
			s.state, s.op, s.start = slotPending, 0, now()
			if err := w.q.Walk(head, &s.chain); err != nil {
				// The chain cannot be trusted to say where its
				// status byte is: give it back with length 0.
				w.report("request refused: %w", err)
				s.status = nil
				w.finish(i, statusIOErr)
				continue
			}
			status, submit := w.d.prepare(s)
			if !submit {
				if s.why != notRefused {
					w.report("request refused: %s", refusals[s.why])
				}
				w.finish(i, status)
				continue
			}
			if !w.submit(i) {
				w.pending = i
				return
			}
		}
		if w.holding || !w.q.EnableNotifications() {
			return
		}
	}
}

// submit charges the limiter and hands slot i to the Backend. It returns
// false when the request must wait (throttled, or the Backend is full);
// otherwise the request is in flight or already finished with an error.
func (w *worker) submit(i int32) bool {
	s := &w.slots[i]
	if l := w.d.limiter; l != nil && !s.charged {
		if !l.Consume(1, s.cost) {
			w.timer.Reset(max(l.Wait(1, s.cost), minThrottle))
			w.throttled = true
			return false
		}
		s.charged = true
	}
	w.req = block.Request{Op: s.op, Offset: s.offset, Length: s.length, Bufs: s.iov, Cookie: uint64(i), Defer: true, Done: w}
	if c, ok := w.d.backend.Inline(&w.req); ok {
		w.req.Bufs = nil
		w.result(i, c)
		return true
	}
	err := w.d.backend.Submit(w.req)
	if errors.Is(err, block.ErrBusy) {
		// Ask for a wake-up at the next completion, then try again: a
		// slot freed in between would not wake us.
		w.busy.Store(true)
		err = w.d.backend.Submit(w.req)
		if errors.Is(err, block.ErrBusy) {
			return false
		}
		w.busy.Store(false)
	}
	w.req.Bufs = nil
	if err != nil {
		w.failed(s, err)
		w.finish(i, statusIOErr)
		return true
	}
	s.state = slotInFlight
	w.inflight++
	return true
}

// result finishes slot i with the outcome c of its transfer, inline or
// delivered by the Backend.
func (w *worker) result(i int32, c block.Completion) {
	s := &w.slots[i]
	status := uint8(statusOK)
	switch {
	case c.Err == nil:
		s.written = s.dataLen
	case errors.Is(c.Err, block.ErrUnsupported):
		status = statusUnsupp
	default:
		status = statusIOErr
		w.failed(s, c.Err)
		// Part of a read may have landed; claim what the Backend says.
		s.written = uint32(min(max(c.N, 0), int64(s.dataLen)))
	}
	w.finish(i, status)
}

// failed tells Options.Errors why the Backend failed s's request.
func (w *worker) failed(s *slot, err error) {
	if w.d.errors == nil {
		return
	}
	n := s.length
	if s.op == block.Read || s.op == block.Write {
		n = 0
		for _, p := range s.iov {
			n += int64(len(p))
		}
	}
	w.report("%v of %d bytes at %d failed: %w", s.op, n, s.offset, err)
}

// report tells Options.Errors, if set, what went wrong with a request.
func (w *worker) report(format string, args ...any) {
	if w.d.errors != nil {
		w.d.errors(fmt.Errorf("virtio-blk: "+format, args...))
	}
}

// finish writes slot i's status byte, gives its chain back to the driver
// and frees the slot. used.len counts the data written and the status byte;
// a chain without a status byte is returned with length 0.
func (w *worker) finish(i int32, status uint8) {
	s := &w.slots[i]
	written := uint32(0)
	if s.status != nil {
		s.status[0] = status
		written = s.written + 1
	}
	moved := uint64(0)
	if status == statusOK {
		moved = s.cost // the bytes read, written or zeroed; 0 for a flush
	}
	w.d.counters.record(s.op, moved, s.start, status)
	// Push fails only for a head Pop never returned.
	_ = w.q.Push(s.chain.Head, written)
	w.release(i)
}

func (w *worker) release(i int32) {
	s := &w.slots[i]
	clear(s.iov) // drop the views of guest memory
	s.iov, s.status, s.state = s.iov[:0], nil, slotFree
	w.free = append(w.free, i)
}

// notify sends a used buffer notification if the driver wants one for what
// was pushed since the last call.
func (w *worker) notify() {
	if w.q != nil && !w.stopping && !w.holding && w.q.NeedInterrupt() {
		// A failed notification cannot be retried meaningfully: the
		// driver's next kick or its timeout recovers.
		_ = w.irq.Used(w.index)
	}
}

// breakQueue stops popping from a queue whose available ring the driver
// corrupted, and reports DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2). Requests
// in flight still complete.
func (w *worker) breakQueue(err error) {
	w.broken = true
	w.report("queue broken, the device needs a reset: %w", err)
	if w.d.needsReset.CompareAndSwap(false, true) {
		_ = w.irq.ConfigChanged()
	}
}

// quiesce is the worker's part of Reset: pop nothing more, drop the request
// not yet submitted, and drop the results of requests still in flight.
// Reset calls it for every queue before waiting for any (see drain), so
// that no queue pushes results while another is waited for.
func (w *worker) quiesce() {
	w.mu.Lock()
	w.stopping = true
	w.timer.Stop()
	w.mu.Unlock()
}

// drain waits until the Backend has completed every request the worker
// gave it, because until then it may write guest memory (a closed Backend
// completes them with ErrClosed), then stops the goroutine.
func (w *worker) drain() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.q == nil {
		return
	}
	for w.inflight > 0 {
		w.idle.Wait()
	}
	close(w.stop)
}
