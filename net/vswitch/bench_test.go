package vswitch

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// pipe is two virtio ports, a → b, with a's transmit queue driven by the
// test directly (no goroutine, no eventfd wake-up): it measures the switch's
// per-frame work, the driver's side being a few stores per chain.
type pipe struct {
	tb       testing.TB
	a        *VirtioPort
	w        *txWorker
	tx, rx   *ring
	batch    int
	rxPer    int // receive chains per frame
	rxBuf    int
	frameLen int
	txLens   []int // the transmit chain's buffers
	// fixed: the driver is fixedDriver's kind, not ring.post's.
	fixed  bool
	fx, fr fixedDriver
}

// newPipe makes a pipe forwarding batches of frames of frameLen bytes.
// split says how a transmit chain is laid out: false, the header and
// the frame in one buffer, as Linux's virtio-net sends a frame with
// headroom for the header (any skb whose data is linear, so every small
// frame) and as DPDK's driver sends; true, the header and the frame in
// buffers of their own, as a driver without VIRTIO_F_ANY_LAYOUT must.
func newPipe(tb testing.TB, frameLen, batch, rxBuf int, hdr netHdr, split bool) *pipe {
	tb.Helper()
	sw := New(Options{})
	tb.Cleanup(func() { sw.Close() })
	lan, _ := sw.AddNetwork("lan", 0)
	a, err := sw.AddVirtioPort("a", VirtioConfig{Network: lan, MAC: mac(macA)})
	if err != nil {
		tb.Fatal(err)
	}
	b, err := sw.AddVirtioPort("b", VirtioConfig{Network: lan, MAC: mac(macB)})
	if err != nil {
		tb.Fatal(err)
	}
	a.SetFeatures(Offered)
	b.SetFeatures(Offered)
	ga, gb := newGuest(tb, 64<<20), newGuest(tb, 64<<20)
	p := &pipe{tb: tb, a: a, batch: batch, rxBuf: rxBuf, frameLen: frameLen, txLens: []int{HeaderLen + frameLen}}
	if split {
		p.txLens = []int{HeaderLen, frameLen}
	}
	p.rxPer = (HeaderLen + frameLen + rxBuf - 1) / rxBuf
	p.tx = newRing(tb, ga, uint16(perChain*batch), uint64(HeaderLen+frameLen), Offered)
	rxSlots := batch * p.rxPer
	size := uint16(perChain)
	for int(size)/perChain < rxSlots {
		size *= 2
	}
	p.rx = newRing(tb, gb, size, uint64(rxBuf), Offered)
	p.tx.burst, p.rx.burst = true, true
	if err := b.Start(RxQueue, p.rx.q, p.rx.kick, p.rx.call); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Stop(RxQueue) })
	p.w = &txWorker{q: p.tx.q, call: p.tx.call, stop: make(chan struct{}), s: newSender(sw)}
	p.w.s.batch = true

	// Every transmit slot holds the same frame, written once.
	frame := make([]byte, HeaderLen+frameLen)
	hdr.encode(frame)
	copy(frame[HeaderLen:], mac(macB))
	copy(frame[HeaderLen+6:], mac(macA))
	binary.BigEndian.PutUint16(frame[HeaderLen+12:], 0x88b5)
	for j := 0; j < batch; j++ {
		copy(ga.bytes(tb, p.tx.data+uint64(j)*p.tx.slot, uint64(len(frame))), frame)
	}
	return p
}

// newFixedPipe is newPipe (one-buffer frames) with fixedDriver's kind of
// driver on both rings.
func newFixedPipe(tb testing.TB, frameLen, batch, rxBuf int, hdr netHdr) *pipe {
	p := newPipe(tb, frameLen, batch, rxBuf, hdr, false)
	if p.rxPer != 1 {
		tb.Fatalf("a fixed driver posts one buffer per frame; %d-byte frames need %d of %d bytes", frameLen, p.rxPer, rxBuf)
	}
	p.fixed = true
	p.fx = newFixedDriver(p.tx, p.txLens[0], false, batch)
	p.fr = newFixedDriver(p.rx, rxBuf, true, batch)
	return p
}

// fixedDriver drives a ring as DPDK's virtio "simple" receive and transmit
// paths do, and as netmap's pkt-gen drives its rings: descriptor i always
// describes the same buffer and available entry i always names descriptor
// i, both written once; chains complete in order, so a burst is one store
// of avail->idx, and taking chains back reads each used element (the
// length the device wrote; the id, checked against its in-order place).
// It measures the switch with the least a real driver does per frame.
type fixedDriver struct {
	r     *ring
	avail uint16 // the next avail->idx
	used  uint16 // the next used entry to read
	bytes uint64 // lengths the device wrote, summed (what a receiver counts)
}

// newFixedDriver writes every descriptor and available entry of r once:
// descriptor i is r's data slot i mod slots (at most slots chains are ever
// in flight, so no two share a buffer), len bytes, device-writable or not.
func newFixedDriver(r *ring, length int, writable bool, slots int) fixedDriver {
	var fl uint16
	if writable {
		fl = virtiotest.DescWrite
	}
	for i := uint16(0); i < r.Size; i++ {
		r.SetDesc(i, r.data+uint64(int(i)%slots)*r.slot, uint32(length), fl, 0)
	}
	for i := uint16(0); i < r.Size; i++ {
		r.SetAvailEntry(i, i)
	}
	return fixedDriver{r: r}
}

// post makes n more chains available with one store of avail->idx.
func (f *fixedDriver) post(n int) {
	f.avail += uint16(n)
	f.r.SetAvailIdx(f.avail)
}

// reap takes back the chains the device used, in order; it fails the
// benchmark on a chain out of order (a device this driver cannot drive).
func (f *fixedDriver) reap() {
	idx := f.r.UsedIdx()
	mask := f.r.Size - 1
	for ; f.used != idx; f.used++ {
		id, n := f.r.UsedElem(f.used)
		if id != uint32(f.used&mask) {
			f.r.t.Fatalf("used entry %d is chain %d: out of order", f.used, id)
		}
		f.bytes += uint64(n)
	}
}

// round makes batch frames and enough receive chains available, forwards
// them, and takes the used chains back. It returns the time the switch
// took (txBatch alone), so that benchmarks can report the switch's cost
// apart from the test driver's.
func (p *pipe) round() time.Duration {
	p.post()
	start := time.Now()
	if n, _, err := p.a.txBatch(p.w); err != nil || n != p.batch {
		p.tb.Fatalf("txBatch = %d, %v", n, err)
	}
	d := time.Since(start)
	p.reap()
	return d
}

// reap is the driver taking the used chains of both rings back.
func (p *pipe) reap() {
	if p.fixed {
		p.fx.reap()
		p.fr.reap()
		return
	}
	p.tx.recycle()
	p.rx.recycle()
}

// post is the driver making a batch of frames and receive chains
// available, each ring's burst with one store of its index.
func (p *pipe) post() {
	if p.fixed {
		p.fr.post(p.batch)
		p.fx.post(p.batch)
		return
	}
	for i := 0; i < p.batch*p.rxPer; i++ {
		p.rx.post(nil, []int{p.rxBuf}, true)
	}
	p.rx.PublishAvail()
	for i := 0; i < p.batch; i++ {
		p.tx.post(nil, p.txLens, false)
	}
	p.tx.PublishAvail()
}

// consume plays a device that does nothing but return every available
// chain (head copied to the used ring, one used->idx store per batch): the
// least a device can do, for BenchmarkDriver.
func (r *ring) consume() {
	used := r.UsedIdx()
	for ; used != r.AvailIdx(); used++ {
		r.SetUsedElem(used, uint32(r.AvailEntry(used)), 0)
	}
	r.SetUsedIdx(used)
}

// recycle frees used chains without reading them.
func (r *ring) recycle() { r.collect() }

func TestDataPathAllocs(t *testing.T) {
	for _, tc := range []struct {
		name         string
		frame, rxBuf int
		hdr          netHdr
	}{
		{"64B", 64, 2048, netHdr{}},
		{"1500B", 1500, 2048, netHdr{}},
		{"64KiB-TSO", 65536, 16384, netHdr{gsoType: gsoTCPv4, gsoSize: 1448}},
	} {
		for _, split := range []bool{false, true} {
			p := newPipe(t, tc.frame, 16, tc.rxBuf, tc.hdr, split)
			p.round() // sizes the chains' storage
			p.round()
			if n := testing.AllocsPerRun(100, func() { p.round() }); n != 0 {
				t.Errorf("%s (split %v): %v allocations per batch, want 0", tc.name, split, n)
			}
			if got := p.a.Counters().TxPackets; got == 0 {
				t.Errorf("%s (split %v): nothing forwarded", tc.name, split)
			}
		}
	}
}

// forwardCases are the frame shapes BenchmarkForward and BenchmarkDriver
// measure: frames as Linux sends them (the header in front of the frame,
// one buffer), small frames split from their header (newPipe), and small
// frames from the driver of DPDK's simple paths (newFixedPipe).
type forwardCase struct {
	name         string
	frame, rxBuf int
	batch        int
	hdr          netHdr
	split        bool
	fixed        bool // newFixedPipe's driver
}

var forwardCases = []forwardCase{
	{"64B", 64, 2048, 64, netHdr{}, false, false},
	{"64B-split", 64, 2048, 64, netHdr{}, true, false},
	// The driver of DPDK's simple paths (fixedDriver).
	{"64B-fixed", 64, 2048, 64, netHdr{}, false, true},
	{"1500B", 1500, 2048, 64, netHdr{}, false, false},
	// A TSO frame both sides negotiated: passed through, into
	// 16 KiB mergeable buffers (5 per frame).
	{"64KiB-TSO", 65536, 16384, 16, netHdr{flags: hdrNeedsCsum, csumStart: 34, csumOffset: 16, gsoType: gsoTCPv4, gsoSize: 1448}, false, false},
}

// pipe makes the case's pipe.
func (tc forwardCase) pipe(tb testing.TB) *pipe {
	if tc.fixed {
		return newFixedPipe(tb, tc.frame, tc.batch, tc.rxBuf, tc.hdr)
	}
	return newPipe(tb, tc.frame, tc.batch, tc.rxBuf, tc.hdr, tc.split)
}

// BenchmarkForward is VM-to-VM forwarding on one core: frames per second
// (Mpps) and payload bandwidth (Gbit/s), with the test driver's ring work
// included, and the same for the switch alone (switch-*: the time spent in
// the transmit worker's batch, measured around it).
func BenchmarkForward(b *testing.B) {
	for _, tc := range forwardCases {
		b.Run(tc.name, func(b *testing.B) {
			p := tc.pipe(b)
			p.round()
			b.ReportAllocs()
			b.SetBytes(int64(tc.frame * tc.batch))
			start := time.Now()
			n := 0
			var sw time.Duration
			for b.Loop() {
				sw += p.round()
				n++
			}
			sec := time.Since(start).Seconds()
			frames := float64(n * tc.batch)
			b.ReportMetric(frames/sec/1e6, "Mpps")
			b.ReportMetric(frames*float64(tc.frame)*8/sec/1e9, "Gbit/s")
			b.ReportMetric(sec*1e9/frames, "ns/frame")
			b.ReportMetric(frames/sw.Seconds()/1e6, "switch-Mpps")
			b.ReportMetric(frames*float64(tc.frame)*8/sw.Seconds()/1e9, "switch-Gbit/s")
			b.ReportMetric(float64(sw.Nanoseconds())/frames, "switch-ns/frame")
		})
	}
}

// BenchmarkDriver is BenchmarkForward's driver side alone: the same posts
// and recycling, with a device that only hands every chain back. The
// switch's own cost per frame is BenchmarkForward's ns/frame minus this.
func BenchmarkDriver(b *testing.B) {
	for _, tc := range forwardCases {
		b.Run(tc.name, func(b *testing.B) {
			p := tc.pipe(b)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				p.post()
				p.tx.consume()
				p.rx.consume()
				p.reap()
				n++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*tc.batch), "ns/frame")
		})
	}
}

// TestFixedDriver: the fixed driver's frames reach the receiver whole (the
// lengths it counts, the bytes in its buffers) round after round, past the
// rings' wrap, and without allocating.
func TestFixedDriver(t *testing.T) {
	const frame, batch, rounds = 64, 16, 40 // 640 chains: rings of 64 wrap
	p := newFixedPipe(t, frame, batch, 2048, netHdr{})
	for range rounds {
		p.round()
	}
	if want := uint64(rounds * batch * (HeaderLen + frame)); p.fr.bytes != want {
		t.Fatalf("receiver counted %d bytes, want %d", p.fr.bytes, want)
	}
	if p.fx.bytes != 0 {
		t.Errorf("transmit chains came back with %d bytes written", p.fx.bytes)
	}
	got := p.rx.g.bytes(t, p.rx.data, HeaderLen+frame)
	want := p.tx.g.bytes(t, p.tx.data, HeaderLen+frame)
	if string(got[HeaderLen:]) != string(want[HeaderLen:]) {
		t.Errorf("received frame % x, want % x", got[HeaderLen:], want[HeaderLen:])
	}
	if n := testing.AllocsPerRun(100, func() { p.round() }); n != 0 {
		t.Errorf("%v allocations per batch, want 0", n)
	}
}
