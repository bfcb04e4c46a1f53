package vswitch

import (
	"encoding/binary"
	"errors"
	"os"
	"time"
)

// A guest's receive ring runs dry whenever a burst arrives faster than its
// driver refills it: a TCP sender's window of 64 KiB GSO frames takes 16
// or more of Linux's mergeable buffers each, and a 256-entry ring holds a
// handful. A switch that drops the frame then costs the stream a
// retransmission and halves its congestion window; under load that is
// most of the difference to the kernel's stack, whose tap device queues
// up to 1000 frames and whose vhost-net thread waits for the driver's
// next buffers. So a virtio port has a receive backlog: frames that found
// no buffer wait in switch memory, in order, until the driver adds
// buffers and notifies the receive queue, which a goroutine per port
// waits for. The backlog is bounded in frames and bytes; what does not
// fit is dropped (no_buffer), as before. Its memory is allocated the
// first time the port needs it and kept, so the data path stays free of
// allocations.

// Backlog bounds: backlogFrames frames and backlogBytes bytes per port
// (a virtio-net header and an Ethernet frame each), about a TCP window of
// full-size GSO frames, or 512 small ones. Sized like a tap device's queue
// in frames, smaller in bytes.
const (
	backlogFrames = 512
	backlogBytes  = 1 << 20
)

// backlog is a FIFO of frames in one buffer, each stored contiguously (a
// frame never wraps around the end). Its owner serialises access.
type backlog struct {
	mem          []byte
	ent          [backlogFrames]struct{ off, n int32 }
	first, count int
}

// put reserves n bytes at the tail and returns them, or nil when the
// backlog is full.
func (b *backlog) put(n int) []byte {
	if b.count == len(b.ent) || n > backlogBytes {
		return nil
	}
	if b.mem == nil {
		b.mem = make([]byte, backlogBytes)
	}
	at := 0
	if b.count > 0 {
		head := int(b.ent[b.first].off)
		last := b.ent[(b.first+b.count-1)%len(b.ent)]
		end := int(last.off + last.n)
		switch {
		case int(last.off) >= head && end+n <= len(b.mem): // after the last
			at = end
		case int(last.off) >= head && n <= head: // wrap to the start
			at = 0
		case int(last.off) < head && end+n <= head: // wrapped: up to the head
			at = end
		default:
			return nil
		}
	}
	b.ent[(b.first+b.count)%len(b.ent)] = struct{ off, n int32 }{int32(at), int32(n)}
	b.count++
	return b.mem[at : at+n]
}

// front is the oldest frame; the backlog must not be empty.
func (b *backlog) front() []byte {
	e := b.ent[b.first]
	return b.mem[e.off : e.off+e.n]
}

func (b *backlog) pop() {
	b.first = (b.first + 1) % len(b.ent)
	b.count--
	if b.count == 0 {
		b.first = 0
	}
}

// claimResult says whether held receive chains can take a frame.
type claimResult int

const (
	claimed     claimResult = iota // the chains are the first k held: rx.at(0) to rx.at(k-1)
	claimEmpty                     // the driver has no more buffers now
	claimTooBig                    // the frame exceeds what the driver's buffers can take
)

// claim makes held chains ready for a frame of total bytes (virtio-net
// header included): one chain that holds it in one buffer (Linux's
// mergeable buffers, any small frame), else as many chains as it takes
// with MRG_RXBUF, else one large enough chain. flat is that one buffer
// when there is one, which the caller writes the frame into directly; nil
// when the frame spans several (writerFor). The caller holds rx.mu.
func (rx *rxState) claim(v *VirtioPort, total int) (k int, flat []byte, res claimResult) {
	if rx.n == 0 && !rx.take(v) {
		return 0, nil, claimEmpty
	}
	if w := rx.at(0).Writable(); len(w) == 1 && len(w[0]) >= total {
		return 1, w[0], claimed
	}
	limit := 1
	if rx.mrg {
		limit = maxRxChains
	}
	have := 0
	for have < total {
		if k == limit {
			return 0, nil, claimTooBig
		}
		if k == rx.n && !rx.take(v) {
			return 0, nil, claimEmpty
		}
		have += int(rx.at(k).WriteLen())
		k++
	}
	// One buffer that holds the frame was returned above: these chains
	// hold it in several.
	return k, nil, claimed
}

// writerFor returns rx.w spread over the writable buffers of the first k
// held chains; releaseWriter drops its views of guest memory after the
// copy. The caller holds rx.mu.
func (rx *rxState) writerFor(k int) *writer {
	rx.wbufs = rx.wbufs[:0]
	for i := 0; i < k; i++ {
		rx.wbufs = append(rx.wbufs, rx.at(i).Writable()...)
	}
	rx.w.reset(rx.wbufs)
	return &rx.w
}

func (rx *rxState) releaseWriter() { clear(rx.wbufs) }

// used returns the first k held chains to the driver, the frame of total
// bytes spread over them in order.
func (rx *rxState) used(k, total int) {
	for i := 0; i < k; i++ {
		c := rx.at(i)
		n := min(total, int(c.WriteLen()))
		rx.q.PushDeferred(c.Head, uint32(n))
		total -= n
	}
	rx.start = (rx.start + k) & (maxRxChains - 1)
	rx.n -= k
}

// queueLocked puts e in the backlog and, when it is the first frame
// waiting, asks the driver to notify the next buffers. It reports false
// (and counts a no_buffer drop) when the backlog is full. The caller
// holds rx.mu.
func (v *VirtioPort) queueLocked(e *emit) bool {
	rx := &v.rx
	if rx.q.Err() != nil {
		// A broken ring stays broken until the frontend resets the
		// queue: nothing waits for it (armLocked).
		v.dropBacklogLocked()
		v.drop(DropNoBuffer)
		return false
	}
	buf := rx.bl.put(e.total)
	if buf == nil {
		v.drop(DropNoBuffer)
		return false
	}
	e.writeFlat(buf)
	v.c.rxQueued.Add(1)
	if rx.bl.count == 1 {
		v.armLocked()
	}
	return true
}

// drainLocked moves waiting frames, oldest first, into the driver's
// buffers while it has some, publishes them and counts them received. The
// caller holds rx.mu and decides the interrupt (NeedInterrupt).
func (v *VirtioPort) drainLocked() {
	rx := &v.rx
	var packets, bytes uint64
	for rx.bl.count > 0 {
		f := rx.bl.front()
		k, b, res := rx.claim(v, len(f))
		if res == claimEmpty {
			break
		}
		if res == claimTooBig {
			v.drop(DropNoBuffer)
			rx.bl.pop()
			continue
		}
		binary.LittleEndian.PutUint16(f[10:], uint16(k)) // num_buffers
		if b != nil {
			copy(b, f)
		} else {
			rx.writerFor(k).put(f)
			rx.releaseWriter()
		}
		rx.used(k, len(f))
		packets++
		bytes += uint64(len(f) - HeaderLen)
		rx.bl.pop()
	}
	if rx.bl.count == 0 {
		// A hint (nothing with EVENT_IDX): buffers are only of use to
		// the switch when a frame waits, and without EVENT_IDX each
		// notification is an exit of the guest's.
		rx.q.DisableNotifications()
	}
	if packets > 0 {
		// Published before they are counted: whoever reads the
		// counters finds the frames in the ring.
		rx.q.PublishUsed()
		v.c.rxPackets.Add(packets)
		v.c.rxBytes.Add(bytes)
	}
}

// pumpLocked drains the backlog and arms the notification for what is
// left. The caller holds rx.mu and decides the interrupt.
func (v *VirtioPort) pumpLocked() {
	v.drainLocked()
	if v.rx.bl.count > 0 {
		v.armLocked()
	}
}

// armLocked asks the driver to notify the receive queue's next buffers.
// Buffers it added before the request was visible are not notified: the
// waker is woken for them through the kick eventfd itself, rather than
// drained here, so that a guest posting malformed chains costs a sender
// no more than maxBadChains walks per frame; its own waker walks the rest.
// A ring the driver broke (Pop's sticky error) would look forever like
// one with buffers: its waiting frames are dropped instead.
func (v *VirtioPort) armLocked() {
	if v.rx.q.Err() != nil {
		v.dropBacklogLocked()
		return
	}
	if v.rx.q.EnableNotifications() {
		signal(v.rx.kick)
	}
}

// dropBacklogLocked discards the waiting frames (the queue stopped),
// counting them as no_buffer drops.
func (v *VirtioPort) dropBacklogLocked() {
	rx := &v.rx
	for rx.bl.count > 0 {
		v.drop(DropNoBuffer)
		rx.bl.pop()
	}
}

// rxWaker is the goroutine that waits for the receive queue's
// notifications and moves the backlog into the buffers they announce.
type rxWaker struct {
	kick *kickWaiter
	stop chan struct{}
	done chan struct{}
}

func newRxWaker(kick int) (*rxWaker, error) {
	// The ring belongs to whoever holds rx.mu: the waker reads (drains)
	// its eventfd instead of asking the ring.
	k, err := newKickWaiter(kick, nil)
	if err != nil {
		return nil, err
	}
	return &rxWaker{kick: k, stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// halt stops the goroutine and waits for it.
func (w *rxWaker) halt() {
	close(w.stop)
	w.kick.interrupt()
	<-w.done
	w.kick.close()
}

// serveRX waits for the driver's receive notifications and pumps the
// backlog after each.
func (v *VirtioPort) serveRX(w *rxWaker) {
	defer close(w.done)
	defer func() { // as serveTX's: a bug must not end the switch
		if r := recover(); r != nil {
			v.faulted(r)
		}
	}()
	for {
		if err := w.kick.wait(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			select {
			case <-w.stop:
				return
			default:
			}
			time.Sleep(time.Millisecond) // as serveTX: cannot happen
		}
		v.wake()
	}
}

// wake pumps the backlog after a notification and interrupts the driver
// if it wants it. The lock is released by a deferred call, so that a
// panic (recovered by serveRX) leaves the port usable by senders, which
// drain the backlog themselves as frames come.
func (v *VirtioPort) wake() {
	rx := &v.rx
	v.busy.enter()
	rx.mu.Lock()
	defer func() {
		rx.mu.Unlock()
		v.busy.exit()
	}()
	if rx.q != nil && rx.bl.count > 0 {
		v.pumpLocked()
		if rx.q.NeedInterrupt() {
			signal(rx.call)
		}
	}
}
