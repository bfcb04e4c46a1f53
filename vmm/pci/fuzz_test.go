package pci

import (
	"bytes"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// msixDev is a device with an MSI-X capability in a 64-bit BAR, as a
// virtio transport will have.
type msixDev struct {
	*ConfigSpace
	msix *MSIX
}

func newMSIXDev(t testing.TB) *msixDev {
	m, _ := newMSIX(t, 5)
	c, err := NewConfigSpace(testID(), BAR{Index: tableBAR, Size: 0x4000, Is64: true}, BAR{Index: 0, Size: 0x1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddCapability(m); err != nil {
		t.Fatal(err)
	}
	return &msixDev{c, m}
}

func (d *msixDev) MoveBAR(int, uint64, uint64) error { return nil }
func (d *msixDev) ReadBAR(i int, off uint64, data []byte) {
	if !d.msix.ReadBAR(i, off, data) {
		allOnes(data)
	}
}
func (d *msixDev) WriteBAR(i int, off uint64, data []byte) { d.msix.WriteBAR(i, off, data) }

// msiDev is a device with an MSI capability (4 vectors), as a
// passed-through device without MSI-X shows (vmm/vfio).
type msiDev struct{ *ConfigSpace }

func newMSIDev(t testing.TB) *msiDev {
	m, err := NewMSI(MSIOptions{Vectors: 4, Router: &fakeRouter{}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConfigSpace(testID(), BAR{Index: 0, Size: 0x1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddCapability(m); err != nil {
		t.Fatal(err)
	}
	return &msiDev{c}
}

func (d *msiDev) MoveBAR(int, uint64, uint64) error      { return nil }
func (d *msiDev) ReadBAR(i int, off uint64, data []byte) { allOnes(data) }
func (d *msiDev) WriteBAR(int, uint64, []byte)           {}

// op is one guest access decoded from fuzz input: 1 byte kind and width,
// 4 bytes offset, 8 bytes data.
const opSize = 13

// FuzzConfigAccess drives conf1, ECAM and the BAR windows with arbitrary
// accesses (a guest reprogramming BARs, MSI-X, MSI and the command
// register at random) and checks that nothing panics and the routing stays sane:
// sorted, non-overlapping, inside the windows.
func FuzzConfigAccess(f *testing.F) {
	seed := func(ops ...[]byte) []byte {
		var s []byte
		for _, o := range ops {
			s = append(s, o...)
		}
		return s
	}
	op := func(kind, width byte, off uint32, data uint64) []byte {
		b := []byte{kind | width<<3}
		b = le.AppendUint32(b, off)
		return le.AppendUint64(b, data)
	}
	f.Add(seed(op(1, 2, 0, uint64(confAddr(0, 1, 0, 0x18))), op(1, 2, 4, 0xFFFF_FFFF), op(0, 2, 4, 0)))
	f.Add(seed(op(3, 2, 1<<15|0x04, 0), op(3, 2, 1<<15|0x10, 0xD000_0000), op(3, 1, 1<<15|0x04, 2), op(4, 2, 0x1000_0000, 0)))
	f.Add(seed(op(3, 2, 1<<15|0x40, 0x8000_0000), op(5, 2, 0x10_0000, 0xFEE0_0000), op(5, 2, 0x10_000C, 0)))
	f.Add(seed(op(1, 0, 1, 6), op(0, 3, 5, 0), op(2, 3, 0xFFF_FFFC, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, _ := newBus(t)
		b.Add(newTestDev(t, BAR{Index: 0, Size: 0x1000}))
		b.Add(newMSIXDev(t))
		b.Add(newMSIDev(t))
		ws := b.Windows()
		for ; len(in) >= opSize; in = in[opSize:] {
			kind, width := in[0]%6, 1<<(in[0]>>3&3)
			off := uint64(le.Uint32(in[1:]))
			data := le.AppendUint64(nil, le.Uint64(in[5:]))[:width]
			switch kind {
			case 0, 1:
				off %= layout.PCIConfAddr + Conf1Size
				if kind == 0 {
					b.Conf1().Read(off, data)
				} else {
					b.Conf1().Write(off, data)
				}
			case 2, 3:
				off %= layout.ECAMSize
				if kind == 2 {
					b.ECAM().Read(off, data)
				} else {
					b.ECAM().Write(off, data)
				}
			case 4, 5:
				w := ws[int(off>>31)%len(ws)]
				off = off & 0x7FFF_FFFF % w.Size
				if kind == 4 {
					w.Device.Read(off, data)
				} else {
					w.Device.Write(off, data)
				}
			}
		}
		rs := *b.routes.Load()
		for i, r := range rs {
			if r.end <= r.start || !b.inWindow(r.start, r.end-r.start) {
				t.Fatalf("route %#x-%#x outside the windows", r.start, r.end)
			}
			if i > 0 && r.start < rs[i-1].end {
				t.Fatalf("routes overlap: %#x-%#x and %#x-%#x", rs[i-1].start, rs[i-1].end, r.start, r.end)
			}
		}
	})
}

// msixModel is what a guest that made the accesses of FuzzMSIX expects,
// worked out from the PCI spec without looking inside MSIX: the table bytes
// it wrote, the enable and function mask bits, and which vectors it was
// told of by the router (route and signal calls) as opposed to what the
// capability keeps for itself, so a bug in MSIX's own bookkeeping (a
// missed Route, a lost or spurious Signal) is seen.
type msixModel struct {
	vectors      int
	table        []byte
	enable, mask bool
	pending      []bool
	signals      []int // deliveries the guest is owed
	wasMasked    []bool
}

func newMSIXModel(vectors int) *msixModel {
	mm := &msixModel{vectors: vectors, table: make([]byte, 16*vectors), pending: make([]bool, vectors),
		signals: make([]int, vectors), wasMasked: make([]bool, vectors)}
	for v := range vectors {
		mm.table[16*v+12] = 1 // every vector starts masked
		mm.wasMasked[v] = true
	}
	return mm
}

func (mm *msixModel) masked(v int) bool {
	return !mm.enable || mm.mask || mm.table[16*v+12]&1 != 0
}

func (mm *msixModel) msg(v int) (uint64, uint32) {
	return le.Uint64(mm.table[16*v:]), le.Uint32(mm.table[16*v+8:])
}

// settle delivers what unmasking owes: a pending vector that is now
// unmasked is signalled once and leaves the PBA.
func (mm *msixModel) settle() {
	for v := range mm.vectors {
		m := mm.masked(v)
		if !m && mm.pending[v] {
			mm.pending[v] = false
			mm.signals[v]++
		}
		mm.wasMasked[v] = m
	}
}

// writeTable applies a guest write of BAR bar: bytes wholly inside the
// table land there (vector control keeps only its mask bit); anything
// else changes nothing the guest can see.
func (mm *msixModel) writeTable(bar int, off uint64, data []byte) {
	if bar != tableBAR || off < tableOff || off+uint64(len(data)) > tableOff+uint64(len(mm.table)) {
		return
	}
	t := int(off - tableOff)
	for i, b := range data {
		j := t + i
		switch j % 16 {
		case 12:
			b &= 1
		case 13, 14, 15:
			b = 0
		}
		mm.table[j] = b
	}
}

// modelRouter records what the MSIX told the machine.
type modelRouter struct {
	t       *testing.T
	vectors int
	routes  []msiState
	signals []int
}

func (r *modelRouter) Route(v int, addr uint64, data uint32, masked bool) error {
	if v < 0 || v >= r.vectors {
		r.t.Fatalf("Route of vector %d, only %d allocated", v, r.vectors)
	}
	r.routes[v] = msiState{addr: addr, data: data, masked: masked}
	return nil
}

func (r *modelRouter) Signal(v int) error {
	if v < 0 || v >= r.vectors {
		r.t.Fatalf("Signal of vector %d, only %d allocated", v, r.vectors)
	}
	if r.routes[v].masked {
		r.t.Fatalf("Signal of vector %d, which the router last saw masked", v)
	}
	r.signals[v]++
	return nil
}

// FuzzMSIX drives the MSI-X table, PBA and capability with arbitrary
// accesses and notifications, and checks after every access what the
// guest relies on against msixModel: no panic, the router's view of every
// vector (message and mask) is what the guest programmed, each Notify is
// delivered once (now, or when unmasked) and never while masked, the table
// and PBA read back as written and raised.
func FuzzMSIX(f *testing.F) {
	f.Add([]byte{0, 0x10, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Add([]byte{1, 0x0C, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0x10, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 3, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	// Enable, program vector 1 unmasked, raise it; mask it, raise it,
	// unmask it: two deliveries.
	f.Add([]byte{
		0x73, 0x10, 0x10, 0x00, 0x30, 0xE0, 0xFE, 0, 0, 0, 0, // table[1] address (8 bytes at 0x1010)
		0x73, 0x18, 0x10, 0x41, 0, 0, 0, 0, 0, 0, 0, // data, control 0 (8 bytes at 0x1018)
		0x02, 3, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, // enable
		0x04, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, // notify 1
		0x01, 0x1C, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, // mask 1
		0x04, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, // notify 1: pending
		0x01, 0x1C, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, // unmask 1: delivered
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		const vectors = 67
		r := &modelRouter{t: t, vectors: vectors, routes: make([]msiState, vectors), signals: make([]int, vectors)}
		for v := range r.routes {
			r.routes[v].masked = true
		}
		m, err := NewMSIX(MSIXOptions{Vectors: vectors, TableBAR: tableBAR, TableOffset: tableOff,
			PBABAR: tableBAR, PBAOffset: pbaOff, Router: r})
		if err != nil {
			t.Fatal(err)
		}
		mm := newMSIXModel(vectors)
		const step = 11 // kind, 2 bytes offset, 8 bytes data
		for ; len(in) >= step; in = in[step:] {
			width := 1 + int(in[0]>>4)%8
			off := uint64(le.Uint16(in[1:]))
			data := append([]byte(nil), in[3:3+width]...)
			switch in[0] % 6 {
			case 0:
				m.ReadBAR(tableBAR, off%0x2000, data)
			case 1:
				m.WriteBAR(tableBAR, off%0x2000, data)
				mm.writeTable(tableBAR, off%0x2000, data)
			case 2:
				m.WriteCapability(int(off%16), data)
				if i := 3 - int(off%16); i >= 0 && i < len(data) {
					mm.enable, mm.mask = data[i]&0x80 != 0, data[i]&0x40 != 0
				}
			case 3:
				m.ReadCapability(int(off%16), data)
			case 4:
				v := int(off % 70)
				err := m.Notify(v)
				if (err != nil) != (v >= vectors) {
					t.Fatalf("Notify(%d) = %v", v, err)
				}
				if v < vectors && mm.enable {
					if mm.masked(v) {
						mm.pending[v] = true
					} else {
						mm.signals[v]++
					}
				}
			case 5:
				m.WriteBAR(int(off%7), uint64(off), data)
				mm.writeTable(int(off%7), uint64(off), data)
			}
			mm.settle()
			for v := range vectors {
				addr, data := mm.msg(v)
				want := msiState{addr: addr, data: data, masked: mm.masked(v)}
				if r.routes[v] != want {
					t.Fatalf("vector %d: the router saw %+v, the guest programmed %+v", v, r.routes[v], want)
				}
				if r.signals[v] != mm.signals[v] {
					t.Fatalf("vector %d: delivered %d times, want %d", v, r.signals[v], mm.signals[v])
				}
			}
		}
		// What the guest reads back: the table as written, the PBA as
		// raised.
		got := make([]byte, 16*vectors)
		for i := 0; i < len(got); i += 4 {
			m.ReadBAR(tableBAR, tableOff+uint64(i), got[i:i+4])
		}
		if !bytes.Equal(got, mm.table) {
			t.Fatalf("table reads back\n% x\nwant\n% x", got, mm.table)
		}
		pba := make([]byte, 16)
		m.ReadBAR(tableBAR, pbaOff, pba)
		for v := range vectors {
			if set := pba[v/8]>>(v%8)&1 != 0; set != mm.pending[v] {
				t.Fatalf("vector %d: PBA bit %v, want %v", v, set, mm.pending[v])
			}
		}
	})
}
