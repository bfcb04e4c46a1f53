package vswitch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/net/internal/peerfd"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Queue indexes of a virtio-net device with one queue pair.
const (
	RxQueue = 0 // receiveq1: the switch writes frames into the guest
	TxQueue = 1 // transmitq1: the guest sends frames
)

// txBatch is how many transmit chains a worker forwards before it
// interrupts receivers and returns the chains to the driver.
const txBatch = 64

// maxRxChains bounds the receive chains one frame may take with
// MRG_RXBUF: 64 Linux mergeable buffers (at least 1.5 KiB each) hold a
// 64 KiB GSO frame.
const maxRxChains = 64

// MaxQueueSize bounds a virtio port's rings. QEMU offers at most 1024
// (VIRTQUEUE_MAX_SIZE) and hyperroot's VMM 256; the spec's 32768 would let
// one peer make every walk of a looping chain, and every indirect table,
// 32 times longer.
const MaxQueueSize = 1024

// maxChainBufs bounds the buffers of one descriptor chain the switch
// accepts. The switch keeps the buffer list of each chain in flight
// (txBatch transmit and maxRxChains receive chains per port), each as
// long as the longest chain seen, so without a bound one port could pin
// megabytes. Linux never builds chains longer than MAX_SKB_FRAGS+2
// descriptors (19; 47 with CONFIG_MAX_SKB_FRAGS=45).
const maxChainBufs = 64

// maxV6Claims is how many IPv6 addresses besides its EUI-64 link-local
// a locked port may use at once, and v6ClaimAge how long one it stopped
// using stays reserved for it.
const (
	maxV6Claims = 8
	v6ClaimAge  = 30 * time.Minute
)

// maxBadChains bounds the malformed receive chains one delivery skips.
const maxBadChains = 8

// VirtioConfig describes a VM NIC's port.
type VirtioConfig struct {
	Network *Network
	// MAC is the NIC's address: the only source address the VM may use,
	// and a static entry of the network's forwarding database.
	MAC net.HardwareAddr
	// LockIP restricts the IPv4 sources (IPv4 packets, ARP senders) to
	// the addresses given with AllowIP.
	LockIP bool
	Limits Limits
}

// VirtioPort is a VM NIC's port. It implements net/vhostuser's Device:
// the vhost-user backend hands it the vrings the frontend set up.
type VirtioPort struct {
	*Port
	lockIP bool
	acked  atomic.Uint64

	ipMu sync.Mutex                // serialises AllowIP/DisallowIP
	ips  atomic.Pointer[[][4]byte] // copy on write, read by the data path

	ll6 [16]byte             // the EUI-64 link-local address of the NIC's MAC
	v6  [maxV6Claims]v6Claim // other IPv6 addresses a locked port uses (claims6.go)

	mu sync.Mutex // serialises Start and Stop
	tx *txWorker
	ts *sender // the transmit worker's, kept across restarts

	rx rxState
}

// rxState is the receive queue, written by every port forwarding to this
// one, one at a time under mu.
type rxState struct {
	mu   sync.Mutex
	q    *virtio.Queue // nil when stopped
	kick int           // the driver's notifications; written to wake the waker
	call int
	mrg  bool
	// held are receive chains popped from the ring but not used yet:
	// a frame too large for what the guest offered is dropped and its
	// chains wait for the next frame. A ring buffer of n chains at start.
	held     [maxRxChains]virtio.Chain
	start, n int
	// bl holds frames waiting for the driver's buffers (backlog.go),
	// waker the goroutine that delivers them when buffers come; w and
	// wbufs spread a frame over several chains (writerFor), for whoever
	// holds mu.
	bl    backlog
	waker *rxWaker
	w     writer
	wbufs [][]byte
}

// AddVirtioPort creates a VM NIC's port. It forwards nothing until the
// vhost-user backend starts its queues.
func (s *Switch) AddVirtioPort(name string, cfg VirtioConfig) (*VirtioPort, error) {
	if len(cfg.MAC) != 6 || isGroup(macKey(cfg.MAC)) || macKey(cfg.MAC) == 0 {
		return nil, fmt.Errorf("vswitch: port %s: MAC %v is not a unicast Ethernet address", name, cfg.MAC)
	}
	p, err := newPort(s, name, []*Network{cfg.Network}, false, cfg.Limits)
	if err != nil {
		return nil, err
	}
	v := &VirtioPort{Port: p, lockIP: cfg.LockIP}
	p.v = v
	p.mac = macKey(cfg.MAC)
	v.ll6 = eui64(p.mac)
	v.ips.Store(&[][4]byte{})
	v.acked.Store(virtio.FeatureVersion1)
	if err := s.attach(p); err != nil {
		return nil, err
	}
	cfg.Network.fdb.addStatic(p.mac, p)
	cfg.Network.v6.registerLL(v)
	return v, nil
}

// MaxQueueSize is the largest ring the port serves: the vhost-user backend
// refuses a larger SET_VRING_NUM (net/vhostuser's QueueSizeLimiter).
func (v *VirtioPort) MaxQueueSize() uint16 { return MaxQueueSize }

// CutOff implements net/vhostuser's CutOffCounter: the backend ended a
// frontend's connection for its fault (a pipe or file where an eventfd
// belongs, memory that can shrink, framing it cannot trust). The port
// serves the next connection as usual (the VMM reconnects); the count is
// in Counters.CutOffs and the switch's port report.
func (v *VirtioPort) CutOff(error) { v.c.cutOffs.Add(1) }

var _ vhostuser.CutOffCounter = (*VirtioPort)(nil)

// Features are the virtio feature bits the port offers.
func (v *VirtioPort) Features() uint64 { return Offered }

// SetFeatures takes the features the driver accepted. It must come before
// Start: the receive path decides on MRG_RXBUF when queue 0 starts.
func (v *VirtioPort) SetFeatures(features uint64) error {
	features &^= featureProtocol
	if err := virtio.CheckFeatures(Offered, features); err != nil {
		return fmt.Errorf("vswitch: port %s: %w", v.name, err)
	}
	// Dependencies of virtio 1.2 §5.1.3.1.
	switch {
	case features&(FeatureHostTSO4|FeatureHostTSO6) != 0 && features&FeatureCsum == 0:
		return fmt.Errorf("vswitch: port %s: %w: HOST_TSO without CSUM", v.name, virtio.ErrFeatures)
	case features&(FeatureGuestTSO4|FeatureGuestTSO6) != 0 && features&FeatureGuestCsum == 0:
		return fmt.Errorf("vswitch: port %s: %w: GUEST_TSO without GUEST_CSUM", v.name, virtio.ErrFeatures)
	}
	v.acked.Store(features)
	return nil
}

// Start begins serving vring q (RxQueue or TxQueue) on vq, already
// activated; kick and call are eventfds that stay owned by the caller.
func (v *VirtioPort) Start(q int, vq *virtio.Queue, kick, call int) error {
	if vq == nil || !vq.Active() {
		return fmt.Errorf("vswitch: port %s: start queue %d: queue not active", v.name, q)
	}
	if vq.Size > MaxQueueSize {
		return fmt.Errorf("vswitch: port %s: start queue %d: %d descriptors, at most %d", v.name, q, vq.Size, MaxQueueSize)
	}
	// The vhost-user backend checked and set these already; a Device
	// can be driven by other code (tests, a future transport), and one
	// bad descriptor here hangs or spins a goroutine of the switch.
	if err := peerfd.Eventfd(call); err != nil {
		return fmt.Errorf("vswitch: port %s: start queue %d: call: %w", v.name, q, err)
	}
	if err := peerfd.Eventfd(kick); err != nil {
		return fmt.Errorf("vswitch: port %s: start queue %d: kick: %w", v.name, q, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.removed.Load() {
		return fmt.Errorf("vswitch: port %s: start queue %d: port removed", v.name, q)
	}
	switch q {
	case RxQueue:
		rx := &v.rx
		rx.mu.Lock()
		defer rx.mu.Unlock()
		if rx.q != nil {
			return fmt.Errorf("vswitch: port %s: receive queue already started", v.name)
		}
		w, err := newRxWaker(kick)
		if err != nil {
			return fmt.Errorf("vswitch: port %s: start receive queue: %w", v.name, err)
		}
		rx.q, rx.kick, rx.call, rx.start, rx.n, rx.waker = vq, kick, call, 0, 0, w
		rx.mrg = v.acked.Load()&FeatureMrgRxbuf != 0
		vq.DisableNotifications() // until a frame waits for buffers
		go v.serveRX(w)
		return nil
	case TxQueue:
		if v.tx != nil {
			return fmt.Errorf("vswitch: port %s: transmit queue already started", v.name)
		}
		w, err := newTxWorker(vq, kick, call)
		if err != nil {
			return fmt.Errorf("vswitch: port %s: start transmit queue: %w", v.name, err)
		}
		if v.ts == nil {
			v.ts = newSender(v.sw)
			v.ts.batch = true
		}
		w.s = v.ts
		v.tx = w
		go v.serveTX(w)
		return nil
	}
	return fmt.Errorf("vswitch: port %s: no queue %d (one queue pair)", v.name, q)
}

// Stop stops serving q; when it returns nothing touches that queue or its
// eventfds. Receive chains taken but not filled are returned empty.
func (v *VirtioPort) Stop(q int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch q {
	case RxQueue:
		rx := &v.rx
		// The waker takes rx.mu: stopped before it is held here. Only
		// Start and Stop, serialised by v.mu, set rx.waker.
		if rx.waker != nil {
			rx.waker.halt()
			rx.waker = nil
		}
		rx.mu.Lock()
		if rx.q != nil {
			for i := 0; i < rx.n; i++ {
				rx.q.Push(rx.at(i).Head, 0)
			}
			v.dropBacklogLocked()
			rx.q, rx.n, rx.kick, rx.call = nil, 0, -1, -1
		}
		rx.mu.Unlock()
	case TxQueue:
		if w := v.tx; w != nil {
			v.tx = nil
			w.halt()
		}
	}
}

func (rx *rxState) at(i int) *virtio.Chain { return &rx.held[(rx.start+i)&(maxRxChains-1)] }

// take makes one more receive chain available in held; it returns false
// when the driver has none (or broke its ring).
func (rx *rxState) take(v *VirtioPort) bool {
	// A guest refilling its ring with malformed chains as fast as they
	// come back would make every sender walk up to a ring's worth of
	// them per frame; after maxBadChains the frame is not delivered.
	for bad := 0; bad < maxBadChains; {
		head, ok, err := rx.q.Pop()
		if err != nil || !ok {
			return false
		}
		c := rx.at(rx.n)
		if err := rx.q.Walk(head, c); err != nil || c.WriteLen() < HeaderLen || c.ReadLen() != 0 || tooLong(c) {
			// Not a receive buffer: give it back unused.
			rx.q.Push(head, 0)
			// The sender interrupts the driver at flush if it wants it.
			v.drop(DropMalformed)
			bad++
			continue
		}
		rx.n++
		return true
	}
	return false
}

// rxOutcome is what became of a frame given to a receive queue.
type rxOutcome int

const (
	rxDropped   rxOutcome = iota // counted as a drop
	rxDelivered                  // in the driver's buffers
	rxQueued                     // in the backlog, delivered when the driver adds buffers
)

// receiveLocked writes e into the guest's receive buffers: one chain, or
// with MRG_RXBUF as many as it takes, their count in num_buffers. When
// the driver has no buffers, or older frames wait for them, e joins the
// backlog. The caller holds rx.mu and publishes the used chains
// (PublishUsed) before releasing it.
func (v *VirtioPort) receiveLocked(e *emit) rxOutcome {
	rx := &v.rx
	if rx.q == nil {
		v.drop(DropNoBuffer)
		return rxDropped
	}
	if rx.bl.count > 0 {
		v.drainLocked() // older frames first
	}
	if rx.bl.count == 0 {
		k, b, res := rx.claim(v, e.total)
		switch res {
		case claimTooBig:
			v.drop(DropNoBuffer)
			return rxDropped
		case claimed:
			if e.hdr.numBuffers != uint16(k) {
				// Stored only when it changes: deliverOne set 1, and
				// a narrow store just before encode's wide load of
				// the same word would stall it (no store forwarding).
				e.hdr.numBuffers = uint16(k)
			}
			if b != nil {
				e.writeFlat(b)
			} else {
				e.writeTo(rx.writerFor(k))
				rx.releaseWriter()
			}
			rx.used(k, e.total)
			return rxDelivered
		}
	}
	if !v.queueLocked(e) {
		return rxDropped
	}
	return rxQueued
}

// flushRX delivers s's pending frames for this port (touched[t]) under
// one hold of the receive mutex, publishes the used ring once and
// signals the driver if it wants it. The interrupt is sent under the
// mutex so that Stop never returns while a call eventfd is being written.
func (v *VirtioPort) flushRX(s *sender, t int) {
	rx := &v.rx
	rt := &s.touched[t]
	v.busy.enter()
	rx.mu.Lock()
	for i := 0; rt.queued > 0 && i < s.np; i++ {
		e := &s.pend[i]
		if e.to != t {
			continue
		}
		rt.queued--
		s.received(t, e, v.receiveLocked(e))
	}
	if rx.q != nil {
		rx.q.PublishUsed()
		if rx.q.NeedInterrupt() {
			signal(rx.call)
		}
	}
	rx.mu.Unlock()
	v.busy.exit()
}

// tooLong reports whether c has more buffers than the switch keeps for a
// chain, and if so releases its grown buffer list (Head stays, for the
// caller to give the chain back).
func tooLong(c *virtio.Chain) bool {
	if len(c.Readable())+len(c.Writable()) <= maxChainBufs {
		return false
	}
	*c = virtio.Chain{Head: c.Head}
	return true
}

// signal adds 1 to an eventfd, never blocking: Start made sure it is a
// non-blocking eventfd, so a counter the peer saturated fails with EAGAIN
// (it is signalled already) instead of stalling every port delivering to
// this one. Other errors mean the frontend closed its end, which the
// vhost-user backend notices itself.
func signal(fd int) { _ = eventfd.Signal(fd) }

// txWorker is the goroutine serving a transmit queue.
type txWorker struct {
	q    *virtio.Queue
	kick *kickWaiter
	call int
	stop chan struct{}
	done chan struct{}
	// chains of the batch being forwarded: their buffers are read until
	// the sender's flush, and only then returned to the driver.
	chains  [txBatch]virtio.Chain
	pending bool // chains[0] was popped, its frame is waiting for rate-limit tokens
	s       *sender
	timer   *time.Timer
}

func newTxWorker(q *virtio.Queue, kick, call int) (*txWorker, error) {
	// The worker alone pops the ring, so it asks the ring whether
	// buffers came rather than draining the eventfd.
	k, err := newKickWaiter(kick, q.Pending)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &txWorker{
		q: q, kick: k, call: call,
		stop: make(chan struct{}), done: make(chan struct{}), timer: t,
	}, nil
}

// halt stops the goroutine and waits for it.
func (w *txWorker) halt() {
	close(w.stop)
	w.kick.interrupt()
	<-w.done
	w.kick.close()
}

func (w *txWorker) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// serveTX is the transmit worker: drain the ring, sleep on the kick
// eventfd, repeat.
func (v *VirtioPort) serveTX(w *txWorker) {
	defer close(w.done)
	defer func() {
		if w.pending { // the frame is dropped; give the driver its buffer
			w.q.Push(w.chains[0].Head, 0)
			w.pending = false
			v.drop(DropRateLimit)
			if w.q.NeedInterrupt() {
				signal(w.call)
			}
		}
	}()
	// Last deferred, first run: a panic while forwarding this port's
	// frames (a bug, here or in a port implementation it delivered to)
	// must not end the switch process, and every port's networking with
	// it. The port's transmit stops as for a broken ring, counted as
	// malformed, until its frontend resets the queue. A lock the panic
	// left held stalls the port it guards, which the liveness check
	// (Watch) then reports.
	defer func() {
		if r := recover(); r != nil {
			v.faulted(r)
		}
	}()
	for {
		if !v.drainTX(w) {
			return
		}
		if err := w.kick.wait(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || w.stopped() {
				return
			}
			// Nothing else can fail reading an eventfd we own; should
			// it, polling with the ring's own state still works.
			time.Sleep(time.Millisecond)
		}
	}
}

// faulted reports a panic one of the port's goroutines recovered from:
// counted as malformed, and passed with its stack to Options.Fault.
func (v *VirtioPort) faulted(r any) {
	v.drop(DropMalformed)
	if v.sw.fault != nil {
		v.sw.fault(v.name, r, debug.Stack())
	}
}

// drainTX forwards until the ring is empty with notifications enabled (so
// a buffer the driver adds afterwards kicks us). It returns false when the
// worker must exit: stopped, or the driver broke the ring.
func (v *VirtioPort) drainTX(w *txWorker) bool {
	for {
		w.q.DisableNotifications()
		for {
			n, wait, err := v.txBatch(w)
			if err != nil {
				v.drop(DropMalformed)
				return false // a broken ring stays broken until the frontend resets it
			}
			if wait > 0 {
				w.timer.Reset(wait)
				select {
				case <-w.stop:
					w.timer.Stop()
					return false
				case <-w.timer.C:
				}
				continue
			}
			if w.stopped() {
				return false
			}
			if n < txBatch {
				break
			}
		}
		if !w.q.EnableNotifications() {
			return true
		}
	}
}

// txBatch forwards up to txBatch frames. It returns how many chains it
// consumed, how long to wait when the rate limit holds a frame back, and
// an error if the available ring is corrupt.
//
// The chains are returned to the driver only after the sender's flush has
// copied their frames out, with one publication of the used index.
func (v *VirtioPort) txBatch(w *txWorker) (n int, wait time.Duration, err error) {
	s := w.s
	now := v.sw.now()
	for n < txBatch {
		c := &w.chains[n]
		if !w.pending {
			head, ok, perr := w.q.Pop()
			if perr != nil {
				err = perr
				break
			}
			if !ok {
				break
			}
			if werr := w.q.Walk(head, c); werr != nil || tooLong(c) {
				v.drop(DropMalformed)
				n++ // returned unread below
				continue
			}
		}
		if !s.ingress(v.Port, c.Readable(), int(c.ReadLen()), now, true) {
			w.pending = true
			size := uint64(c.ReadLen()) - min(uint64(c.ReadLen()), HeaderLen)
			wait = 100 * time.Microsecond
			if l := v.txLimit.Load(); l != nil { // nil: the limit was lifted just now
				wait = max(l.Wait(1+v.segDebt.Load(), size*8), wait)
			}
			break
		}
		w.pending = false
		n++
	}
	s.flush()
	for i := range w.chains[:n] {
		w.q.PushDeferred(w.chains[i].Head, 0)
	}
	if w.pending && n > 0 {
		// The held chain goes first in the next batch.
		w.chains[0], w.chains[n] = w.chains[n], w.chains[0]
	}
	if n > 0 {
		w.q.PublishUsed()
		if w.q.NeedInterrupt() {
			signal(w.call)
		}
	}
	return n, wait, err
}
