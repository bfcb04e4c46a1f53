package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/pci"
)

// capChain builds a region info answer: a 32-byte struct vfio_region_info,
// then the capabilities at the offsets given, each linked to the next.
func capChain(caps ...[]byte) ([]byte, uint32) {
	buf := make([]byte, 32)
	first := uint32(0)
	prev := -1
	for _, c := range caps {
		off := len(buf)
		if prev >= 0 {
			binary.LittleEndian.PutUint32(buf[prev+4:], uint32(off))
		} else {
			first = uint32(off)
		}
		buf = append(buf, c...)
		prev = off
	}
	return buf, first
}

func sparseCap(areas ...Span) []byte {
	c := make([]byte, 16+16*len(areas))
	binary.LittleEndian.PutUint16(c, capSparseMMAP)
	binary.LittleEndian.PutUint16(c[2:], 1)
	binary.LittleEndian.PutUint32(c[8:], uint32(len(areas)))
	for i, a := range areas {
		binary.LittleEndian.PutUint64(c[16+16*i:], a.Off)
		binary.LittleEndian.PutUint64(c[24+16*i:], a.Size)
	}
	return c
}

func msixMappableCap() []byte {
	c := make([]byte, 8)
	binary.LittleEndian.PutUint16(c, capMSIXMappable)
	return c
}

func TestRegionCaps(t *testing.T) {
	info, first := capChain(msixMappableCap(), sparseCap(Span{0, 0x2000}, Span{0x3000, 0x1000}))
	areas, sparse, mappable, err := regionCaps(info, first)
	if err != nil || !sparse || !mappable || !slices.Equal(areas, []Span{{0, 0x2000}, {0x3000, 0x1000}}) {
		t.Errorf("chain of two: %v %v %v %v", areas, sparse, mappable, err)
	}
	if areas, sparse, _, err := regionCaps(make([]byte, 32), 0); err != nil || sparse || areas != nil {
		t.Errorf("no capabilities: %v %v %v", areas, sparse, err)
	}
	// A loop, a chain pointing outside, an area count past the end.
	loop, first := capChain(msixMappableCap())
	binary.LittleEndian.PutUint32(loop[first+4:], first)
	short, sfirst := capChain(sparseCap(Span{0, 0x1000}))
	binary.LittleEndian.PutUint32(short[sfirst+8:], 1000)
	for name, c := range map[string]struct {
		info  []byte
		first uint32
	}{"loop": {loop, first}, "outside": {make([]byte, 32), 40}, "areas": {short, sfirst}} {
		if _, _, _, err := regionCaps(c.info, c.first); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestDirectSpans(t *testing.T) {
	const page = 0x1000
	// QEMU's NVMe: BAR0 16 KiB, registers and doorbells in the first two
	// pages, the MSI-X table at 0x2000 (65 vectors), PBA at 0x3000.
	msix := []Span{{0x2000, 65 * 16}, {0x3000, 16}}
	for _, c := range []struct {
		name    string
		size    uint64
		areas   []Span
		trapped []Span
		want    []Span
	}{
		{"whole BAR mappable", 0x4000, []Span{{0, 0x4000}}, msix, []Span{{0, 0x2000}}},
		{"sparse around the table", 0x4000, []Span{{0, 0x2000}, {0x3000, 0x1000}}, msix, []Span{{0, 0x2000}}},
		{"table in the middle", 0x10000, []Span{{0, 0x10000}}, []Span{{0x8010, 0x20}}, []Span{{0, 0x8000}, {0x9000, 0x7000}}},
		{"unaligned area", 0x4000, []Span{{0x800, 0x2000}}, nil, []Span{{0x1000, 0x1000}}},
		{"area past the BAR", 0x4000, []Span{{0x3000, 0x5000}, {0x8000, 0x1000}}, nil, []Span{{0x3000, 0x1000}}},
		{"overlapping areas", 0x4000, []Span{{0, 0x2000}, {0x1000, 0x2000}}, nil, []Span{{0, 0x3000}}},
		{"huge area", 0x4000, []Span{{0x1000, ^uint64(0)}}, nil, []Span{{0x1000, 0x3000}}},
		{"all trapped", 0x1000, []Span{{0, 0x1000}}, []Span{{0, 1}}, nil},
	} {
		if got := directSpans(c.size, c.areas, c.trapped, page); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// FuzzRegionCaps: whatever the buffer, no panic, no hang, and the areas a
// chain yields are within what it could hold.
func FuzzRegionCaps(f *testing.F) {
	info, first := capChain(msixMappableCap(), sparseCap(Span{0, 0x2000}, Span{0x3000, 0x1000}))
	f.Add(info, first)
	f.Add(make([]byte, 32), uint32(0))
	f.Fuzz(func(t *testing.T, info []byte, first uint32) {
		areas, _, _, err := regionCaps(info, first)
		if err == nil && len(areas)*16 > len(info) {
			t.Fatalf("%d areas from %d bytes", len(areas), len(info))
		}
		directSpans(0x10000, areas, []Span{{0x2000, 0x100}}, 0x1000)
	})
}

// mappingDevice is fakeDevice whose BAR0 VFIO lets map whole (anonymous
// memory stands in for the device's pages).
type mappingDevice struct {
	*fakeDevice
	maps []Span
	// onConfig, when set, runs as the device's configuration space is
	// written.
	onConfig func()
}

func (d *mappingDevice) WriteRegion(i int, p []byte, off uint64) error {
	if i == configRegion && d.onConfig != nil {
		d.onConfig()
	}
	return d.fakeDevice.WriteRegion(i, p, off)
}

func (d *mappingDevice) Mappable(i int) ([]Span, error) {
	if i != 0 {
		return nil, nil
	}
	return []Span{{0, uint64(len(d.bar0))}}, nil
}

func (d *mappingDevice) Map(i int, s Span) ([]byte, error) {
	d.maps = append(d.maps, s)
	return unix.Mmap(-1, 0, int(s.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
}

// slotLog records what a device asks of the VM's memory slots.
type slotLog struct {
	next   uint32
	calls  []string
	refuse uint64 // a slot made at this address fails, as KVM refuses an overlap
}

func (l *slotLog) NewSlot() uint32 { l.next++; return 9 + l.next }
func (l *slotLog) SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error {
	l.calls = append(l.calls, fmt.Sprintf("slot %d gpa %#x size %#x", slot, gpa, size))
	if size != 0 && gpa == l.refuse {
		return errors.New("file exists")
	}
	return nil
}

// TestDirectBAR: the fake's BAR0 pages but the MSI-X table's (0x2000) and
// PBA's (0x3000) become slots that follow the BAR wherever the guest puts
// it, and leave with Close.
// newDirectPCI is a device whose BAR 0 VFIO lets the VMM map, behind a
// PCI model that maps it into the guest's slots.
func newDirectPCI(t *testing.T) (*mappingDevice, *slotLog, *PCI) {
	t.Helper()
	d := &mappingDevice{fakeDevice: newFakeDevice()}
	slots := &slotLog{}
	p, err := NewPCI(d, "0000:00:01.1", PCIOptions{Router: nopRouter{},
		EventFD: func(v int) (int, error) { return 100 + v, nil }, Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	return d, slots, p
}

func TestDirectBAR(t *testing.T) {
	d, slots, p := newDirectPCI(t)
	if want := []Span{{0, 0x2000}}; !slices.Equal(d.maps, want) {
		t.Fatalf("mapped %v, want %v", d.maps, want)
	}
	if p.Direct(0) != 0x2000 {
		t.Errorf("Direct(0) = %#x, want 0x2000", p.Direct(0))
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.MoveBAR(0, 0, 0xe000_0000))
	must(p.MoveBAR(0, 0xe000_0000, 0xd000_0000))
	must(p.MoveBAR(0, 0xd000_0000, 0)) // decoding off
	must(p.MoveBAR(0, 0, 0xc000_0000))
	must(p.MoveBAR(3, 0, 0xb000_0000)) // a BAR it lacks: nothing
	// KVM refuses the slot where the guest puts the BAR next (over
	// another): the piece stays trapped, and goes in at the move after.
	slots.refuse = 0xa000_0000
	if err := p.MoveBAR(0, 0xc000_0000, 0xa000_0000); err == nil {
		t.Error("a refused slot did not fail the move")
	}
	if p.direct[0][0].gpa != 0 {
		t.Errorf("a refused piece is mapped at %#x", p.direct[0][0].gpa)
	}
	must(p.MoveBAR(0, 0xa000_0000, 0x9000_0000))
	must(p.Close())
	want := []string{
		"slot 10 gpa 0xe0000000 size 0x2000",
		"slot 10 gpa 0xe0000000 size 0x0", "slot 10 gpa 0xd0000000 size 0x2000",
		"slot 10 gpa 0xd0000000 size 0x0",
		"slot 10 gpa 0xc0000000 size 0x2000",
		"slot 10 gpa 0xc0000000 size 0x0", "slot 10 gpa 0xa0000000 size 0x2000", // refused
		"slot 10 gpa 0x90000000 size 0x2000",
		"slot 10 gpa 0x90000000 size 0x0",
	}
	if !slices.Equal(slots.calls, want) {
		t.Errorf("slot calls:\n%s\nwant:\n%s", strings.Join(slots.calls, "\n"), strings.Join(want, "\n"))
	}
	// The MSI-X table is still the model's.
	var b [4]byte
	p.ReadBAR(0, 0x200c, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 1 { // vector 0 masked at reset
		t.Errorf("MSI-X vector 0 control read %#x, want masked (1)", b)
	}
}

// TestDecodingOffUnmapsFirst: when the guest turns memory decoding off,
// the BAR's slots are deleted before VFIO hears of it (VFIO then takes the
// device's pages from the VMM's mappings, and a vCPU reaching one through
// a slot left in place would fault the VMM), and the bus's move that
// follows finds nothing left to delete.
func TestDecodingOffUnmapsFirst(t *testing.T) {
	d, slots, p := newDirectPCI(t)
	var cmd [2]byte
	binary.LittleEndian.PutUint16(cmd[:], pci.CommandMemory|pci.CommandBusMaster)
	p.WriteConfig(pci.RegCommand, cmd[:])
	if err := p.MoveBAR(0, 0, 0x9000_0000); err != nil { // the bus, after decoding on
		t.Fatal(err)
	}
	slots.calls = nil
	told := false
	d.onConfig = func() {
		told = true
		if len(slots.calls) != 1 || slots.calls[0] != "slot 10 gpa 0x90000000 size 0x0" {
			t.Errorf("VFIO told decoding is off with the slot calls so far %q", slots.calls)
		}
	}
	binary.LittleEndian.PutUint16(cmd[:], pci.CommandBusMaster)
	p.WriteConfig(pci.RegCommand, cmd[:])
	if !told {
		t.Fatal("the command register never reached VFIO")
	}
	d.onConfig = nil
	if err := p.MoveBAR(0, 0x9000_0000, 0); err != nil { // the bus, after decoding off
		t.Fatal(err)
	}
	if len(slots.calls) != 1 {
		t.Errorf("slot calls %q: the bus's move deleted again", slots.calls)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
