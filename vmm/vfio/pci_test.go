package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/pci"
)

// fakeDevice is an NVMe-like function: BAR0 (16 KiB, 64-bit) with its
// MSI-X table at 0x2000 and PBA at 0x3000, and a capability list of PM,
// MSI-X and PCI Express.
type fakeDevice struct {
	cfg    [256]byte
	bar0   [16 << 10]byte
	writes []string // configuration space writes
	msix   [][]int  // SetMSIX calls
	// outside counts region accesses past a region's end or to a region
	// the device lacks: the model must stop those itself.
	outside int
}

func newFakeDevice() *fakeDevice {
	d := &fakeDevice{}
	le := binary.LittleEndian
	le.PutUint16(d.cfg[0:], 0x1b36)
	le.PutUint16(d.cfg[2:], 0x0010)
	d.cfg[pci.RegClass], d.cfg[pci.RegClass+1], d.cfg[pci.RegClass+2] = 0x02, 0x08, 0x01
	le.PutUint16(d.cfg[pci.RegStatus:], pci.StatusCapList)
	le.PutUint32(d.cfg[pci.RegBAR0:], 0xfebf4004) // 64-bit memory
	d.cfg[pci.RegCapabilities] = 0x40
	d.cfg[0x40], d.cfg[0x41] = 0x01, 0x60 // power management
	d.cfg[0x60], d.cfg[0x61] = 0x11, 0x80 // MSI-X: 4 vectors
	le.PutUint16(d.cfg[0x62:], 3)
	le.PutUint32(d.cfg[0x64:], 0x2000|0)
	le.PutUint32(d.cfg[0x68:], 0x3000|0)
	d.cfg[0x80], d.cfg[0x81] = 0x10, 0x00 // PCI Express
	return d
}

func (d *fakeDevice) Region(i int) Region {
	switch i {
	case 0:
		return Region{Size: uint64(len(d.bar0)), Readable: true, Writable: true}
	case configRegion:
		return Region{Size: 256, Readable: true, Writable: true}
	}
	return Region{}
}

func (d *fakeDevice) buf(i int) []byte {
	if i == configRegion {
		return d.cfg[:]
	}
	return d.bar0[:]
}

func (d *fakeDevice) ReadRegion(i int, p []byte, off uint64) error {
	if d.Region(i).Size == 0 || off+uint64(len(p)) > d.Region(i).Size {
		d.outside++
		return errors.New("out of the region")
	}
	copy(p, d.buf(i)[off:])
	return nil
}

func (d *fakeDevice) WriteRegion(i int, p []byte, off uint64) error {
	if d.Region(i).Size == 0 || off+uint64(len(p)) > d.Region(i).Size {
		d.outside++
		return errors.New("out of the region")
	}
	copy(d.buf(i)[off:], p)
	if i == configRegion {
		d.writes = append(d.writes, "cfg")
	}
	return nil
}

func (d *fakeDevice) SetMSIX(fds []int) error {
	d.msix = append(d.msix, slices.Clone(fds))
	return nil
}

// nopRouter routes nothing.
type nopRouter struct{}

func (nopRouter) Route(int, uint64, uint32, bool) error { return nil }
func (nopRouter) Signal(int) error                      { return nil }

func newTestPCI(t testing.TB, d *fakeDevice) *PCI {
	p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func cfg32(p *PCI, reg int) uint32 {
	var b [4]byte
	p.ReadConfig(reg, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func TestPCIConfig(t *testing.T) {
	d := newFakeDevice()
	p := newTestPCI(t, d)
	if got := cfg32(p, 0); got != 0x00101b36 {
		t.Errorf("vendor/device %#x", got)
	}
	if got := cfg32(p, 8) >> 8; got != 0x010802 {
		t.Errorf("class %#x", got)
	}
	// BAR sizing: all ones reads back the size mask of 16 KiB, 64-bit.
	le := binary.LittleEndian
	p.WriteConfig(pci.RegBAR0, le.AppendUint32(nil, 0xffffffff))
	p.WriteConfig(pci.RegBAR0+4, le.AppendUint32(nil, 0xffffffff))
	if lo, hi := cfg32(p, pci.RegBAR0), cfg32(p, pci.RegBAR0+4); lo != 0xffffc004 || hi != 0xffffffff {
		t.Errorf("BAR0 sized as %#x %#x, want 0xffffc004 0xffffffff", lo, hi)
	}
	// The host's address is not shown, nor an option ROM or INTx.
	p.WriteConfig(pci.RegBAR0, le.AppendUint32(nil, 0xe0000000))
	p.WriteConfig(pci.RegBAR0+4, le.AppendUint32(nil, 0))
	if got := cfg32(p, pci.RegBAR0); got != 0xe0000004 {
		t.Errorf("BAR0 reads %#x after the guest wrote 0xe0000000", got)
	}
	if cfg32(p, pci.RegROM) != 0 || cfg32(p, pci.RegIntLine)>>8&0xff != 0 {
		t.Error("an option ROM or an interrupt pin is shown")
	}
	// The capability list: MSI-X only, with the device's table and PBA.
	off := int(cfg32(p, pci.RegCapabilities) & 0xff)
	var c [12]byte
	p.ReadConfig(off, c[:])
	if c[0] != capMSIX || c[1] != 0 {
		t.Fatalf("capability list starts with %#x, next %#x: want MSI-X alone", c[0], c[1])
	}
	if n, table, pba := le.Uint16(c[2:])&0x7ff+1, le.Uint32(c[4:]), le.Uint32(c[8:]); n != 4 || table != 0x2000 || pba != 0x3000 {
		t.Errorf("MSI-X: %d vectors, table %#x, PBA %#x", n, table, pba)
	}
	if cfg32(p, 0x100) != 0 {
		t.Error("extended capabilities are shown")
	}
	// Memory decoding and bus mastering reach the device, INTx stays off.
	p.WriteConfig(pci.RegCommand, le.AppendUint16(nil, pci.CommandMemory|pci.CommandBusMaster))
	if got := le.Uint16(d.cfg[pci.RegCommand:]); got != pci.CommandMemory|pci.CommandBusMaster|pci.CommandINTxDisable {
		t.Errorf("the device's command register is %#x", got)
	}
}

func TestPCIBAR(t *testing.T) {
	d := newFakeDevice()
	p := newTestPCI(t, d)
	p.WriteBAR(0, 0x14, []byte{1, 0, 0x46, 0})
	if got := binary.LittleEndian.Uint32(d.bar0[0x14:]); got != 0x460001 {
		t.Errorf("a register write reached the device as %#x", got)
	}
	d.bar0[0x1c] = 1
	var b [4]byte
	p.ReadBAR(0, 0x1c, b[:])
	if b[0] != 1 {
		t.Error("a register read does not come from the device")
	}
	// The MSI-X table is the VMM's: the device's stays untouched.
	p.WriteBAR(0, 0x2000, []byte{0xef, 0xbe, 0xad, 0xde})
	if d.bar0[0x2000] != 0 {
		t.Error("a guest's MSI-X table write reached the device")
	}
	p.ReadBAR(0, 0x2000, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0xdeadbeef {
		t.Error("the MSI-X table does not read back what the guest wrote")
	}
	// Outside the BAR: all ones, nothing reaches the device.
	p.ReadBAR(0, 16<<10-2, b[:])
	if b != [4]byte{0xff, 0xff, 0xff, 0xff} {
		t.Errorf("a read across the BAR's end gave %x", b)
	}
	p.ReadBAR(3, 0, b[:])
	p.WriteBAR(5, 0, b[:])
	p.WriteBAR(0, 1<<63, b[:])
	if d.outside != 0 {
		t.Errorf("%d accesses outside the device's regions reached it", d.outside)
	}
	// The PBA is the VMM's too; what follows it is the device's again.
	p.WriteBAR(0, 0x3000, []byte{0xff, 0xff, 0xff, 0xff})
	p.WriteBAR(0, 0x3008, []byte{0x5a, 0, 0, 0})
	if d.bar0[0x3000] != 0 || d.bar0[0x3008] != 0x5a {
		t.Errorf("PBA byte %#x, byte after it %#x: want 0 and 0x5a", d.bar0[0x3000], d.bar0[0x3008])
	}
	// An 8-byte access is forwarded whole.
	p.WriteBAR(0, 0x28, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if got := binary.LittleEndian.Uint64(d.bar0[0x28:]); got != 0x0807060504030201 {
		t.Errorf("an 8-byte write reached the device as %#x", got)
	}
}

// TestPCICommand: the command register the device gets follows the
// guest's memory decoding and bus mastering, INTx always disabled, and
// only when it changes.
func TestPCICommand(t *testing.T) {
	d := newFakeDevice()
	p := newTestPCI(t, d)
	le := binary.LittleEndian
	for _, c := range []struct {
		write, device uint16
		writes        int
	}{
		{pci.CommandMemory, pci.CommandMemory | pci.CommandINTxDisable, 1},
		{pci.CommandMemory | pci.CommandIO | 1<<8, pci.CommandMemory | pci.CommandINTxDisable, 1}, // no change for the device
		{pci.CommandMemory | pci.CommandBusMaster, pci.CommandMemory | pci.CommandBusMaster | pci.CommandINTxDisable, 2},
		{pci.CommandMemory, pci.CommandMemory | pci.CommandINTxDisable, 3},
		{0, pci.CommandINTxDisable, 4},
	} {
		p.WriteConfig(pci.RegCommand, le.AppendUint16(nil, c.write))
		if got := le.Uint16(d.cfg[pci.RegCommand:]); got != c.device || len(d.writes) != c.writes {
			t.Errorf("guest wrote %#x: the device's command register is %#x after %d writes, want %#x after %d",
				c.write, got, len(d.writes), c.device, c.writes)
		}
	}
	// The high byte alone (INTx disable) and the status register next to
	// it change nothing on the device.
	p.WriteConfig(pci.RegCommand+1, []byte{0})
	p.WriteConfig(pci.RegStatus, []byte{0xff, 0xff})
	if len(d.writes) != 4 {
		t.Errorf("%d configuration writes reached the device, want 4", len(d.writes))
	}
}

func TestPCIMSIX(t *testing.T) {
	d := newFakeDevice()
	p := newTestPCI(t, d)
	off := int(cfg32(p, pci.RegCapabilities) & 0xff)
	p.WriteConfig(off+3, []byte{0x80})       // enable
	p.WriteConfig(off+3, []byte{0xc0})       // function mask: no change to the device
	p.WriteConfig(off+3, []byte{0x00})       // disable
	p.WriteConfig(off+2, []byte{0xff, 0x80}) // enable again, with a 2-byte write
	want := [][]int{{100, 101, 102, 103}, {}, {100, 101, 102, 103}}
	if !slices.EqualFunc(d.msix, want, slices.Equal) {
		t.Errorf("SetMSIX calls %v, want %v", d.msix, want)
	}
}

// TestPCIMSIXEventFDFails: a vector without an eventfd leaves the device's
// MSI-X off and says so; the guest's next enable tries again.
func TestPCIMSIXEventFDFails(t *testing.T) {
	d := newFakeDevice()
	var errs []error
	broken := true
	p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{}, Errors: func(err error) { errs = append(errs, err) },
		EventFD: func(v int) (int, error) {
			if broken && v == 2 {
				return -1, errors.New("no eventfd")
			}
			return 100 + v, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	off := int(cfg32(p, pci.RegCapabilities) & 0xff)
	p.WriteConfig(off+3, []byte{0x80})
	if len(d.msix) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "0000:00:01.1") {
		t.Fatalf("SetMSIX calls %v, errors %v: want none and one naming the device", d.msix, errs)
	}
	broken = false
	p.WriteConfig(off+3, []byte{0x00})
	p.WriteConfig(off+3, []byte{0x80})
	if len(d.msix) != 1 || len(d.msix[0]) != 4 {
		t.Errorf("SetMSIX calls %v after the eventfds came back", d.msix)
	}
}

func TestNewPCIRefuses(t *testing.T) {
	for name, spoil := range map[string]func(d *fakeDevice){
		"no MSI-X":        func(d *fakeDevice) { d.cfg[0x60] = 0x05 },
		"a looping list":  func(d *fakeDevice) { d.cfg[0x41], d.cfg[0x61] = 0x60, 0x40; d.cfg[0x60] = 0x05 },
		"a bridge":        func(d *fakeDevice) { d.cfg[pci.RegHeaderType] = 1 },
		"table in no BAR": func(d *fakeDevice) { binary.LittleEndian.PutUint32(d.cfg[0x64:], 0x2000|2) },
		"I/O BARs only":   func(d *fakeDevice) { binary.LittleEndian.PutUint32(d.cfg[pci.RegBAR0:], 0xc001) },
		"table BIR 7":     func(d *fakeDevice) { binary.LittleEndian.PutUint32(d.cfg[0x64:], 0x2000|7) },
		"PBA on table":    func(d *fakeDevice) { binary.LittleEndian.PutUint32(d.cfg[0x68:], 0x2000) },
	} {
		d := newFakeDevice()
		spoil(d)
		if _, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{}, EventFD: func(int) (int, error) { return 0, nil }}); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "0000:00:01.1") {
			t.Errorf("%s: %v does not name the device", name, err)
		}
	}
	if _, err := NewPCI(newFakeDevice(), "0000:00:01.1", PCIOptions{Router: nopRouter{}}); err == nil {
		t.Error("accepted without the vectors' eventfds")
	}
}

// FuzzConfig: whatever a device's configuration space holds and whatever a
// guest then does with config and BAR accesses, nothing panics.
func FuzzConfig(f *testing.F) {
	f.Add(newFakeDevice().cfg[:], []byte{4, 2, 6, 0, 0x63, 1, 0x80, 0x10, 4, 0xff})
	f.Fuzz(func(t *testing.T, cfg []byte, ops []byte) {
		d := newFakeDevice()
		copy(d.cfg[:], cfg)
		p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{},
			EventFD: func(v int) (int, error) { return v, nil }})
		if err != nil {
			return
		}
		checkShown(t, p)
		for len(ops) >= 4 {
			reg, n, v := int(ops[1])|int(ops[2]&0xf)<<8, int(ops[3]%8)+1, ops[3]
			data := make([]byte, n)
			for i := range data {
				data[i] = v
			}
			switch ops[0] % 4 {
			case 0:
				// The extended space reads as zeros; bytes past its end, as
				// on the bus, as ones.
				p.ReadConfig(reg, data[:min(n, 4)])
				for i, v := range data[:min(n, 4)] {
					if r := reg + i; r >= 0x100 && (r < pci.ConfigSize && v != 0 || r >= pci.ConfigSize && v != 0xff) {
						t.Errorf("configuration space at %#x reads %#x", r, v)
					}
				}
			case 1:
				p.WriteConfig(reg, data[:min(n, 4)])
			case 2:
				p.ReadBAR(int(ops[0]/4%7), uint64(reg)<<4, data)
			case 3:
				p.WriteBAR(int(ops[0]/4%7), uint64(reg)<<4, data)
			}
			ops = ops[4:]
		}
		if d.outside != 0 {
			t.Errorf("%d accesses outside the device's regions reached it", d.outside)
		}
		for _, fds := range d.msix {
			if len(fds) != 0 && len(fds) != p.Vectors() {
				t.Errorf("SetMSIX with %d eventfds for %d vectors", len(fds), p.Vectors())
			}
		}
		checkShown(t, p)
	})
}

// checkShown checks what the guest may see whatever it did: no option ROM,
// no interrupt pin, no extended capabilities, and a capability list of
// MSI-X alone. (FuzzConfig checks its reads of the extended space too.)
func checkShown(t *testing.T, p *PCI) {
	t.Helper()
	if cfg32(p, pci.RegROM) != 0 || cfg32(p, pci.RegIntLine)>>8&0xff != 0 {
		t.Error("an option ROM or an interrupt pin is shown")
	}
	if v := cfg32(p, 0x100); v != 0 {
		t.Errorf("extended capability header %#x", v)
	}
	off := int(cfg32(p, pci.RegCapabilities) & 0xff)
	if off < 0x40 || cfg32(p, off)&0xffff != capMSIX {
		t.Errorf("the capability list is %#x at %#x, want MSI-X alone", cfg32(p, off)&0xffff, off)
	}
}

// TestBARAccessAllocs: a forwarded register access, the guest's doorbell
// writes among them, allocates nothing.
func TestBARAccessAllocs(t *testing.T) {
	p := newTestPCI(t, newFakeDevice())
	var b [4]byte
	if n := testing.AllocsPerRun(1000, func() {
		p.WriteBAR(0, 0x1000, b[:])
		p.ReadBAR(0, 0x1c, b[:])
		p.WriteBAR(0, 0x2000, b[:]) // the MSI-X table
	}); n != 0 {
		t.Errorf("%v allocations per access", n)
	}
}

// BenchmarkBARWrite: the model's share of a forwarded doorbell write (the
// fake device's copy in place of the kernel's pwrite).
func BenchmarkBARWrite(b *testing.B) {
	p := newTestPCI(b, newFakeDevice())
	var v [4]byte
	b.ReportAllocs()
	for b.Loop() {
		p.WriteBAR(0, 0x1000, v[:])
	}
}

// intxFake is fakeDevice with an interrupt pin VFIO can route; calls
// records its interrupt changes in order.
type intxFake struct {
	*fakeDevice
	calls []string
}

func (d *intxFake) HasINTx() bool { return true }
func (d *intxFake) SetINTx(trigger, unmask int) error {
	d.calls = append(d.calls, fmt.Sprintf("intx %d %d", trigger, unmask))
	return nil
}
func (d *intxFake) SetMSIX(fds []int) error {
	d.calls = append(d.calls, fmt.Sprintf("msix %d", len(fds)))
	return d.fakeDevice.SetMSIX(fds)
}

// TestPCIINTx: a device with a pin shows INTA#, has its INTx enabled from
// the start, disabled while the guest has MSI-X on (VFIO allows one at a
// time) and back after; the guest's INTx-disable bit reaches it. Without
// the machine's eventfds, or without a pin, no pin is shown.
func TestPCIINTx(t *testing.T) {
	d := &intxFake{fakeDevice: newFakeDevice()}
	d.cfg[pci.RegIntPin] = 1
	p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }, INTx: &INTx{Trigger: 7, Unmask: 8}})
	if err != nil {
		t.Fatal(err)
	}
	var pin [1]byte
	if p.ReadConfig(pci.RegIntPin, pin[:]); pin[0] != 1 || !p.INTx() {
		t.Errorf("interrupt pin %d, INTx() %v: want 1, true", pin[0], p.INTx())
	}
	off := int(cfg32(p, pci.RegCapabilities) & 0xff)
	p.WriteConfig(off+3, []byte{0x80}) // MSI-X on
	p.WriteConfig(off+3, []byte{0x00}) // and off
	want := []string{"intx 7 8", "intx -1 -1", "msix 4", "msix 0", "intx 7 8"}
	if !slices.Equal(d.calls, want) {
		t.Errorf("interrupt calls %v, want %v", d.calls, want)
	}
	p.WriteConfig(pci.RegCommand, []byte{0x06, 0x00}) // MEM, BME, INTx enabled
	if got := binary.LittleEndian.Uint16(d.cfg[pci.RegCommand:]); got != 0x0006 {
		t.Errorf("device command %#04x, want 0x0006 (INTx left enabled)", got)
	}
	p.WriteConfig(pci.RegCommand, []byte{0x06, 0x04})
	if got := binary.LittleEndian.Uint16(d.cfg[pci.RegCommand:]); got != 0x0406 {
		t.Errorf("device command %#04x, want 0x0406 (INTx disabled by the guest)", got)
	}
	for name, o := range map[string]*INTx{"no eventfds": nil, "no pin": {Trigger: 7, Unmask: 8}} {
		d := &intxFake{fakeDevice: newFakeDevice()}
		if name != "no pin" {
			d.cfg[pci.RegIntPin] = 1
		}
		p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{},
			EventFD: func(v int) (int, error) { return 100 + v, nil }, INTx: o})
		if err != nil {
			t.Fatal(err)
		}
		if p.ReadConfig(pci.RegIntPin, pin[:]); pin[0] != 0 || p.INTx() || len(d.calls) != 0 {
			t.Errorf("%s: pin %d, INTx() %v, calls %v: want none", name, pin[0], p.INTx(), d.calls)
		}
	}
}

// msiFake is fakeDevice with MSI (4 vectors, 64-bit) where its MSI-X was,
// and INTx; calls records its interrupt changes in order.
type msiFake struct {
	intxFake
	vfioVectors int
}

func newMSIFake(vfioVectors int) *msiFake {
	d := &msiFake{intxFake: intxFake{fakeDevice: newFakeDevice()}, vfioVectors: vfioVectors}
	d.cfg[0x60] = pci.CapMSI
	binary.LittleEndian.PutUint16(d.cfg[0x62:], 2<<1|1<<7)
	d.cfg[pci.RegIntPin] = 1
	return d
}

func (d *msiFake) MSIVectors() int { return d.vfioVectors }
func (d *msiFake) SetMSI(fds []int) error {
	d.calls = append(d.calls, fmt.Sprintf("msi %v", fds))
	return nil
}

// TestPCIMSI: a device with MSI and no MSI-X shows an MSI capability with
// as many vectors as both it and VFIO have; the guest enabling 2 vectors
// enables the device's MSI with their two eventfds (INTx off first),
// enabling 4 goes through disabled (VFIO's rule), disabling brings INTx
// back. Its whole BAR is mapped: no MSI-X table to trap.
func TestPCIMSI(t *testing.T) {
	d := newMSIFake(4)
	p, err := NewPCI(d, "0000:00:04.0", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }, INTx: &INTx{Trigger: 7, Unmask: 8}})
	if err != nil {
		t.Fatal(err)
	}
	off, ok := findCapability(configBytes(p), pci.CapMSI)
	if !ok || !p.MSI() || p.Vectors() != 4 {
		t.Fatalf("MSI capability shown: %v, MSI() %v, Vectors() %d", ok, p.MSI(), p.Vectors())
	}
	if _, ok := findCapability(configBytes(p), capMSIX); ok {
		t.Error("an MSI-X capability is shown")
	}
	p.WriteConfig(off+2, []byte{0x01 | 1<<4}) // enable, 2 vectors
	p.WriteConfig(off+2, []byte{0x01 | 2<<4}) // 4 vectors
	p.WriteConfig(off+2, []byte{0x00})        // off
	want := []string{"intx 7 8", "intx -1 -1", "msi [100 101]", "msi []", "intx -1 -1", "msi [100 101 102 103]", "msi []", "intx 7 8"}
	if !slices.Equal(d.calls, want) {
		t.Errorf("interrupt calls:\n%v\nwant:\n%v", d.calls, want)
	}
	// VFIO routes fewer than the device asks for: the guest is offered
	// what VFIO has.
	if p, err := NewPCI(newMSIFake(2), "0000:00:04.0", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }}); err != nil || p.Vectors() != 2 {
		t.Errorf("VFIO with 2 vectors: %v vectors, %v", p.Vectors(), err)
	}
	// No MSI at all and no INTx: refused, saying why.
	none := newMSIFake(0)
	if _, err := NewPCI(none, "0000:00:04.0", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }}); err == nil || !strings.Contains(err.Error(), "cannot interrupt") {
		t.Errorf("a device that cannot interrupt: %v", err)
	}
}

// configBytes is the configuration space the guest reads.
func configBytes(p *PCI) []byte {
	b := make([]byte, 256)
	p.ReadConfig(0, b)
	return b
}
