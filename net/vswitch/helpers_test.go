package vswitch

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// guest is a VM's RAM (a real memfd, as the VMM makes it) with a bump
// allocator for rings and buffers.
type guest struct {
	mem  *memory.Guest
	next uint64
}

func newGuest(t testing.TB, size uint64) *guest {
	t.Helper()
	m, err := memory.New(size, memory.Options{})
	if err != nil {
		t.Fatalf("guest RAM: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return &guest{mem: m, next: 0x10000}
}

func (g *guest) alloc(t testing.TB, n uint64) uint64 {
	t.Helper()
	at := (g.next + 4095) &^ 4095
	g.next = at + n
	if g.next > g.mem.Size() {
		t.Fatalf("test guest RAM exhausted")
	}
	return at
}

// bytes returns a view of guest RAM. No t.Helper: it is on the
// benchmarks' driver path, where runtime.Callers would dominate.
func (g *guest) bytes(t testing.TB, gpa, n uint64) []byte {
	b, err := g.mem.Slice(gpa, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// perChain is the most buffers a chain of a test ring has.
const perChain = 4

// ring plays the guest driver's side of one split virtqueue (the test
// kit's driver), with a data area of slot bytes for each chain it posts:
// size/perChain chains fit at once. Only one goroutine may use a ring.
type ring struct {
	*virtiotest.Driver
	t          testing.TB
	g          *guest
	slot       uint64
	data       uint64
	q          *virtio.Queue
	free       []uint16 // free chain slots
	slotOf     []uint16 // per head: the chain slot of its data
	bufs       [perChain]virtiotest.Buf
	used       []virtiotest.Used
	kick, call int
	eventIdx   bool // VIRTIO_F_EVENT_IDX negotiated
	// burst: post leaves its chains unpublished, for the test to publish
	// a burst of them with one PublishAvail.
	burst bool
}

func newRing(t testing.TB, g *guest, size uint16, slot uint64, features uint64) *ring {
	t.Helper()
	r := &ring{t: t, g: g, slot: slot, slotOf: make([]uint16, size), used: make([]virtiotest.Used, 0, size)}
	l := virtiotest.Layout{Size: size}
	l.Desc = g.alloc(t, 16*uint64(size))
	l.Avail = g.alloc(t, 6+2*uint64(size)+2)
	l.Used = g.alloc(t, 8+8*uint64(size))
	r.data = g.alloc(t, slot*uint64(size/perChain))
	for j := size/perChain - 1; ; j-- {
		r.free = append(r.free, j)
		if j == 0 {
			break
		}
	}
	d, err := virtiotest.NewDriver(g.mem, l)
	if err != nil {
		t.Fatal(err)
	}
	r.Driver = d
	q, err := virtio.NewQueue(size)
	if err != nil {
		t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = l.Desc, l.Avail, l.Used, true
	if err := q.Activate(g.mem, features); err != nil {
		t.Fatal(err)
	}
	r.q = q
	r.eventIdx = features&virtio.FeatureRingEventIdx != 0
	for _, fd := range []*int{&r.kick, &r.call} {
		*fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { unix.Close(r.kick); unix.Close(r.call) })
	return r
}

// post makes a chain of pieces available: the data area of a free slot is
// cut into buffers of the given lengths (at most perChain), readable or
// writable. It returns false when the ring is full.
func (r *ring) post(data []byte, lens []int, writable bool) bool {
	if len(r.free) == 0 {
		return false
	}
	j := r.free[len(r.free)-1]
	base := r.data + uint64(j)*r.slot
	total := 0
	for _, l := range lens {
		total += l
	}
	if uint64(total) > r.slot || len(lens) > perChain {
		r.t.Fatalf("chain of %d buffers, %d bytes does not fit a slot of %d", len(lens), total, r.slot)
	}
	if data != nil {
		copy(r.g.bytes(r.t, base, uint64(total)), data)
	}
	off := uint64(0)
	for i, l := range lens {
		r.bufs[i] = virtiotest.Buf{Addr: base + off, Len: uint32(l), Write: writable}
		off += uint64(l)
	}
	post := r.Post
	if r.burst {
		post = r.PostDeferred
	}
	head, ok := post(r.bufs[:len(lens)]...)
	if !ok {
		return false
	}
	r.free = r.free[:len(r.free)-1]
	r.slotOf[head] = j
	return true
}

// notify kicks the device (always: extra kicks are harmless).
func (r *ring) notify() {
	one := [8]byte{1}
	unix.Write(r.kick, one[:])
}

// collect takes the chains the device used since the last call back from
// the driver and frees their slots.
func (r *ring) collect() []virtiotest.Used {
	var err error
	r.used, err = r.Reap(r.used[:0])
	if err != nil {
		r.t.Fatal(err)
	}
	for _, u := range r.used {
		r.free = append(r.free, r.slotOf[u.Head])
	}
	return r.used
}

// reap returns the chains the device used since the last call, as copies
// of their data (the used length of it), and frees their slots.
func (r *ring) reap() (bufs [][]byte) {
	for _, u := range r.collect() {
		at := r.data + uint64(r.slotOf[u.Head])*r.slot
		bufs = append(bufs, append([]byte(nil), r.g.bytes(r.t, at, r.slot)[:u.Len]...))
	}
	return bufs
}

// interrupted drains the call eventfd and reports whether it was signalled.
func (r *ring) interrupted() bool {
	var b [8]byte
	n, err := unix.Read(r.call, b[:])
	return err == nil && n == 8
}

// vm is a VM NIC on the switch with both queues started.
type vm struct {
	t      testing.TB
	port   *VirtioPort
	g      *guest
	rx, tx *ring
	mac    net.HardwareAddr
	// frames received so far (header + frame, merged over num_buffers)
	got []rxFrame
	// a partially received MRG frame
	partial []byte
	left    int
}

type rxFrame struct {
	hdr   netHdr
	frame []byte
	bufs  int // receive chains it took
}

type vmOpts struct {
	features uint64 // acked; 0 means every offered feature
	rxBufs   int    // receive chains posted; default 32
	rxBuf    int    // bytes per receive chain; default 2048
	lockIP   bool
	limits   Limits
	noStart  bool
}

func newVM(t testing.TB, sw *Switch, name string, nw *Network, mac string, o vmOpts) *vm {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	p, err := sw.AddVirtioPort(name, VirtioConfig{Network: nw, MAC: hw, LockIP: o.lockIP, Limits: o.limits})
	if err != nil {
		t.Fatal(err)
	}
	if o.features == 0 {
		o.features = Offered
	}
	if err := p.SetFeatures(o.features); err != nil {
		t.Fatal(err)
	}
	if o.rxBufs == 0 {
		o.rxBufs = 32
	}
	if o.rxBuf == 0 {
		o.rxBuf = 2048
	}
	g := newGuest(t, 32<<20)
	m := &vm{t: t, port: p, g: g, mac: hw}
	m.rx = newRing(t, g, 256, uint64(max(o.rxBuf, 4096)), o.features)
	m.tx = newRing(t, g, 256, 72<<10, o.features)
	for i := 0; i < o.rxBufs; i++ {
		m.rx.post(nil, []int{o.rxBuf}, true)
	}
	if !o.noStart {
		m.start()
	}
	t.Cleanup(func() { p.Stop(RxQueue); p.Stop(TxQueue) })
	return m
}

func (m *vm) start() {
	m.t.Helper()
	if err := m.port.Start(RxQueue, m.rx.q, m.rx.kick, m.rx.call); err != nil {
		m.t.Fatal(err)
	}
	if err := m.port.Start(TxQueue, m.tx.q, m.tx.kick, m.tx.call); err != nil {
		m.t.Fatal(err)
	}
}

// sendHdr transmits header+frame split into descriptors at the given
// lengths (nil: one descriptor for the header, one for the frame).
func (m *vm) sendHdr(h netHdr, frame []byte, lens []int) {
	m.t.Helper()
	buf := make([]byte, HeaderLen+len(frame))
	h.encode(buf)
	copy(buf[HeaderLen:], frame)
	if lens == nil {
		lens = []int{HeaderLen, len(frame)}
	}
	if !m.tx.post(buf, lens, false) {
		m.t.Fatal("transmit ring full")
	}
	m.tx.notify()
}

func (m *vm) send(frame []byte) { m.t.Helper(); m.sendHdr(netHdr{}, frame, nil) }

// flushTX waits until the switch has consumed every transmitted chain.
func (m *vm) flushTX() {
	m.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.tx.reap()
		if m.tx.InFlight() == 0 {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: %d transmit chains not consumed", m.port.Name(), m.tx.InFlight())
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// collect reads newly used receive chains into m.got, reassembling
// MRG_RXBUF frames, and reposts as many buffers.
func (m *vm) collect(rxBuf int) {
	for _, b := range m.rx.reap() {
		m.rx.post(nil, []int{rxBuf}, true)
		if m.left > 0 {
			m.partial = append(m.partial, b...)
			m.left--
		} else {
			if len(b) < HeaderLen {
				continue // a buffer given back empty
			}
			m.partial = b
			var h netHdr
			h.decode(b)
			m.left = int(h.numBuffers) - 1
		}
		if m.left <= 0 {
			var h netHdr
			h.decode(m.partial)
			m.got = append(m.got, rxFrame{hdr: h, frame: m.partial[HeaderLen:], bufs: int(h.numBuffers)})
			m.partial, m.left = nil, 0
		}
	}
}

// frames returns what the VM received since the last call.
func (m *vm) frames() []rxFrame {
	m.collect(2048)
	f := m.got
	m.got = nil
	return f
}

// fakeFrames is a Frames over channels: the test writes frames to in and
// reads what the switch sent from out.
type fakeFrames struct {
	in      chan []byte
	out     chan []byte
	closed  chan struct{}
	once    sync.Once
	read    atomic.Int64 // frames handed to the switch
	reading chan struct{}
}

func newFakeFrames() *fakeFrames {
	return &fakeFrames{in: make(chan []byte), out: make(chan []byte, 4096), closed: make(chan struct{})}
}

var errFakeClosed = errors.New("fake frames closed")

func (f *fakeFrames) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	select {
	case b := <-f.in:
		lens[0] = copy(bufs[0], b)
		f.read.Add(1)
		return 1, nil
	case <-f.closed:
		return 0, errFakeClosed
	}
}

func (f *fakeFrames) WriteBatch(frames [][]byte) (int, error) {
	for i, b := range frames {
		select {
		case f.out <- append([]byte(nil), b...):
		default:
			return i, errors.New("fake frames: out full")
		}
	}
	return len(frames), nil
}

func (f *fakeFrames) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// drain returns what the switch wrote so far.
func (f *fakeFrames) drain() [][]byte {
	var r [][]byte
	for {
		select {
		case b := <-f.out:
			r = append(r, b)
		default:
			return r
		}
	}
}

// fakeClock is a manually advanced clock.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Duration      { return time.Duration(c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// Frame builders.

func mac(s string) []byte {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func ether(dst, src []byte, etherType uint16, payload []byte) []byte {
	b := make([]byte, 0, ethHeaderLen+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

func tagged(vid uint16, frame []byte) []byte {
	b := append([]byte(nil), frame[:12]...)
	b = binary.BigEndian.AppendUint16(b, etherTypeVLAN)
	b = binary.BigEndian.AppendUint16(b, vid)
	return append(b, frame[12:]...)
}

func ipv4Header(src, dst [4]byte, proto uint8, payloadLen int) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+payloadLen))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^csumFold(csumAdd(0, ip)))
	return ip
}

func udp4(dstMAC, srcMAC []byte, src, dst [4]byte, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	return ether(dstMAC, srcMAC, etherTypeIPv4, append(ipv4Header(src, dst, protoUDP, len(u)), u...))
}

func arp(dstMAC, srcMAC []byte, sender, target [4]byte) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1)
	copy(a[8:], srcMAC)
	copy(a[14:], sender[:])
	copy(a[24:], target[:])
	return ether(dstMAC, srcMAC, etherTypeARP, a)
}

func bcast() []byte { return []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }
