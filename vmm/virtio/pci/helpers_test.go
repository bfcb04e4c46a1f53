package virtiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

var le = binary.LittleEndian

// Ring layout the test driver uses.
const (
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	ramSize = 0x10000
)

// fakeDevice records what the transport does to it.
type fakeDevice struct {
	offered   uint64
	sizes     []uint16
	mu        sync.Mutex
	acked     uint64
	queues    []*virtio.Queue
	irq       virtio.Interrupt
	resets    int
	config    [8]byte
	kicks     chan int
	block     chan struct{} // if non-nil, Kick waits on it
	popOnKick bool          // Kick pops queue 0, so a corrupted ring breaks it
}

const (
	featA uint64 = 1 << 0
	featB uint64 = 1 << 1 // needs featA: Ack rejects B without A
)

func newFakeDevice() *fakeDevice {
	return &fakeDevice{offered: virtio.FeatureVersion1 | virtio.FeaturesQueue | featA | featB,
		sizes: []uint16{16, 8}, kicks: make(chan int, 64), config: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
}

func (d *fakeDevice) Type() virtio.DeviceType { return virtio.TypeEntropy }
func (d *fakeDevice) QueueSizes() []uint16    { return d.sizes }
func (d *fakeDevice) Features() uint64        { return d.offered }
func (d *fakeDevice) Ack(f uint64) error {
	if err := virtio.CheckFeatures(d.offered, f); err != nil {
		return err
	}
	if f&featB != 0 && f&featA == 0 {
		return errors.New("fake: B needs A")
	}
	d.mu.Lock()
	d.acked = f
	d.mu.Unlock()
	return nil
}
func (d *fakeDevice) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off < uint64(len(d.config)) {
		copy(data, d.config[off:])
	}
}
func (d *fakeDevice) WriteConfig(off uint64, data []byte) {
	if off < uint64(len(d.config)) {
		copy(d.config[off:], data)
	}
}
func (d *fakeDevice) Activate(qs []*virtio.Queue, irq virtio.Interrupt) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queues, d.irq = qs, irq
	return nil
}
func (d *fakeDevice) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queues, d.irq = nil, nil
	d.resets++
}

// Describe implements virtio.Describer: queue 0's ring.
func (d *fakeDevice) Describe() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queues) == 0 {
		return []string{"fake: not active"}
	}
	return []string{"fake: ring " + d.queues[0].Describe()}
}

func (d *fakeDevice) Kick(q int) {
	if d.block != nil {
		<-d.block
	}
	if d.popOnKick && q == 0 {
		for {
			head, ok, err := d.queues[0].Pop()
			if err != nil || !ok {
				break
			}
			d.queues[0].Push(head, 0)
		}
	}
	select {
	case d.kicks <- q:
	default: // a test that does not read kicks must not stall the transport
	}
}

// expectKick waits for the device to be kicked on queue q.
func (d *fakeDevice) expectKick(t *testing.T, q int) {
	t.Helper()
	select {
	case got := <-d.kicks:
		if got != q {
			t.Fatalf("kick on queue %d, want %d", got, q)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no kick on queue %d", q)
	}
}

// noKick checks that no kick arrives for a while.
func (d *fakeDevice) noKick(t *testing.T) {
	t.Helper()
	select {
	case got := <-d.kicks:
		t.Fatalf("unexpected kick on queue %d", got)
	case <-time.After(50 * time.Millisecond):
	}
}

// fakeRouter records MSI-X routes and signals.
type fakeRouter struct {
	mu      sync.Mutex
	routes  map[int]route
	signals chan int
}

type route struct {
	addr   uint64
	data   uint32
	masked bool
}

func newRouter() *fakeRouter {
	return &fakeRouter{routes: map[int]route{}, signals: make(chan int, 64)}
}

func (r *fakeRouter) Route(v int, addr uint64, data uint32, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[v] = route{addr, data, masked}
	return nil
}

func (r *fakeRouter) Signal(v int) error {
	select {
	case r.signals <- v:
	default:
	}
	return nil
}

func (r *fakeRouter) expect(t *testing.T, v int) {
	t.Helper()
	select {
	case got := <-r.signals:
		if got != v {
			t.Fatalf("MSI-X vector %d signalled, want %d", got, v)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("MSI-X vector %d not signalled", v)
	}
}

func (r *fakeRouter) none(t *testing.T) {
	t.Helper()
	select {
	case got := <-r.signals:
		t.Fatalf("unexpected MSI-X vector %d", got)
	default:
	}
}

// fakeLine is an INTx line.
type fakeLine struct {
	mu    sync.Mutex
	level bool
	sets  int
}

func (l *fakeLine) Set(level bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.level = level
	l.sets++
	return nil
}

func (l *fakeLine) get() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level
}

// fakeNotifier records watched notify addresses.
type fakeNotifier struct {
	mu      sync.Mutex
	watched map[uint64]int
}

func (n *fakeNotifier) Watch(gpa uint64, fd int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.watched[gpa]; dup {
		return fmt.Errorf("%#x watched twice", gpa)
	}
	n.watched[gpa] = fd
	return nil
}

func (n *fakeNotifier) Unwatch(gpa uint64, fd int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.watched[gpa] != fd {
		return fmt.Errorf("%#x not watched with fd %d", gpa, fd)
	}
	delete(n.watched, gpa)
	return nil
}

// harness is a transport with fakes around it and a driver's view of it.
type harness struct {
	t      *testing.T
	tr     *Transport
	dev    *fakeDevice
	ram    *virtiotest.RAM
	router *fakeRouter
	line   *fakeLine
	caps   map[uint8]capInfo // virtio caps by cfg_type
	msix   int               // config offset of the MSI-X capability
	errs   atomic.Int32
}

type capInfo struct {
	at             int // config-space offset
	bar            uint8
	offset, length uint32
	mult           uint32
}

func newHarness(t *testing.T, dev *fakeDevice) *harness {
	t.Helper()
	return newHarnessFor(t, dev, dev)
}

// newHarnessFor is newHarness for a device built on fake (which the
// harness's checks look at).
func newHarnessFor(t *testing.T, fake *fakeDevice, dev virtio.Device) *harness {
	t.Helper()
	h := &harness{t: t, dev: fake, ram: virtiotest.NewRAM(ramSize), router: newRouter(), line: &fakeLine{}}
	tr, err := New(dev, Options{Memory: h.ram, Router: h.router, INTx: h.line,
		Errors: func(error) { h.errs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	h.tr = tr
	h.findCaps()
	return h
}

// findCaps walks the capability list as a driver does.
func (h *harness) findCaps() {
	h.caps = map[uint8]capInfo{}
	var b [4]byte
	h.tr.ReadConfig(pci.RegCapabilities, b[:1])
	for at, n := int(b[0]), 0; at != 0 && n < 48; n++ {
		var c [20]byte
		for i := 0; i < 20; i += 4 {
			h.tr.ReadConfig(at+i, c[i:i+4])
		}
		switch c[0] {
		case capVendor:
			ci := capInfo{at: at, bar: c[4], offset: le.Uint32(c[8:]), length: le.Uint32(c[12:])}
			if c[3] == capNotify {
				ci.mult = le.Uint32(c[16:])
			}
			if _, dup := h.caps[c[3]]; !dup {
				h.caps[c[3]] = ci
			}
		case pci.CapMSIX:
			h.msix = at
		}
		at = int(c[1])
	}
}

func (h *harness) read(off uint64, n int) uint64 {
	b := make([]byte, n)
	h.tr.ReadBAR(0, off, b)
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func (h *harness) write(off uint64, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	h.tr.WriteBAR(0, off, b)
}

func (h *harness) common() uint64 { return uint64(h.caps[capCommon].offset) }

func (h *harness) status() uint8 { return uint8(h.read(h.common()+regDeviceStatus, 1)) }

func (h *harness) setStatus(s uint8) { h.write(h.common()+regDeviceStatus, 1, uint64(s)) }

// negotiate runs the start of driver initialisation (virtio 1.2 §3.1.1)
// and reports whether FEATURES_OK stuck.
func (h *harness) negotiate(features uint64) bool {
	c := h.common()
	h.setStatus(0)
	h.setStatus(virtio.StatusAcknowledge)
	h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	for sel := uint64(0); sel < 2; sel++ {
		h.write(c+regDriverFeatureSelect, 4, sel)
		h.write(c+regDriverFeature, 4, features>>(32*sel)&0xFFFF_FFFF)
	}
	h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	return h.status()&virtio.StatusFeaturesOK != 0
}

// setupQueue programs queue q with size n on the standard ring layout,
// writing 64-bit addresses as two halves, as Linux does.
func (h *harness) setupQueue(q int, n uint16, vector uint16) *virtiotest.Driver {
	c := h.common()
	h.write(c+regQueueSelect, 2, uint64(q))
	h.write(c+regQueueSize, 2, uint64(n))
	h.write(c+regQueueMSIXVector, 2, uint64(vector))
	for _, a := range []struct {
		reg  uint64
		addr uint64
	}{{regQueueDesc, descAt}, {regQueueDriver, availAt}, {regQueueDevice, usedAt}} {
		h.write(c+a.reg, 4, a.addr&0xFFFF_FFFF)
		h.write(c+a.reg+4, 4, a.addr>>32)
	}
	h.write(c+regQueueEnable, 2, 1)
	d, err := virtiotest.NewDriver(h.ram, virtiotest.Layout{Size: n, Desc: descAt, Avail: availAt, Used: usedAt})
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

// notifyAddr is queue q's offset in the BAR.
func (h *harness) notifyAddr(q int) uint64 {
	c := h.common()
	h.write(c+regQueueSelect, 2, uint64(q))
	off := h.read(c+regQueueNotifyOff, 2)
	n := h.caps[capNotify]
	return uint64(n.offset) + off*uint64(n.mult)
}

// enableMSIX turns MSI-X on and programs and unmasks every vector.
func (h *harness) enableMSIX() {
	var b [12]byte
	for i := 0; i < 12; i += 4 {
		h.tr.ReadConfig(h.msix+i, b[i:i+4])
	}
	vectors := int(le.Uint16(b[2:])&0x7FF) + 1
	table := uint64(le.Uint32(b[4:]) &^ 7)
	for v := range vectors {
		e := table + uint64(16*v)
		h.write(e, 8, 0xFEE0_0000)
		h.write(e+8, 4, uint64(0x40+v))
		h.write(e+12, 4, 0)
	}
	h.tr.WriteConfig(h.msix+3, []byte{0x80})
}
