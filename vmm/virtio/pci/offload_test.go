package virtiopci

import (
	"errors"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// offloadDevice is a device served by "another process": it is not a
// Kicker and records what Offload hands it.
type offloadDevice struct {
	virtio.Device
	kick, call []int
	calls      int
	err        error
}

func (d *offloadDevice) Offload(kick, call []int) error {
	d.kick, d.call = kick, call
	d.calls++
	return d.err
}

// irqfdRouter is a fake router whose vectors have (pretend) irqfds.
type irqfdRouter struct{ *fakeRouter }

func (r irqfdRouter) EventFD(v int) (int, error) { return 1000 + v, nil }

func newOffloadHarness(t *testing.T, dev *offloadDevice) *harness {
	t.Helper()
	h := &harness{t: t, ram: virtiotest.NewRAM(ramSize), router: newRouter(), line: &fakeLine{}}
	tr, err := New(dev, Options{Memory: h.ram, Router: irqfdRouter{h.router}, INTx: h.line,
		Errors: func(error) { h.errs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	h.tr = tr
	h.findCaps()
	return h
}

// TestKicks: a Kicker's transport runs a notification goroutine, an
// Offloader's does not (Machine.Procs counts the former only).
func TestKicks(t *testing.T) {
	if !newHarness(t, newFakeDevice()).tr.Kicks() {
		t.Error("a Kicker's transport says it serves no kicks")
	}
	if newOffloadHarness(t, &offloadDevice{Device: newFakeDevice()}).tr.Kicks() {
		t.Error("an Offloader's transport says it serves kicks")
	}
}

// TestOffload: at DRIVER_OK an Offloader gets each queue's kick eventfd
// (which the driver's notifications signal, and which the transport does
// not drain since the device serves no kicks itself) and the irqfd of each
// queue's MSI-X vector, -1 where a queue has none or MSI-X is off.
func TestOffload(t *testing.T) {
	for _, msix := range []bool{true, false} {
		dev := &offloadDevice{Device: newFakeDevice()}
		h := newOffloadHarness(t, dev)
		if !h.negotiate(virtio.FeatureVersion1) {
			t.Fatal("FEATURES_OK refused")
		}
		vec := uint16(NoVector)
		if msix {
			h.enableMSIX()
			vec = 1
		}
		h.setupQueue(0, 8, vec)
		h.setupQueue(1, 8, NoVector)
		h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
		if dev.calls != 1 || len(dev.kick) != 2 || len(dev.call) != 2 {
			t.Fatalf("msix %v: Offload called %d times with kick %v call %v", msix, dev.calls, dev.kick, dev.call)
		}
		wantCall0 := -1
		if msix {
			wantCall0 = 1001
		}
		if dev.call[0] != wantCall0 || dev.call[1] != -1 {
			t.Errorf("msix %v: call fds %v, want [%d -1]", msix, dev.call, wantCall0)
		}
		// A notification through the BAR (the MMIO fallback of an
		// ioeventfd) must reach queue 1's kick eventfd and stay there.
		h.write(h.notifyAddr(1), 2, 1)
		var buf [8]byte
		if n, err := unix.Read(dev.kick[1], buf[:]); err != nil || n != 8 || buf[0] != 1 {
			t.Errorf("msix %v: kick eventfd of queue 1: n=%d err=%v value=%v", msix, n, err, buf[0])
		}
		if _, err := unix.Read(dev.kick[0], buf[:]); err != unix.EAGAIN {
			t.Errorf("msix %v: queue 0's kick eventfd was signalled: %v", msix, err)
		}
	}
}

// TestOffloadFailure: a device that cannot hand its queues over (the
// backend is gone) is reset and reports DEVICE_NEEDS_RESET.
func TestOffloadFailure(t *testing.T) {
	dev := &offloadDevice{Device: newFakeDevice(), err: errors.New("backend gone")}
	h := newOffloadHarness(t, dev)
	if !h.negotiate(virtio.FeatureVersion1) {
		t.Fatal("FEATURES_OK refused")
	}
	h.setupQueue(0, 8, NoVector)
	h.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if h.status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Errorf("status %#x after a failed offload, want DEVICE_NEEDS_RESET", h.status())
	}
	if h.errs.Load() == 0 {
		t.Error("the failure was not reported")
	}
}
