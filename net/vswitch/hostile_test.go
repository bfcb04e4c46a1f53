package vswitch

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// TestHostileDescriptors: a peer's kick and call descriptors must be
// eventfds. A pipe as call would block every sender delivering to the
// port once full; /dev/zero as kick is always readable (a spinning
// worker).
func TestHostileDescriptors(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	b := newVM(t, sw, "b", lan, macB, vmOpts{noStart: true})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	zero, err := unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(zero)
	if err := b.port.Start(RxQueue, b.rx.q, b.rx.kick, p[1]); err == nil {
		b.port.Stop(RxQueue)
		t.Error("receive queue started with a pipe as call")
	}
	if err := b.port.Start(TxQueue, b.tx.q, zero, b.tx.call); err == nil {
		b.port.Stop(TxQueue)
		t.Error("transmit queue started with /dev/zero as kick")
	}
	if err := b.port.Start(TxQueue, b.tx.q, b.tx.kick, p[1]); err == nil {
		b.port.Stop(TxQueue)
		t.Error("transmit queue started with a pipe as call")
	}
}

// TestSaturatedCallEventfd: a peer that fills its call eventfd's counter
// (and passes it blocking) must not make the switch block writing to it:
// every port delivering to it would hang behind its receive lock.
func TestSaturatedCallEventfd(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{noStart: true})
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking, as a hostile peer leaves it
	if err != nil {
		t.Fatal(err)
	}
	full := [8]byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if _, err := unix.Write(efd, full[:]); err != nil {
		t.Fatal(err)
	}
	unix.Close(b.rx.call)
	b.rx.call = efd
	// Runs before the ports' cleanups: unblocks a writer stuck on the
	// counter, so a failing test ends instead of hanging.
	t.Cleanup(func() {
		var buf [8]byte
		unix.SetNonblock(efd, true)
		unix.Read(efd, buf[:])
	})
	b.start()
	for i := range 3 {
		a.send(ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)))
		deadline := time.Now().Add(3 * time.Second)
		for b.port.Counters().RxPackets != uint64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("frame %d not delivered: the sender is stuck signalling a saturated eventfd", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	a.flushTX()
}

// postLong makes one transmit chain of n descriptors holding frame
// (header included), all in one chain slot's data area.
func (r *ring) postLong(frame []byte, n int) {
	r.t.Helper()
	if len(r.free) == 0 {
		r.t.Fatal("ring full")
	}
	j := r.free[len(r.free)-1]
	base := r.data + uint64(j)*r.slot
	copy(r.g.bytes(r.t, base, uint64(len(frame))), frame)
	bufs := make([]virtiotest.Buf, n)
	off := 0
	for i := range bufs {
		l := len(frame) / n
		if i == n-1 {
			l = len(frame) - off
		}
		bufs[i] = virtiotest.Buf{Addr: base + uint64(off), Len: uint32(l)}
		off += l
	}
	head, ok := r.Post(bufs...)
	if !ok {
		r.t.Fatal("no free descriptors")
	}
	r.free = r.free[:len(r.free)-1]
	r.slotOf[head] = j
}

// TestLongChains: the switch keeps a walked chain's buffer list per
// chain in flight (64 transmit, 64 receive), so chains of hundreds of
// descriptors would let one port pin megabytes; no Linux driver builds a
// chain of more than MAX_SKB_FRAGS+2 descriptors, so longer chains are
// malformed.
func TestLongChains(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	frame := append(make([]byte, HeaderLen), ether(mac(macB), mac(macA), 0x88b5, make([]byte, 400))...)
	a.tx.postLong(frame, maxChainBufs)
	a.tx.notify()
	waitFor(t, "chain at the limit", func() bool { return b.port.Counters().RxPackets == 1 })
	a.tx.postLong(frame, maxChainBufs+1)
	a.tx.notify()
	a.flushTX()
	if got := a.port.Counters().Drops[DropMalformed]; got != 1 {
		t.Errorf("malformed drops = %d, want 1 (the over-long chain)", got)
	}
	if got := b.port.Counters().RxPackets; got != 1 {
		t.Errorf("b received %d frames, want 1", got)
	}
}

// TestQueueSizeBound: a ring larger than MaxQueueSize is refused.
func TestQueueSizeBound(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	b := newVM(t, sw, "b", lan, macB, vmOpts{noStart: true})
	if got := b.port.MaxQueueSize(); got != MaxQueueSize {
		t.Fatalf("MaxQueueSize = %d", got)
	}
	g := newGuest(t, 8<<20)
	big := newRing(t, g, 2*MaxQueueSize, 16, Offered)
	if err := b.port.Start(TxQueue, big.q, big.kick, big.call); err == nil {
		b.port.Stop(TxQueue)
		t.Errorf("ring of %d started", big.q.Size)
	}
}

// TestSegmentsCharged: a GSO frame is one packet to a receiver that takes
// it whole, but software segmentation turns it into many for one that
// does not; those are charged to both ports' packet limits where they
// are made. (One 64 KiB frame per token would otherwise give a guest
// limited to N packets/s ~1000 N.)
func TestSegmentsCharged(t *testing.T) {
	payload := make([]byte, 20*1000) // 20 segments of 1000
	frame, l4 := tcpFrame(false, mac(macC), mac(macA), payload, tcpPSH)
	h := netHdr{flags: hdrNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1000, hdrLen: uint16(l4 + 20), csumStart: uint16(l4), csumOffset: 16}
	noTSO := Offered &^ (FeatureGuestTSO4 | FeatureGuestTSO6)
	small := ether(mac(macC), mac(macA), 0x88b5, make([]byte, 46))

	t.Run("sender", func(t *testing.T) {
		clk := &fakeClock{}
		sw := newSwitch(t, Options{Clock: clk.now})
		lan := mustNetwork(t, sw, "lan", 0)
		a := newVM(t, sw, "a", lan, macA, vmOpts{limits: Limits{Tx: Rate{PacketsPerSecond: 100, BurstPackets: 10}}})
		c := newVM(t, sw, "c", lan, macC, vmOpts{rxBufs: 64, features: noTSO})
		a.sendHdr(h, frame, nil)
		waitFor(t, "segments", func() bool { return c.port.Counters().RxPackets == 20 })
		// 20 packets went out for 1 token: the next frame must wait
		// until the 19 others are paid for.
		a.send(small)
		time.Sleep(20 * time.Millisecond)
		if n := c.port.Counters().RxPackets; n != 20 {
			t.Fatalf("a frame passed right after 20 segments were made from one token (rx %d)", n)
		}
		clk.advance(time.Second)
		waitFor(t, "after the wait", func() bool { return c.port.Counters().RxPackets == 21 })
	})
	t.Run("receiver", func(t *testing.T) {
		clk := &fakeClock{}
		sw := newSwitch(t, Options{Clock: clk.now})
		lan := mustNetwork(t, sw, "lan", 0)
		a := newVM(t, sw, "a", lan, macA, vmOpts{})
		c := newVM(t, sw, "c", lan, macC, vmOpts{rxBufs: 64, features: noTSO,
			limits: Limits{Rx: Rate{PacketsPerSecond: 100, BurstPackets: 5}}})
		a.sendHdr(h, frame, nil)
		a.flushTX()
		waitFor(t, "processed", func() bool {
			cc := c.port.Counters()
			return cc.RxPackets+cc.Drops[DropRateLimit] >= 5
		})
		time.Sleep(10 * time.Millisecond)
		if cc := c.port.Counters(); cc.RxPackets != 5 || cc.Drops[DropRateLimit] != 15 {
			t.Fatalf("receiver limited to a burst of 5 got %d segments, %d dropped; want 5 and 15", cc.RxPackets, cc.Drops[DropRateLimit])
		}
	})
}

// TestHostileFrontendCutOff: over a real vhost-user connection, a VMM
// passing a pipe where the call eventfd belongs is cut off and counted.
// A frontend that only hangs up is not counted.
func TestHostileFrontendCutOff(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	p, err := sw.AddVirtioPort("v", VirtioConfig{Network: lan, MAC: mac(macA)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "v.sock")
	l, err := vhostuser.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return // closed
			}
			served <- vhostuser.Serve(c, p)
		}
	}()
	waitServed := func(what string) error {
		select {
		case err := <-served:
			return err
		case <-time.After(5 * time.Second):
			t.Fatalf("the backend kept serving a frontend that %s", what)
			return nil
		}
	}
	f, err := vhostuser.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.SetProtocolFeatures(vhostuser.ProtocolReplyAck); err != nil {
		t.Fatal(err)
	}
	var pp [2]int
	if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pp[0])
	defer unix.Close(pp[1])
	if err := f.SetVringCall(RxQueue, pp[1]); err == nil {
		t.Fatal("SET_VRING_CALL with a pipe acked")
	}
	if err := waitServed("passed a pipe"); !errors.Is(err, vhostuser.ErrPeer) {
		t.Fatalf("Serve = %v, want the frontend cut off", err)
	}
	// Counted once, as a cut-off: no frame was dropped.
	if c := p.Counters(); c.CutOffs != 1 || c.Drops[DropMalformed] != 0 {
		t.Fatalf("cut-offs = %d, malformed = %d; want 1 and 0", c.CutOffs, c.Drops[DropMalformed])
	}
	// The port serves the next frontend, which hangs up: not counted.
	g, err := vhostuser.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetFeatures(); err != nil {
		t.Fatal(err)
	}
	g.Close()
	if err := waitServed("hung up"); err != nil {
		t.Fatalf("Serve = %v after the frontend hung up", err)
	}
	if c := p.Counters(); c.CutOffs != 1 {
		t.Fatalf("cut-offs = %d after a frontend hung up, want still 1", c.CutOffs)
	}
}

// blockingFrames is a Frames whose writes block until released: a port
// that never takes what it is given.
type blockingFrames struct {
	*fakeFrames
	release chan struct{}
}

func (b *blockingFrames) WriteBatch(frames [][]byte) (int, error) {
	<-b.release
	return len(frames), nil
}

// TestStalled: a port whose delivery never completes is reported by the
// second call of Stalled (the first takes a sample); busy ports that make
// progress are not.
func TestStalled(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	bf := &blockingFrames{fakeFrames: newFakeFrames(), release: make(chan struct{})}
	if _, err := sw.AddFramePort("stuck", bf, FrameConfig{Networks: []*Network{lan}}); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			close(bf.release)
			released = true
		}
	}
	defer release()
	if got := sw.Stalled(); len(got) != 0 {
		t.Fatalf("Stalled = %v on an idle switch", got)
	}
	// Flooded: the stuck port's write blocks the sender, and with it b
	// (deferred to the end of the sender's batch): one port stalls all.
	a.send(ether(bcast(), mac(macA), 0x88b5, make([]byte, 46)))
	time.Sleep(10 * time.Millisecond)
	sw.Stalled()
	time.Sleep(10 * time.Millisecond)
	if got := sw.Stalled(); len(got) != 1 || got[0] != "stuck" {
		t.Fatalf("Stalled = %v, want [stuck]", got)
	}
	release()
	a.flushTX()
	waitFor(t, "b", func() bool { return b.port.Counters().RxPackets == 1 })
	sw.Stalled()
	if got := sw.Stalled(); len(got) != 0 {
		t.Fatalf("Stalled = %v after the port took its frame", got)
	}
}

// TestWatch: the watchdog calls stuck with the port whose delivery stayed
// in progress for rounds probes in a row, and only then; an idle switch
// and one that is merely busy are left alone.
func TestWatch(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	newVM(t, sw, "b", lan, macB, vmOpts{})
	bf := &blockingFrames{fakeFrames: newFakeFrames(), release: make(chan struct{})}
	if _, err := sw.AddFramePort("stuck", bf, FrameConfig{Networks: []*Network{lan}}); err != nil {
		t.Fatal(err)
	}
	defer close(bf.release)
	const interval, rounds = 20 * time.Millisecond, 3
	stop := make(chan struct{})
	defer close(stop)
	stuck := make(chan []string, 1)
	start := time.Now()
	var healthy atomic.Int64
	go sw.Watch(stop, interval, rounds, func(ports []string) { stuck <- ports }, func() { healthy.Add(1) })
	// Idle for several rounds: nothing, and a heartbeat per probe.
	select {
	case got := <-stuck:
		t.Fatalf("stuck(%v) on an idle switch", got)
	case <-time.After(rounds * 3 * interval):
	}
	if healthy.Load() == 0 {
		t.Error("no healthy call while the switch was idle")
	}
	a.send(ether(bcast(), mac(macA), 0x88b5, make([]byte, 46))) // the stuck port's write blocks
	sent := time.Now()
	select {
	case got := <-stuck:
		if len(got) != 1 || got[0] != "stuck" {
			t.Fatalf("stuck(%v), want [stuck]", got)
		}
		if d := time.Since(sent); d < (rounds-1)*interval {
			t.Errorf("stuck after %s, before %d probes could have seen it", d, rounds)
		}
		// Once a port is seen stalled, no more heartbeats: the
		// supervisor outside would otherwise think all well.
		beats := healthy.Load()
		time.Sleep(3 * interval)
		if n := healthy.Load(); n != beats {
			t.Errorf("%d healthy calls after stuck", n-beats)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no stuck call %s after the port stalled", time.Since(start))
	}
}

// TestWatchSwitchLock: a probe that cannot even read the port table (its
// lock held by a stuck goroutine) counts as a stall of the whole switch.
func TestWatchSwitchLock(t *testing.T) {
	sw := newSwitch(t, Options{})
	sw.mu.Lock()
	defer sw.mu.Unlock()
	stop := make(chan struct{})
	defer close(stop)
	stuck := make(chan []string, 1)
	var healthy atomic.Int64
	go sw.Watch(stop, 20*time.Millisecond, 2, func(ports []string) { stuck <- ports }, func() { healthy.Add(1) })
	select {
	case got := <-stuck:
		if len(got) != 1 || got[0] != "(switch)" {
			t.Fatalf("stuck(%v), want [(switch)]", got)
		}
		if n := healthy.Load(); n != 0 {
			t.Errorf("%d healthy calls while the switch's lock was held", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no stuck call while the switch's lock was held")
	}
}

// panickyFrames is a Frames whose writes panic: a bug in a port
// implementation, met on the goroutine of whichever port forwards to it.
type panickyFrames struct{ *fakeFrames }

func (panickyFrames) WriteBatch([][]byte) (int, error) { panic("frames broke") }

// TestForwardingPanicCutsOffSender: a panic while forwarding one port's
// frames stops that port's transmit queue, counted and reported through
// Options.Fault, instead of ending the switch process and every port's
// networking; the other ports go on forwarding.
func TestForwardingPanicCutsOffSender(t *testing.T) {
	faults := make(chan string, 4)
	sw := newSwitch(t, Options{Fault: func(port string, v any, stack []byte) {
		faults <- fmt.Sprintf("%s: %v (stack: %v)", port, v, len(stack) > 0)
	}})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	if _, err := sw.AddFramePort("bad", panickyFrames{newFakeFrames()}, FrameConfig{Networks: []*Network{lan}}); err != nil {
		t.Fatal(err)
	}
	// Flooded to the bad port too. The chain in flight is not given
	// back: like a broken ring, the queue waits for its driver's reset.
	a.send(ether(bcast(), mac(macA), 0x88b5, make([]byte, 46)))
	select {
	case got := <-faults:
		if got != "a: frames broke (stack: true)" {
			t.Fatalf("Fault(%s), want a: frames broke with a stack", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Fault call after a panic on a's transmit goroutine")
	}
	waitFor(t, "a's malformed count", func() bool { return a.port.Counters().Drops[DropMalformed] == 1 })
	// b still forwards: its unicast to a arrives.
	b.send(ether(mac(macA), mac(macB), 0x88b5, make([]byte, 46)))
	b.flushTX()
	waitFor(t, "b's frame at a", func() bool { return a.port.Counters().RxPackets >= 1 })
	// The panic released the bad port's write lock: b's broadcast reaches
	// WriteBatch (and panics there in turn) instead of blocking on it.
	b.send(ether(bcast(), mac(macB), 0x88b5, make([]byte, 46)))
	select {
	case got := <-faults:
		if got != "b: frames broke (stack: true)" {
			t.Fatalf("Fault(%s), want b: frames broke with a stack", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b's broadcast never reached the bad port: its write lock is still held")
	}
}

// TestBadReceiveChainsBounded: a guest whose receive ring holds nothing
// but malformed chains costs a sender at most maxBadChains walks per
// frame, not a ring's worth; the frames wait in the backlog, and the port's
// own waker gives the rest of the bad chains back, a bounded number per
// wake-up, until good buffers take the frames.
func TestBadReceiveChainsBounded(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1})
	pauseWaker(b.port) // so that what the sender walked can be counted
	for range 40 {
		if !b.rx.post(nil, []int{64, 64}, false) { // readable: not a receive buffer
			t.Fatal("ring full")
		}
	}
	for i := uint16(0); i < 2; i++ {
		a.post(macB, i)
		a.batch()
		c := b.port.Counters()
		if want := uint64(i+1) * maxBadChains; c.Drops[DropMalformed] != want || c.RxQueued != uint64(i+1) {
			t.Fatalf("frame %d to a ring of bad chains: malformed=%d queued=%d, want %d and %d", i, c.Drops[DropMalformed], c.RxQueued, want, i+1)
		}
	}
	resumeWaker(t, b.port) // it reads the wake-up the sender left in the kick eventfd
	waitFor(t, "the waker to give back every bad chain", func() bool { return b.port.Counters().Drops[DropMalformed] == 40 })
	b.rx.reap()
	b.rx.refill(2, 2048)
	waitFor(t, "the waiting frames", func() bool { return b.rx.UsedIdx()-b.rx.NextUsed() == 2 })
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{0, 1}) {
		t.Fatalf("received %v, want [0 1]", got)
	}
	if c := b.port.Counters(); c.Drops[DropNoBuffer] != 0 {
		t.Fatalf("no_buffer=%d, want 0", c.Drops[DropNoBuffer])
	}
}
