package vswitch

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// batchSender is a VM NIC whose transmit queue the test drives batch by
// batch (no goroutine), as the transmit worker would.
type batchSender struct {
	*vm
	w *txWorker
}

func newBatchSender(t *testing.T, sw *Switch, nw *Network, o vmOpts) *batchSender {
	t.Helper()
	o.noStart = true
	m := newVM(t, sw, "a", nw, macA, o)
	s := newSender(sw)
	s.batch = true
	return &batchSender{vm: m, w: &txWorker{q: m.tx.q, call: m.tx.call, stop: make(chan struct{}), s: s}}
}

// post makes a frame to dst carrying seq available.
func (b *batchSender) post(dst string, seq uint16) {
	b.t.Helper()
	payload := make([]byte, 50)
	binary.BigEndian.PutUint16(payload, seq)
	buf := append(make([]byte, HeaderLen), ether(mac(dst), mac(macA), 0x88b5, payload)...)
	if !b.tx.post(buf, []int{HeaderLen, len(buf) - HeaderLen}, false) {
		b.t.Fatal("transmit ring full")
	}
}

func (b *batchSender) batch() (int, time.Duration) {
	b.t.Helper()
	n, wait, err := b.port.txBatch(b.w)
	if err != nil {
		b.t.Fatalf("txBatch: %v", err)
	}
	return n, wait
}

// seqs returns the sequence numbers of the frames m received since the
// last call, in order.
func seqs(m *vm) []uint16 {
	var s []uint16
	for _, f := range m.frames() {
		s = append(s, binary.BigEndian.Uint16(f.frame[ethHeaderLen:]))
	}
	return s
}

func equalSeqs(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBatchGroupsByReceiver interleaves frames to two receivers in one
// batch: each gets its own in order, one interrupt, and counters that add
// up, and every transmit chain comes back.
func TestBatchGroupsByReceiver(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	c := newVM(t, sw, "c", lan, macC, vmOpts{})
	var wantB, wantC []uint16
	for i := uint16(0); i < 20; i++ {
		if i%3 == 0 {
			a.post(macC, i)
			wantC = append(wantC, i)
		} else {
			a.post(macB, i)
			wantB = append(wantB, i)
		}
	}
	if n, _ := a.batch(); n != 20 {
		t.Fatalf("txBatch consumed %d chains, want 20", n)
	}
	if got := seqs(b); !equalSeqs(got, wantB) {
		t.Errorf("b received %v, want %v", got, wantB)
	}
	if got := seqs(c); !equalSeqs(got, wantC) {
		t.Errorf("c received %v, want %v", got, wantC)
	}
	for _, m := range []*vm{b, c} {
		var cnt [8]byte
		if n, err := readCall(m.rx.call, cnt[:]); err != nil || n != 8 || binary.LittleEndian.Uint64(cnt[:]) != 1 {
			t.Errorf("%s: call eventfd = %x, %v; want one interrupt for the batch", m.port.Name(), cnt, err)
		}
	}
	if got := a.tx.reap(); len(got) != 20 {
		t.Errorf("%d transmit chains returned, want 20", len(got))
	}
	ca, cb, cc := a.port.Counters(), b.port.Counters(), c.port.Counters()
	if ca.TxPackets != 20 || ca.TxBytes != 20*64 {
		t.Errorf("a sent %d frames / %d bytes, want 20 / %d", ca.TxPackets, ca.TxBytes, 20*64)
	}
	if cb.RxPackets != uint64(len(wantB)) || cc.RxPackets != uint64(len(wantC)) || cb.RxBytes != 64*uint64(len(wantB)) {
		t.Errorf("b, c received %d (%d bytes), %d frames; want %d, %d", cb.RxPackets, cb.RxBytes, cc.RxPackets, len(wantB), len(wantC))
	}
}

// TestBatchFloodOverflow floods more deliveries than a batch defers at
// once (64 broadcasts to three receivers): every receiver still gets every
// frame, in order.
func TestBatchFloodOverflow(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{})
	var rcv []*vm
	for i, m := range []string{macB, macC, "52:54:00:00:00:0d"} {
		rcv = append(rcv, newVM(t, sw, string(rune('b'+i)), lan, m, vmOpts{rxBufs: 64}))
	}
	var want []uint16
	for i := uint16(0); i < txBatch; i++ {
		a.post("ff:ff:ff:ff:ff:ff", i)
		want = append(want, i)
	}
	if 3*txBatch <= maxPending {
		t.Fatalf("the test no longer overflows the pending deliveries (%d)", maxPending)
	}
	if n, _ := a.batch(); n != txBatch {
		t.Fatalf("txBatch consumed %d chains, want %d", n, txBatch)
	}
	for _, m := range rcv {
		if got := seqs(m); !equalSeqs(got, want) {
			t.Errorf("%s received %v, want 0..%d in order", m.port.Name(), got, txBatch-1)
		}
	}
}

// TestBatchRateLimitHold stops a batch on the transmit rate limit: the
// held chain is neither forwarded nor returned, and goes first in the
// next batch once tokens are back.
func TestBatchRateLimitHold(t *testing.T) {
	clk := &fakeClock{}
	sw := newSwitch(t, Options{Clock: clk.now})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newBatchSender(t, sw, lan, vmOpts{limits: Limits{Tx: Rate{PacketsPerSecond: 1000, BurstPackets: 3}}})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	for i := uint16(0); i < 5; i++ {
		a.post(macB, i)
	}
	n, wait := a.batch()
	if n != 3 || wait <= 0 || !a.w.pending {
		t.Fatalf("first batch: %d chains, wait %v, pending %v; want 3, > 0, true", n, wait, a.w.pending)
	}
	if got := seqs(b); !equalSeqs(got, []uint16{0, 1, 2}) {
		t.Errorf("b received %v, want [0 1 2]", got)
	}
	if got := a.tx.reap(); len(got) != 3 {
		t.Errorf("%d transmit chains returned, want 3 (the held one stays)", len(got))
	}
	clk.advance(10 * time.Millisecond)
	if n, _ := a.batch(); n != 2 || a.w.pending {
		t.Fatalf("second batch: %d chains, pending %v; want 2, false", n, a.w.pending)
	}
	if got := seqs(b); !equalSeqs(got, []uint16{3, 4}) {
		t.Errorf("b received %v, want [3 4]", got)
	}
	if got := a.tx.reap(); len(got) != 2 {
		t.Errorf("%d transmit chains returned, want 2", len(got))
	}
}

func readCall(fd int, b []byte) (int, error) { return unix.Read(fd, b) }
