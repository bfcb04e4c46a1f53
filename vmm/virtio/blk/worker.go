package blk

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// minThrottle is the shortest timer armed after the limiter refuses: when
// Wait says "now" but Consume lost a race with another queue, the worker
// sleeps briefly instead of spinning.
const minThrottle = 50 * time.Microsecond

// worker serves one queue: it pops requests, submits them to the Backend,
// and completes them when the dispatcher hands their completions over. Only
// its goroutine touches the queue and the slots while it runs.
type worker struct {
	d     *Device
	index int
	slots []slot
	free  []int32 // stack of free slot indices
	done  chan block.Completion
	kick  chan struct{}
	timer *time.Timer

	busy        atomic.Bool // waiting for a Backend slot (ErrBusy); the dispatcher wakes us
	backendGone atomic.Bool // the Backend's completion channel was closed

	// Per activation.
	q         *virtio.Queue
	irq       virtio.Interrupt
	stop      chan struct{}
	inflight  int   // slots the Backend holds
	pending   int32 // slot popped but refused by the limiter or the Backend, or -1
	throttled bool  // the limiter refused; the timer is armed
	broken    bool  // the queue's ring is corrupt: pop nothing more
	req       block.Request
}

func newWorker(d *Device, index int, size uint16) *worker {
	w := &worker{
		d:     d,
		index: index,
		slots: make([]slot, size),
		free:  make([]int32, 0, size),
		done:  make(chan block.Completion, size),
		kick:  d.kicks[index],
		timer: time.NewTimer(time.Hour),
	}
	w.timer.Stop()
	for i := range w.slots {
		// A chain has at most 2*size-1 buffers (a direct part ending
		// in an indirect table); header and status are not data.
		w.slots[i].iov = make([][]byte, 0, 2*int(size))
	}
	w.clear()
	return w
}

// clear returns the worker to its state after New; the goroutine must not
// be running.
func (w *worker) clear() {
	w.free = w.free[:0]
	for i := len(w.slots) - 1; i >= 0; i-- {
		s := &w.slots[i]
		clear(s.iov)
		s.iov, s.status, s.state = s.iov[:0], nil, slotFree
		w.free = append(w.free, int32(i))
	}
	for len(w.done) > 0 {
		<-w.done
	}
	w.timer.Stop()
	w.busy.Store(false)
	w.backendGone.Store(false)
	w.q, w.irq, w.stop = nil, nil, nil
	w.inflight, w.pending, w.throttled, w.broken = 0, -1, false, false
}

func (w *worker) start(q *virtio.Queue, irq virtio.Interrupt) {
	w.q, w.irq = q, irq
	w.stop = make(chan struct{})
}

// run is the worker's goroutine: it sleeps until a kick, a completion, the
// limiter's timer or Reset, and serves the queue after each.
func (w *worker) run() {
	defer w.d.wg.Done()
	w.serve()
	w.notify()
	for {
		select {
		case <-w.kick:
		case c := <-w.done:
			w.complete(c)
			w.drain()
		case <-w.timer.C:
			w.throttled = false
		case <-w.stop:
			w.quiesce()
			return
		}
		if w.backendGone.Load() {
			w.failAll()
		}
		w.serve()
		w.notify()
	}
}

// drain completes every completion already waiting, so one interrupt
// covers the batch.
func (w *worker) drain() {
	for {
		select {
		case c := <-w.done:
			w.complete(c)
		default:
			return
		}
	}
}

// serve submits what the driver made available, then starts it all at once
// (requests are submitted deferred: one io_uring_enter per kick, not per
// request).
func (w *worker) serve() {
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
				w.breakQueue()
				return
			}
			if !ok {
				break
			}
			i := w.free[len(w.free)-1]
			w.free = w.free[:len(w.free)-1]
			s := &w.slots[i]
			s.state = slotPending
			if err := w.q.Walk(head, &s.chain); err != nil {
				// The chain cannot be trusted to say where its
				// status byte is: give it back with length 0.
				s.status = nil
				w.finish(i, statusIOErr)
				continue
			}
			status, submit := w.d.prepare(s)
			if !submit {
				w.finish(i, status)
				continue
			}
			if !w.submit(i) {
				w.pending = i
				return
			}
		}
		if !w.q.EnableNotifications() {
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
	w.req = block.Request{Op: s.op, Offset: s.offset, Length: s.length, Bufs: s.iov, Cookie: uint64(w.index)<<32 | uint64(i), Defer: true}
	err := w.d.backend.Submit(w.req)
	if errors.Is(err, block.ErrBusy) {
		// Ask the dispatcher for a wake-up at the next completion, then
		// try again: a slot freed in between would not wake us.
		w.busy.Store(true)
		err = w.d.backend.Submit(w.req)
		if errors.Is(err, block.ErrBusy) {
			return false
		}
		w.busy.Store(false)
	}
	w.req.Bufs = nil
	if err != nil {
		w.finish(i, statusIOErr)
		return true
	}
	s.state = slotInFlight
	w.inflight++
	return true
}

// complete finishes the request a Backend completion belongs to.
func (w *worker) complete(c block.Completion) {
	i := uint32(c.Cookie)
	if i >= uint32(len(w.slots)) || w.slots[i].state != slotInFlight {
		return // not a request of ours in flight: cannot happen
	}
	w.inflight--
	s := &w.slots[i]
	status := uint8(statusOK)
	switch {
	case c.Err == nil:
		s.written = s.dataLen
	case errors.Is(c.Err, block.ErrUnsupported):
		status = statusUnsupp
	default:
		status = statusIOErr
		// Part of a read may have landed; claim what the Backend says.
		s.written = uint32(min(max(c.N, 0), int64(s.dataLen)))
	}
	w.finish(int32(i), status)
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
	if w.q.NeedInterrupt() {
		// A failed notification cannot be retried meaningfully: the
		// driver's next kick or its timeout recovers.
		_ = w.irq.Used(w.index)
	}
}

// breakQueue stops popping from a queue whose available ring the driver
// corrupted, and reports DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2). Requests
// in flight still complete.
func (w *worker) breakQueue() {
	w.broken = true
	if w.d.needsReset.CompareAndSwap(false, true) {
		_ = w.irq.ConfigChanged()
	}
}

// failAll completes every request the Backend held with IOERR once its
// completion channel closed: it has finished with their buffers and will
// never report them.
func (w *worker) failAll() {
	for i := range w.slots {
		if w.slots[i].state == slotInFlight {
			w.inflight--
			w.finish(int32(i), statusIOErr)
		}
	}
}

// quiesce is the worker's part of Reset: pop nothing more, drop the request
// not yet submitted, and wait until the Backend has completed every request
// it holds, because until then it may write guest memory. Their results
// are dropped: the driver has reset the device and guest memory must not
// change any more.
func (w *worker) quiesce() {
	w.timer.Stop()
	for w.inflight > 0 && !w.backendGone.Load() {
		select {
		case c := <-w.done:
			i := uint32(c.Cookie)
			if i < uint32(len(w.slots)) && w.slots[i].state == slotInFlight {
				w.inflight--
				w.slots[i].state = slotFree
			}
		case <-w.kick: // the dispatcher kicks when the Backend is gone
		}
	}
}
