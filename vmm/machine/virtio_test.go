package machine

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/kvm"
)

func TestLegacyRoutesMatchKVMDefault(t *testing.T) {
	rs := legacyRoutes()
	if len(rs) != 24+16 {
		t.Fatalf("%d legacy routes, want 40 (24 IOAPIC pins, 16 PIC pins)", len(rs))
	}
	pic := map[uint32]kvm.Route{}
	ioapic := map[uint32]kvm.Route{}
	for _, r := range rs {
		if r.Type != kvm.RouteIRQChip {
			t.Fatalf("route %+v is not an irqchip route", r)
		}
		if r.Chip == kvm.IRQChipIOAPIC {
			ioapic[r.GSI] = r
		} else {
			pic[r.GSI] = r
		}
	}
	for gsi := uint32(0); gsi < 24; gsi++ {
		if r, ok := ioapic[gsi]; !ok || r.Pin != gsi {
			t.Errorf("GSI %d: IOAPIC route %+v, want pin %d", gsi, r, gsi)
		}
		r, ok := pic[gsi]
		switch {
		case gsi >= 16 && ok:
			t.Errorf("GSI %d routed to a PIC", gsi)
		case gsi < 8 && (!ok || r.Chip != kvm.IRQChipPICMaster || r.Pin != gsi):
			t.Errorf("GSI %d: PIC route %+v, want master pin %d", gsi, r, gsi)
		case gsi >= 8 && gsi < 16 && (!ok || r.Chip != kvm.IRQChipPICSlave || r.Pin != gsi-8):
			t.Errorf("GSI %d: PIC route %+v, want slave pin %d", gsi, r, gsi-8)
		}
	}
}

// TestMSIRouterAndIOEvents drives the KVM plumbing of virtio devices on
// the host's /dev/kvm: GSI routes with the legacy pins kept, irqfds
// attached and detached as the guest unmasks and masks, and ioeventfds
// for notify addresses.
func TestMSIRouterAndIOEvents(t *testing.T) {
	_, vm := irqchipVM(t)
	r := &msiRouter{routes: newGSIRoutes(vm), vm: vm}
	defer r.close()
	steps := []struct {
		vector int
		masked bool
	}{{0, true}, {0, false}, {1, false}, {0, true}, {0, false}}
	for _, s := range steps {
		if err := r.Route(s.vector, 0xFEE0_0000, uint32(0x30+s.vector), s.masked); err != nil {
			t.Fatalf("Route(%d, masked=%v): %v", s.vector, s.masked, err)
		}
		if got := r.vectors[s.vector].attached; got == s.masked {
			t.Errorf("vector %d attached=%v after Route(masked=%v)", s.vector, got, s.masked)
		}
		if !s.masked {
			if err := r.Signal(s.vector); err != nil {
				t.Fatal(err)
			}
		}
	}
	if g0, g1 := r.vectors[0].gsi, r.vectors[1].gsi; g0 < firstMSIGSI || g1 == g0 {
		t.Errorf("vector GSIs %d and %d, want distinct and >= %d", g0, g1, firstMSIGSI)
	}
	// The legacy pins still work after the table was replaced.
	if err := vm.IRQLine(4, true); err != nil {
		t.Errorf("IRQ line 4 after GSI routing: %v", err)
	}
	vm.IRQLine(4, false)

	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, width := range []uint32{2, 0} {
		if width == 0 {
			if n, _ := vm.CheckExtension(kvm.CapIOEventFDAnyLen); n == 0 {
				continue
			}
		}
		e := ioEvents{vm, width}
		if err := e.Watch(0x1_0000_3000, fd); err != nil {
			t.Fatalf("watch (width %d): %v", width, err)
		}
		if err := e.Unwatch(0x1_0000_3000, fd); err != nil {
			t.Fatalf("unwatch (width %d): %v", width, err)
		}
	}
}

func TestHVCConsole(t *testing.T) {
	for cmdline, want := range map[string]bool{
		"console=ttyS0":                     false,
		"console=ttyS0 console=hvc0":        true,
		"quiet console=hvc0,115200 panic=1": true,
		"console=hvc01":                     false,
		"hyperroot.console=hvc0":            false,
		"":                                  false,
	} {
		if got := hvcConsole(cmdline); got != want {
			t.Errorf("hvcConsole(%q) = %v, want %v", cmdline, got, want)
		}
	}
}

// irqchipVM is a VM with KVM's in-kernel irqchip on the host's /dev/kvm,
// closed with the test.
func irqchipVM(t *testing.T) (*kvm.System, *kvm.VM) {
	t.Helper()
	testenv.NeedKVM(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	return sys, vm
}
