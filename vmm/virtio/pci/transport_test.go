package virtiopci

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/vmm/layout"
	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

func TestIdentityAndCapabilities(t *testing.T) {
	h := newHarness(t, newFakeDevice())
	var b [4]byte
	h.tr.ReadConfig(pci.RegVendor, b[:])
	if v, d := le.Uint16(b[:]), le.Uint16(b[2:]); v != 0x1AF4 || d != 0x1040+uint16(virtio.TypeEntropy) {
		t.Errorf("id %04x:%04x, want 1af4:%04x", v, d, 0x1040+int(virtio.TypeEntropy))
	}
	h.tr.ReadConfig(pci.RegRevision, b[:])
	if b[0] < 1 || uint32(b[1])|uint32(b[2])<<8|uint32(b[3])<<16 != 0xFF0000 {
		t.Errorf("revision %d class %#x, want >= 1 and 0xff0000", b[0], b[1:])
	}
	h.tr.ReadConfig(pci.RegSubsysVendor, b[:])
	if sv, s := le.Uint16(b[:]), le.Uint16(b[2:]); sv != 0x1AF4 || s < 0x40 {
		t.Errorf("subsystem %04x:%04x, want 1af4 and >= 0x40", sv, s)
	}
	h.tr.ReadConfig(pci.RegBAR0, b[:])
	if b[0]&0x7 != 0x4 {
		t.Errorf("BAR0 low bits %#x, want a 64-bit memory BAR", b[0]&0x7)
	}
	h.tr.ReadConfig(pci.RegIntPin, b[:1])
	if b[0] != 1 {
		t.Errorf("interrupt pin %d, want INTA", b[0])
	}
	barSize := h.tr.BARs()[0].Size
	for _, typ := range []uint8{capCommon, capNotify, capISR, capDevice, capPCICfg} {
		c, ok := h.caps[typ]
		switch {
		case !ok:
			t.Errorf("no capability of cfg_type %d", typ)
		case c.bar != 0:
			t.Errorf("cfg_type %d in BAR %d, want 0", typ, c.bar)
		case typ != capPCICfg && (c.length == 0 || uint64(c.offset)+uint64(c.length) > barSize):
			t.Errorf("cfg_type %d at %#x+%#x does not fit the %#x-byte BAR", typ, c.offset, c.length, barSize)
		}
	}
	if c := h.caps[capCommon]; c.length < 0x38 {
		t.Errorf("common config %d bytes, want at least 0x38", c.length)
	}
	if n := h.caps[capNotify]; n.mult != 4 || n.length < 1*4+2 {
		t.Errorf("notify multiplier %d length %d, want 4 and room for 2 queues", n.mult, n.length)
	}
	if h.msix == 0 {
		t.Fatal("no MSI-X capability")
	}
	h.tr.ReadConfig(h.msix+2, b[:2])
	if n := int(le.Uint16(b[:])&0x7FF) + 1; n != 3 {
		t.Errorf("%d MSI-X vectors, want 3 (2 queues + config)", n)
	}
	if q := h.read(h.common()+regNumQueues, 2); q != 2 {
		t.Errorf("num_queues %d, want 2", q)
	}
}

func TestFeatureNegotiation(t *testing.T) {
	all := virtio.FeatureVersion1 | virtio.FeaturesQueue | featA | featB
	for _, tc := range []struct {
		name     string
		features uint64
		ok       bool
	}{
		{"everything offered", all, true},
		{"version 1 only", virtio.FeatureVersion1, true},
		{"A without B", virtio.FeatureVersion1 | featA, true},
		{"B without A (device rejects)", virtio.FeatureVersion1 | featB, false},
		{"legacy driver (no VERSION_1)", featA, false},
		{"not offered", virtio.FeatureVersion1 | 1<<5, false},
		{"packed ring not offered", virtio.FeatureVersion1 | virtio.FeatureRingPacked, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newFakeDevice()
			h := newHarness(t, dev)
			c := h.common()
			for sel := uint64(0); sel < 2; sel++ {
				h.write(c+regDeviceFeatureSelect, 4, sel)
				if got := h.read(c+regDeviceFeature, 4); got != all>>(32*sel)&0xFFFF_FFFF {
					t.Fatalf("device_feature[%d] = %#x, want %#x", sel, got, all>>(32*sel)&0xFFFF_FFFF)
				}
			}
			h.write(c+regDeviceFeatureSelect, 4, 2)
			if got := h.read(c+regDeviceFeature, 4); got != 0 {
				t.Errorf("device_feature[2] = %#x, want 0", got)
			}
			if got := h.negotiate(tc.features); got != tc.ok {
				t.Fatalf("FEATURES_OK = %v, want %v", got, tc.ok)
			}
			if tc.ok && dev.acked != tc.features {
				t.Errorf("device acked %#x, want %#x", dev.acked, tc.features)
			}
			// Driver features read back as written.
			for sel := uint64(0); sel < 2; sel++ {
				h.write(c+regDriverFeatureSelect, 4, sel)
				if got := h.read(c+regDriverFeature, 4); got != tc.features>>(32*sel)&0xFFFF_FFFF {
					t.Errorf("driver_feature[%d] = %#x", sel, got)
				}
			}
			// A later write cannot sneak FEATURES_OK in, nor DRIVER_OK
			// activate the device without it.
			if !tc.ok {
				h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
				if s := h.status(); s&virtio.StatusFeaturesOK != 0 || s&virtio.StatusDeviceNeedsReset == 0 || dev.queues != nil {
					t.Errorf("status %#x after DRIVER_OK without accepted features; device active %v", s, dev.queues != nil)
				}
			}
		})
	}
}

// start brings the device up the way Linux's virtio_pci does, with queue
// 0 on the test ring and queue 1 left disabled.
func start(t *testing.T, h *harness, msix bool) *virtiotest.Driver {
	t.Helper()
	if !h.negotiate(virtio.FeatureVersion1 | virtio.FeaturesQueue) {
		t.Fatal("features refused")
	}
	vec := uint16(NoVector)
	if msix {
		h.enableMSIX()
		h.write(h.common()+regConfigMSIXVector, 2, 0)
		vec = 1
	}
	r := h.setupQueue(0, 8, vec)
	h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if s := h.status(); s != virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK {
		t.Fatalf("status %#x after DRIVER_OK", s)
	}
	h.dev.expectKick(t, 0) // the activation kick of every enabled queue
	h.dev.noKick(t)
	return r
}

func TestQueueSetupAndActivation(t *testing.T) {
	h := newHarness(t, newFakeDevice())
	c := h.common()
	h.write(c+regQueueSelect, 2, 1)
	if got := h.read(c+regQueueSize, 2); got != 8 {
		t.Errorf("queue 1 size %d, want its maximum 8", got)
	}
	h.write(c+regQueueSize, 2, 16) // above the maximum: ignored
	if got := h.read(c+regQueueSize, 2); got != 8 {
		t.Errorf("queue 1 size %d after writing 16, want 8", got)
	}
	h.write(c+regQueueSelect, 2, 2)
	if got := h.read(c+regQueueSize, 2); got != 0 {
		t.Errorf("absent queue 2 size %d, want 0", got)
	}
	start(t, h, true)
	h.write(c+regQueueSelect, 2, 0)
	for _, f := range []struct {
		reg  uint64
		n    int
		want uint64
	}{{regQueueSize, 2, 8}, {regQueueEnable, 2, 1}, {regQueueMSIXVector, 2, 1}, {regQueueNotifyOff, 2, 0},
		{regQueueDesc, 8, descAt}, {regQueueDriver, 4, availAt}, {regQueueDevice + 4, 4, 0}} {
		if got := h.read(c+f.reg, f.n); got != f.want {
			t.Errorf("register %#x = %#x, want %#x", f.reg, got, f.want)
		}
	}
	qs := h.dev.queues
	if len(qs) != 2 || !qs[0].Active() || qs[1].Active() {
		t.Fatalf("device activated with %d queues (want queue 0 active, 1 not)", len(qs))
	}
	// Queue configuration is frozen while the device runs.
	h.write(c+regQueueDesc, 4, 0x5000)
	if got := h.read(c+regQueueDesc, 4); got != descAt {
		t.Errorf("queue_desc changed to %#x after DRIVER_OK", got)
	}
	if h.errs.Load() != 0 {
		t.Errorf("%d errors reported", h.errs.Load())
	}
}

func TestNotifyReachesDeviceOffTheVCPUThread(t *testing.T) {
	dev := newFakeDevice()
	h := newHarness(t, dev)
	start(t, h, true)
	// Kick blocks until released: if the notify write ran the device on
	// the writer's goroutine, WriteBAR would not return.
	dev.block = make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		h.write(h.notifyAddr(0), 2, 0)
		close(wrote)
	}()
	select {
	case <-wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("the notify write waited for the device")
	}
	close(dev.block)
	dev.expectKick(t, 0)
	dev.block = nil
	// A KVM ioeventfd signals the eventfd directly.
	if err := eventfd.Signal(h.tr.notifyFDs[0]); err != nil {
		t.Fatal(err)
	}
	dev.expectKick(t, 0)
	// A disabled queue and an address past the last queue: nothing.
	h.write(h.notifyAddr(1), 2, 1)
	h.write(h.notifyAddr(0)+8, 2, 2)
	dev.noKick(t)
}

// pollingDevice is a fakeDevice that asks, at each kick or poll, to be
// polled again until left runs out.
type pollingDevice struct {
	*fakeDevice
	left atomic.Int32
}

func (d *pollingDevice) Poll(q int) time.Duration {
	d.Kick(q)
	if d.left.Add(-1) >= 0 {
		return time.Millisecond
	}
	return 0
}

// TestPollerPolled: a device that implements Poller is called through
// Poll, and again without a kick for as long as it asks.
func TestPollerPolled(t *testing.T) {
	dev := &pollingDevice{fakeDevice: newFakeDevice()}
	h := newHarnessFor(t, dev.fakeDevice, dev)
	start(t, h, true)
	dev.left.Store(3)
	if err := eventfd.Signal(h.tr.notifyFDs[0]); err != nil {
		t.Fatal(err)
	}
	for range 4 { // the kick, then three polls
		dev.expectKick(t, 0)
	}
	dev.noKick(t)
}

// TestDescribe: a dump's lines for a transport: the driver's status, each
// queue's vector and what holds it back, the kicks nobody has taken yet,
// then the device's own lines.
func TestDescribe(t *testing.T) {
	dev := newFakeDevice()
	h := newHarness(t, dev)
	drv := start(t, h, true)
	drv.Add(0) // avail.idx moves; the device is not asked to pop
	// The kick goroutine takes the first kick and waits in Kick; the
	// second stays in the eventfd.
	dev.block = make(chan struct{})
	fd := h.tr.notifyFDs[0]
	eventfd.Signal(fd)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if n, err := eventfd.Peek(fd); err != nil || n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the kick goroutine did not take the kick")
		}
		time.Sleep(time.Millisecond)
	}
	eventfd.Signal(fd)
	// With the function masked, a notification waits in the PBA.
	h.tr.WriteConfig(h.msix+3, []byte{0xC0})
	if err := dev.irq.Used(0); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"status=0xf isr=0x0",
		"queue 0: vector 1 (masked pending), notify eventfd=1",
		"queue 1: no vector, notify eventfd=0",
		"fake: ring size=8 avail.idx=1 next=0 used=0 used.idx=0 signalled=0 avail.flags=0x0 used.flags=0x0 used_event=0 avail_event=0",
	}
	if got := h.tr.Describe(); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	close(dev.block)
	dev.expectKick(t, 0)
	dev.expectKick(t, 0)
	dev.block = nil
}

func TestUsedInterruptMSIX(t *testing.T) {
	dev := newFakeDevice()
	h := newHarness(t, dev)
	start(t, h, true)
	if r := h.router.routes[1]; r.masked || r.addr != 0xFEE0_0000 || r.data != 0x41 {
		t.Errorf("vector 1 route %+v, want unmasked 0xfee00000/0x41", r)
	}
	if err := dev.irq.Used(0); err != nil {
		t.Fatal(err)
	}
	h.router.expect(t, 1)
	if err := dev.irq.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	h.router.expect(t, 0)
	// Queue 1 has no vector: no interrupt, and no INTx either.
	if err := dev.irq.Used(1); err != nil {
		t.Fatal(err)
	}
	h.router.none(t)
	if h.line.get() {
		t.Error("INTx asserted while MSI-X is enabled")
	}
	// A vector the function does not have reads back as NO_VECTOR.
	h.write(h.common()+regQueueSelect, 2, 1)
	h.write(h.common()+regQueueMSIXVector, 2, 3)
	if got := h.read(h.common()+regQueueMSIXVector, 2); got != NoVector {
		t.Errorf("queue vector 3 of 3 read back %#x, want NO_VECTOR", got)
	}
	if err := dev.irq.Used(5); err == nil {
		t.Error("Used(5) on a 2-queue device succeeded")
	}
}

func TestINTxAndConfigGeneration(t *testing.T) {
	dev := newFakeDevice()
	h := newHarness(t, dev)
	start(t, h, false)
	isr := uint64(h.caps[capISR].offset)
	gen := h.read(h.common()+regConfigGeneration, 1)
	if err := dev.irq.Used(0); err != nil {
		t.Fatal(err)
	}
	if !h.line.get() {
		t.Fatal("INTx not asserted for a used buffer")
	}
	var st [2]byte
	h.tr.ReadConfig(pci.RegStatus, st[:])
	if st[0]&pci.StatusInterrupt == 0 {
		t.Error("status register interrupt bit clear while INTx is asserted")
	}
	if got := h.read(isr, 1); got != isrQueue {
		t.Errorf("ISR %#x, want the queue bit", got)
	}
	if h.line.get() {
		t.Error("INTx still asserted after the ISR read")
	}
	if got := h.read(isr, 1); got != 0 {
		t.Errorf("ISR %#x on second read, want 0 (read clears)", got)
	}
	if err := dev.irq.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	if got := h.read(h.common()+regConfigGeneration, 1); got != gen+1 {
		t.Errorf("config_generation %d after a change, want %d", got, gen+1)
	}
	if got := h.read(isr, 1); got != isrConfig {
		t.Errorf("ISR %#x, want the config bit", got)
	}
	// With INTx disabled in the command register, the line stays low.
	var cmd [2]byte
	h.tr.ReadConfig(pci.RegCommand, cmd[:])
	cmd[1] |= pci.CommandINTxDisable >> 8
	h.tr.WriteConfig(pci.RegCommand, cmd[:])
	dev.irq.Used(0)
	if h.line.get() {
		t.Error("INTx asserted although disabled in the command register")
	}
	h.router.none(t)
}

func TestDeviceConfigWindow(t *testing.T) {
	h := newHarness(t, newFakeDevice())
	d := uint64(h.caps[capDevice].offset)
	if got := h.read(d+4, 4); got != 0x08070605 {
		t.Errorf("device config at 4 = %#x, want 0x08070605", got)
	}
	h.write(d+1, 1, 0xAB)
	if got := h.read(d, 4); got != 0x0403AB01 {
		t.Errorf("device config after write = %#x", got)
	}
}

func TestResetStopsEverything(t *testing.T) {
	dev := newFakeDevice()
	h := newHarness(t, dev)
	start(t, h, true)
	q := dev.queues[0]
	h.setStatus(0)
	if s := h.status(); s != 0 {
		t.Errorf("status %#x after reset", s)
	}
	if dev.resets == 0 || dev.queues != nil || q.Active() {
		t.Fatalf("device resets %d, queue active %v after reset", dev.resets, q.Active())
	}
	c := h.common()
	h.write(c+regQueueSelect, 2, 0)
	if sz, en, vec := h.read(c+regQueueSize, 2), h.read(c+regQueueEnable, 2), h.read(c+regQueueMSIXVector, 2); sz != 16 || en != 0 || vec != NoVector {
		t.Errorf("queue 0 after reset: size %d enable %d vector %#x, want 16 0 NO_VECTOR", sz, en, vec)
	}
	if got := h.read(c+regConfigMSIXVector, 2); got != NoVector {
		t.Errorf("config vector %#x after reset", got)
	}
	h.write(h.notifyAddr(0), 2, 0)
	dev.noKick(t)
	// And it comes back.
	start(t, h, true)
	h.write(h.notifyAddr(0), 2, 0)
	dev.expectKick(t, 0)
}

func TestBrokenRingNeedsReset(t *testing.T) {
	t.Run("bad address at DRIVER_OK", func(t *testing.T) {
		h := newHarness(t, newFakeDevice())
		h.negotiate(virtio.FeatureVersion1)
		h.setupQueue(0, 8, NoVector)
		h.write(h.common()+regQueueDevice, 4, ramSize) // used ring outside RAM
		h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
		if s := h.status(); s&virtio.StatusDeviceNeedsReset == 0 {
			t.Errorf("status %#x, want DEVICE_NEEDS_RESET", s)
		}
		if h.dev.queues != nil {
			t.Error("device activated with a broken queue")
		}
	})
	t.Run("corrupted available ring", func(t *testing.T) {
		dev := newFakeDevice()
		dev.popOnKick = true
		h := newHarness(t, dev)
		r := start(t, h, true)
		r.SetAvailIdx(100) // 100 entries ahead of a queue of 8
		h.write(h.notifyAddr(0), 2, 0)
		dev.expectKick(t, 0)
		// The kick goroutine marks the ring broken after the device's
		// Kick saw it: wait for that, not just for the kick.
		deadline := time.Now().Add(5 * time.Second)
		s := h.status()
		for s&virtio.StatusDeviceNeedsReset == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
			s = h.status()
		}
		if s&virtio.StatusDeviceNeedsReset == 0 {
			t.Errorf("status %#x, want DEVICE_NEEDS_RESET", s)
		}
		h.router.expect(t, 0) // the configuration change interrupt
		h.setStatus(0)
		if s := h.status(); s != 0 {
			t.Errorf("status %#x after reset", s)
		}
	})
}

func TestPCICfgAccess(t *testing.T) {
	h := newHarness(t, newFakeDevice())
	at := h.caps[capPCICfg].at
	cfg := func(bar uint8, off, n uint32) {
		h.tr.WriteConfig(at+4, []byte{bar})
		h.tr.WriteConfig(at+8, le.AppendUint32(nil, off))
		h.tr.WriteConfig(at+12, le.AppendUint32(nil, n))
	}
	cfg(0, uint32(h.common())+regNumQueues, 2)
	var b [4]byte
	h.tr.ReadConfig(at+16, b[:])
	if got := le.Uint16(b[:]); got != 2 {
		t.Errorf("num_queues through pci_cfg = %d, want 2", got)
	}
	cfg(0, uint32(h.common())+regDeviceStatus, 1)
	h.tr.WriteConfig(at+16, []byte{virtio.StatusAcknowledge, 0, 0, 0})
	if s := h.status(); s != virtio.StatusAcknowledge {
		t.Errorf("status %#x after a pci_cfg write, want ACKNOWLEDGE", s)
	}
	cfg(1, 0, 4) // another BAR: nothing
	h.tr.ReadConfig(at+16, b[:])
	if le.Uint32(b[:]) != 0 {
		t.Errorf("pci_cfg read of BAR 1 = % x, want zeros", b)
	}
	cfg(0, 1, 2) // misaligned: nothing
	h.tr.ReadConfig(at+16, b[:])
	if le.Uint32(b[:]) != 0 {
		t.Errorf("misaligned pci_cfg read = % x, want zeros", b)
	}
}

func TestNotifierFollowsBAR(t *testing.T) {
	n := &fakeNotifier{watched: map[uint64]int{}}
	dev := newFakeDevice()
	tr, err := New(dev, Options{Memory: virtiotest.NewRAM(ramSize), Router: newRouter(), Notifier: n})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	b, err := pci.New(pci.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(tr); err != nil {
		t.Fatal(err)
	}
	addrs := tr.NotifyAddrs()
	if len(addrs) != 2 || addrs[0] < layout.PCIMMIO32Base || addrs[1] != addrs[0]+4 {
		t.Fatalf("notify addresses %#x", addrs)
	}
	for q, a := range addrs {
		if fd, ok := n.watched[a]; !ok || fd != tr.notifyFDs[q] {
			t.Errorf("queue %d notify address %#x watched with fd %d (%v), want %d", q, a, fd, ok, tr.notifyFDs[q])
		}
	}
	// The guest turns memory decoding off (as Linux does to size BARs):
	// nothing is watched; back on: the same addresses again.
	var cmd [2]byte
	tr.ReadConfig(pci.RegCommand, cmd[:])
	conf := b.ECAM()
	slotOff := uint64(1 << 15) // slot 1, function 0
	conf.Write(slotOff+pci.RegCommand, []byte{cmd[0] &^ pci.CommandMemory, cmd[1]})
	if len(n.watched) != 0 || tr.NotifyAddrs() != nil {
		t.Errorf("watched %v with decoding off", n.watched)
	}
	conf.Write(slotOff+pci.RegCommand, cmd[:])
	if len(n.watched) != 2 {
		t.Errorf("watched %v after decoding is back on", n.watched)
	}
}

// breakingDevice finds its queue broken on a goroutine of its own, after
// Kick has returned, as virtio-blk's workers do.
type breakingDevice struct {
	*fakeDevice
	broken atomic.Bool
}

func (d *breakingDevice) NeedsReset() bool { return d.broken.Load() }
func (d *breakingDevice) Reset() {
	d.fakeDevice.Reset()
	d.broken.Store(false)
}

func TestDeviceNeedsResetIsFoldedIntoStatus(t *testing.T) {
	dev := &breakingDevice{fakeDevice: newFakeDevice()}
	h := &harness{t: t, dev: dev.fakeDevice, ram: virtiotest.NewRAM(ramSize), router: newRouter(), line: &fakeLine{}}
	tr, err := New(dev, Options{Memory: h.ram, Router: h.router, INTx: h.line})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	h.tr = tr
	h.findCaps()
	start(t, h, true)
	if s := h.status(); s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x before the device broke", s)
	}
	dev.broken.Store(true)
	if s := h.status(); s&virtio.StatusDeviceNeedsReset == 0 || s&virtio.StatusDriverOK == 0 {
		t.Errorf("status %#x, want DRIVER_OK|DEVICE_NEEDS_RESET", s)
	}
	h.setStatus(0)
	if s := h.status(); s != 0 {
		t.Errorf("status %#x after reset, want 0", s)
	}
}
