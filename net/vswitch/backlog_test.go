package vswitch

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// TestBacklogFIFO drives the backlog's ring of variable-sized frames
// against a plain slice: frames come out in order and intact, however the
// sizes make it wrap, and put refuses exactly when neither the frames nor
// the bytes left can take one more.
func TestBacklogFIFO(t *testing.T) {
	var b backlog
	var model [][]byte
	rng := rand.New(rand.NewPCG(1, 2))
	seq := byte(0)
	check := func() {
		t.Helper()
		if b.count != len(model) {
			t.Fatalf("count %d, model %d", b.count, len(model))
		}
		for i, want := range model {
			e := b.ent[(b.first+i)%len(b.ent)]
			if got := b.mem[e.off : e.off+e.n]; !bytes.Equal(got, want) {
				t.Fatalf("frame %d of %d damaged", i, len(model))
			}
		}
	}
	for step := 0; step < 20000; step++ {
		if rng.IntN(3) > 0 || len(model) == 0 {
			n := 12 + rng.IntN(2000)
			if rng.IntN(20) == 0 {
				n = 12 + rng.IntN(65550)
			}
			buf := b.put(n)
			if buf == nil {
				if len(model) < backlogFrames && fits(&b, n) {
					t.Fatalf("step %d: put(%d) refused with %d frames waiting and room for it", step, n, len(model))
				}
				continue
			}
			if len(buf) != n {
				t.Fatalf("put(%d) gave %d bytes", n, len(buf))
			}
			seq++
			for i := range buf {
				buf[i] = seq + byte(i)
			}
			model = append(model, append([]byte(nil), buf...))
		} else {
			if !bytes.Equal(b.front(), model[0]) {
				t.Fatalf("step %d: front is not the oldest frame", step)
			}
			b.pop()
			model = model[1:]
		}
		check()
	}
	if b.put(backlogBytes+1) != nil {
		t.Error("a frame larger than the backlog was accepted")
	}
}

// fits reports whether n contiguous bytes are free in b's buffer, by
// brute force over the live frames.
func fits(b *backlog, n int) bool {
	used := make([]bool, backlogBytes)
	for i := 0; i < b.count; i++ {
		e := b.ent[(b.first+i)%len(b.ent)]
		for j := e.off; j < e.off+e.n; j++ {
			used[j] = true
		}
	}
	// Only the places a FIFO may use: right after the newest frame, or
	// at the start when the free space runs from there to the oldest.
	if b.count == 0 {
		return n <= backlogBytes
	}
	last := b.ent[(b.first+b.count-1)%len(b.ent)]
	free := func(from, to int) bool {
		if to > backlogBytes {
			return false
		}
		for j := from; j < to; j++ {
			if used[j] {
				return false
			}
		}
		return true
	}
	end := int(last.off + last.n)
	return free(end, end+n) || (int(last.off) >= int(b.ent[b.first].off) && free(0, n))
}

// refill posts n receive buffers of size bytes and notifies the device as
// Linux's driver does: with EVENT_IDX only when the available index moved
// past the avail_event the device published, without it unless the device
// set VIRTQ_USED_F_NO_NOTIFY; so a device that did not ask hears nothing.
func (r *ring) refill(n, size int) (kicked bool) {
	old := r.AvailIdx()
	for i := 0; i < n; i++ {
		if !r.post(nil, []int{size}, true) {
			break
		}
	}
	if r.wantsKick(old) {
		r.notify()
		return true
	}
	return false
}

// wantsKick reports whether the device asked to be notified of the
// buffers made available since the available index was old.
func (r *ring) wantsKick(old uint16) bool {
	cur := r.AvailIdx()
	if r.eventIdx {
		ev := r.AvailEvent()
		return uint16(cur-ev-1) < uint16(cur-old) // vring_need_event
	}
	return cur != old && r.UsedFlags()&1 == 0 // VIRTQ_USED_F_NO_NOTIFY
}

// pauseWaker stops v's receive waker, so that a test sees what senders
// do alone; resumeWaker starts a new one.
func pauseWaker(v *VirtioPort) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rx.waker.halt()
	v.rx.waker = nil
}

func resumeWaker(t *testing.T, v *VirtioPort) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	w, err := newRxWaker(v.rx.kick)
	if err != nil {
		t.Fatal(err)
	}
	v.rx.waker = w
	go v.serveRX(w)
}

// TestBacklogWaitsForBuffers: frames that find the receiver without
// buffers wait, in order, and reach it when its driver adds buffers and
// notifies (the switch asked it to), with an interrupt. Nothing is
// dropped, and the sender's transmit chains all come back at once: it
// does not wait for the receiver.
func TestBacklogWaitsForBuffers(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: 2})
	for i := uint16(0); i < 5; i++ {
		a.post(macB, i)
	}
	a.batch()
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{0, 1}) {
		t.Fatalf("b received %v first, want [0 1]", got)
	}
	if got := a.tx.reap(); len(got) != 5 {
		t.Errorf("%d transmit chains returned, want 5", len(got))
	}
	b.rx.interrupted()
	b.rx.SetUsedEvent(b.rx.NextUsed()) // as Linux re-enabling callbacks after its poll
	c := b.port.Counters()
	if c.RxPackets != 2 || c.RxQueued != 3 || c.Drops[DropNoBuffer] != 0 {
		t.Fatalf("b: received %d, queued %d, no_buffer %d; want 2, 3, 0", c.RxPackets, c.RxQueued, c.Drops[DropNoBuffer])
	}
	if !b.rx.refill(8, 2048) {
		t.Fatal("the driver was not asked to notify its next buffers")
	}
	waitFor(t, "an interrupt for the waiting frames", b.rx.interrupted)
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{2, 3, 4}) {
		t.Fatalf("then %v, want [2 3 4]", got)
	}
	if c := b.port.Counters(); c.RxPackets != 5 {
		t.Fatalf("received %d, want 5", c.RxPackets)
	}
	// Drained: the switch no longer asks for notifications, so a refill
	// costs the guest no exit.
	if b.rx.refill(8, 2048) {
		t.Error("the driver was asked to notify with nothing waiting")
	}
	// And frames flow directly again.
	a.post(macB, 5)
	a.batch()
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{5}) {
		t.Fatalf("after the backlog: %v, want [5]", got)
	}
}

// seqsOf reads the sequence numbers of batchSender frames out of receive
// buffers (header, Ethernet header, then the number).
func seqsOf(bufs [][]byte) []uint16 {
	var s []uint16
	for _, b := range bufs {
		if len(b) >= HeaderLen+ethHeaderLen+2 {
			s = append(s, binary.BigEndian.Uint16(b[HeaderLen+ethHeaderLen:]))
		}
	}
	return s
}

// TestBacklogBounded: a receiver that never adds buffers holds at most
// backlogFrames frames of the switch's memory; the rest are dropped and
// counted. When buffers come, the waiting frames arrive in order.
func TestBacklogBounded(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1})
	const extra = 10
	sent := uint16(0)
	for sent < backlogFrames+extra {
		for i := 0; i < 64 && sent < backlogFrames+extra; i++ {
			a.post(macB, sent)
			sent++
		}
		a.batch()
		a.tx.reap()
	}
	c := b.port.Counters()
	if c.RxQueued != backlogFrames || c.Drops[DropNoBuffer] != extra || c.RxPackets != 0 {
		t.Fatalf("queued %d, no_buffer %d, received %d; want %d, %d, 0", c.RxQueued, c.Drops[DropNoBuffer], c.RxPackets, backlogFrames, extra)
	}
	var got []uint16
	for len(got) < backlogFrames {
		b.rx.refill(128, 2048)
		waitFor(t, "backlog frames", func() bool { return b.rx.UsedIdx() != b.rx.NextUsed() })
		got = append(got, seqsOf(b.rx.reap())...)
	}
	for i, s := range got {
		if s != uint16(i) {
			t.Fatalf("frame %d carries %d: order lost", i, s)
		}
	}
}

// TestBacklogStop: frames waiting when the receive queue stops are
// dropped and counted, and Stop returns (the waker is gone).
func TestBacklogStop(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1})
	for i := uint16(0); i < 3; i++ {
		a.post(macB, i)
	}
	a.batch()
	b.port.Stop(RxQueue)
	if c := b.port.Counters(); c.RxQueued != 3 || c.Drops[DropNoBuffer] != 3 || c.RxPackets != 0 {
		t.Fatalf("queued %d, no_buffer %d, received %d; want 3, 3, 0", c.RxQueued, c.Drops[DropNoBuffer], c.RxPackets)
	}
	if b.port.rx.bl.count != 0 || b.port.rx.waker != nil {
		t.Fatal("backlog or waker left after Stop")
	}
	// A frame to a stopped queue is dropped at once.
	a.post(macB, 3)
	a.batch()
	if c := b.port.Counters(); c.Drops[DropNoBuffer] != 4 || c.RxQueued != 3 {
		t.Fatalf("after Stop: queued %d, no_buffer %d; want 3, 4", c.RxQueued, c.Drops[DropNoBuffer])
	}
}

func BenchmarkBacklog(b *testing.B) {
	var bl backlog
	bl.put(64) // allocate
	bl.pop()
	b.ReportAllocs()
	for b.Loop() {
		buf := bl.put(1514)
		buf[0] = 1
		bl.pop()
	}
	if n := testing.AllocsPerRun(100, func() { bl.put(9000); bl.pop() }); n != 0 {
		b.Fatalf("%.0f allocations per frame", n)
	}
}

// TestBacklogOrderWithoutWaker: buffers the driver added without a
// notification (or before the waker ran) are used for the older frames
// first when a new frame comes: no frame overtakes the backlog.
func TestBacklogOrderWithoutWaker(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1})
	pauseWaker(b.port)
	for i := uint16(0); i < 3; i++ {
		a.post(macB, i)
	}
	a.batch()
	for i := 0; i < 8; i++ { // no notification
		b.rx.post(nil, []int{2048}, true)
	}
	a.post(macB, 3)
	a.batch()
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{0, 1, 2, 3}) {
		t.Fatalf("received %v, want [0 1 2 3]", got)
	}
	if c := b.port.Counters(); c.RxPackets != 4 || c.RxQueued != 3 || b.port.rx.bl.count != 0 {
		t.Fatalf("received %d, queued %d, waiting %d; want 4, 3, 0", c.RxPackets, c.RxQueued, b.port.rx.bl.count)
	}
	resumeWaker(t, b.port)
}

// TestBacklogWithoutEventIdx: a driver without EVENT_IDX is asked to
// notify (VIRTQ_USED_F_NO_NOTIFY cleared) only while frames wait, and
// told to stop once they are delivered: each notification is an exit.
func TestBacklogWithoutEventIdx(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	feat := Offered &^ virtio.FeatureRingEventIdx
	a := newBatchSender(t, sw, lan, vmOpts{features: feat})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1, features: feat})
	if b.rx.UsedFlags()&1 == 0 {
		t.Fatal("notifications asked for with nothing waiting")
	}
	a.post(macB, 7)
	a.batch()
	if b.rx.UsedFlags()&1 != 0 {
		t.Fatal("a frame waits and the driver is not asked to notify")
	}
	if !b.rx.refill(4, 2048) {
		t.Fatal("the refill did not notify")
	}
	waitFor(t, "an interrupt for the waiting frame", b.rx.interrupted)
	if got := seqsOf(b.rx.reap()); !equalSeqs(got, []uint16{7}) {
		t.Fatalf("received %v, want [7]", got)
	}
	if b.rx.UsedFlags()&1 == 0 {
		t.Error("notifications still asked for after the backlog drained")
	}
}

// TestBacklogBrokenRing: a driver that breaks its receive ring (an
// available index more than a ring ahead) while frames wait gets them
// dropped, and the switch neither waits for it nor wakes itself for it
// (such a ring looks forever as if it had buffers).
func TestBacklogBrokenRing(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: -1})
	a.post(macB, 0)
	a.batch()
	// The waker's path: the driver breaks the ring and notifies.
	b.rx.SetAvailIdx(b.rx.AvailIdx() + 300) // a 256-entry ring
	b.rx.notify()
	waitFor(t, "the waiting frame dropped", func() bool { return b.port.Counters().Drops[DropNoBuffer] == 1 })
	// A sender's path: a new frame is dropped at once, not queued.
	pauseWaker(b.port)
	a.post(macB, 1)
	a.batch()
	c := b.port.Counters()
	if c.RxQueued != 1 || c.Drops[DropNoBuffer] != 2 || b.port.rx.bl.count != 0 {
		t.Fatalf("queued %d, no_buffer %d, waiting %d; want 1, 2, 0", c.RxQueued, c.Drops[DropNoBuffer], b.port.rx.bl.count)
	}
	// And nothing woke the waker since it was paused.
	var cnt [8]byte
	if n, err := unix.Read(b.rx.kick, cnt[:]); err == nil {
		t.Fatalf("the switch woke its waker for a broken ring (%d bytes read)", n)
	}
	resumeWaker(t, b.port)
}
