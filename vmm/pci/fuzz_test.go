package pci

import (
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

// op is one guest access decoded from fuzz input: 1 byte kind and width,
// 4 bytes offset, 8 bytes data.
const opSize = 13

// FuzzConfigAccess drives conf1, ECAM and the BAR windows with arbitrary
// accesses (a guest reprogramming BARs, MSI-X and the command register at
// random) and checks that nothing panics and the routing stays sane:
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

// FuzzMSIX drives the MSI-X table, PBA and capability with arbitrary
// accesses and notifications, and checks the invariants a guest relies on:
// no panic, the router's view equals the table, and a vector is never left
// pending while unmasked (unmasking delivers it).
func FuzzMSIX(f *testing.F) {
	f.Add([]byte{0, 0x10, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Add([]byte{1, 0x0C, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0x10, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 3, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		m, r := newMSIX(t, 67)
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
			case 2:
				m.WriteCapability(int(off%16), data)
			case 3:
				m.ReadCapability(int(off%16), data)
			case 4:
				m.Notify(int(off % 70))
			case 5:
				m.WriteBAR(int(off%7), uint64(off), data)
			}
			r.calls = nil
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		for v := range 67 {
			s := m.state(v)
			if s != m.reported[v] {
				t.Fatalf("vector %d: router told %+v, table says %+v", v, m.reported[v], s)
			}
			if !s.masked && m.pending[v/64]&(1<<(v%64)) != 0 {
				t.Fatalf("vector %d pending while unmasked", v)
			}
		}
	})
}
