package virtiotest

import (
	"encoding/binary"
	"errors"
	"testing"
)

func TestRAMSlice(t *testing.T) {
	m := NewRAMAt(Span{0, 0x1000}, Span{0x10000, 0x1000})
	for _, tc := range []struct {
		gpa, n uint64
		ok     bool
	}{
		{0, 0x1000, true}, {0xfff, 1, true}, {0x10000, 0x1000, true},
		{0, 0, false}, {0xfff, 2, false}, {0x1000, 1, false}, {0x8000, 4, false},
		{0x10fff, 2, false}, {0x11000, 1, false}, {^uint64(0), 2, false},
	} {
		_, err := m.Slice(tc.gpa, tc.n)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNotRAM)) {
			t.Errorf("Slice(%#x, %#x) error %v, want ok=%v", tc.gpa, tc.n, err, tc.ok)
		}
	}
	if m.Size() != 0x2000 {
		t.Errorf("Size %#x", m.Size())
	}
	if err := m.CheckGuards(); err != nil {
		t.Fatal(err)
	}
	// A write just past a region, as an unsafe pointer could make it.
	m.regions[1].buf[GuardLen+0x1000] = 0
	if m.CheckGuards() == nil {
		t.Error("CheckGuards missed an overwritten guard byte")
	}
}

func TestWrapRAM(t *testing.T) {
	b := make([]byte, 64)
	m := WrapRAM(Region{GPA: 0x1000, Bytes: b})
	m.Bytes(0x1010, 4)[0] = 7
	if b[0x10] != 7 {
		t.Error("WrapRAM's view is not the caller's bytes")
	}
	if _, err := m.Slice(0, 4); err == nil {
		t.Error("Slice below the region succeeded")
	}
}

func TestContiguous(t *testing.T) {
	l := Contiguous(0x1000, 256)
	if l.Desc != 0x1000 || l.Avail != 0x2000 || l.Used != 0x2210 || l.End() != 0x2a16 {
		t.Errorf("Contiguous(0x1000, 256) = %+v, end %#x", l, l.End())
	}
}

// device is the least a device does: for each available chain, read its
// descriptors and return it as used with the total length of its
// writable buffers.
func device(t *testing.T, m *RAM, d *Driver, from uint16) uint16 {
	t.Helper()
	for ; from != d.AvailIdx(); from++ {
		head := d.AvailEntry(from)
		var n uint32
		for i, at := head, d.Desc+DescSize*uint64(head); ; {
			b := m.Bytes(at, DescSize)
			fl := binary.LittleEndian.Uint16(b[12:])
			if fl&DescIndirect != 0 {
				at = binary.LittleEndian.Uint64(b) // one-entry tables are enough here
				continue
			}
			if fl&DescWrite != 0 {
				n += binary.LittleEndian.Uint32(b[8:])
			}
			if fl&DescNext == 0 {
				break
			}
			i = binary.LittleEndian.Uint16(b[14:])
			at = d.Desc + DescSize*uint64(i)
		}
		d.SetUsedElem(from, uint32(head), n)
	}
	d.SetUsedIdx(from)
	return from
}

func TestPostReap(t *testing.T) {
	m := NewRAM(0x10000)
	d, err := NewDriver(m, Contiguous(0, 4))
	if err != nil {
		t.Fatal(err)
	}
	h0, ok := d.Post(Buf{Addr: 0x8000, Len: 16}, Buf{Addr: 0x9000, Len: 100, Write: true})
	if !ok || h0 != 0 {
		t.Fatalf("first Post = %d, %v; want head 0", h0, ok)
	}
	h1, ok := d.Post(Buf{Addr: 0x8000, Len: 16}, Buf{Addr: 0x9000, Len: 8, Write: true})
	if !ok || h1 != 2 {
		t.Fatalf("second Post = %d, %v; want head 2", h1, ok)
	}
	if _, ok := d.Post(Buf{Addr: 0x8000, Len: 1}); ok {
		t.Fatal("Post succeeded on a full ring")
	}
	if d.InFlight() != 2 || d.AvailIdx() != 2 {
		t.Fatalf("in flight %d, avail idx %d", d.InFlight(), d.AvailIdx())
	}
	at := device(t, m, d, 0)
	got, err := d.Reap(nil)
	if err != nil || len(got) != 2 || got[0] != (Used{0, 100}) || got[1] != (Used{2, 8}) {
		t.Fatalf("Reap = %v, %v", got, err)
	}
	if d.InFlight() != 0 || d.NextUsed() != 2 {
		t.Fatalf("after Reap: in flight %d, next used %d", d.InFlight(), d.NextUsed())
	}
	// The descriptors are free again: a 4-descriptor chain fits.
	four := []Buf{{Addr: 0x8000, Len: 1}, {Addr: 0x8000, Len: 1}, {Addr: 0x8000, Len: 1}, {Addr: 0x9000, Len: 5, Write: true}}
	if _, ok := d.Post(four...); !ok {
		t.Fatal("descriptors not given back by Reap")
	}
	at = device(t, m, d, at)
	if got, err := d.Reap(got[:0]); err != nil || len(got) != 1 || got[0].Len != 5 {
		t.Fatalf("Reap = %v, %v", got, err)
	}
	h, ok, err := d.PostIndirect(0xa000, Buf{Addr: 0x9000, Len: 33, Write: true})
	if err != nil || !ok {
		t.Fatalf("PostIndirect: %v %v", ok, err)
	}
	device(t, m, d, at)
	if got, err := d.Reap(nil); err != nil || len(got) != 1 || got[0] != (Used{h, 33}) {
		t.Fatalf("Reap after PostIndirect = %v, %v", got, err)
	}
	if err := m.CheckGuards(); err != nil {
		t.Fatal(err)
	}
}

func TestReapUnknownHead(t *testing.T) {
	m := NewRAM(0x10000)
	d, err := NewDriver(m, Contiguous(0, 4))
	if err != nil {
		t.Fatal(err)
	}
	d.SetUsedElem(0, 3, 0)
	d.SetUsedIdx(1)
	if _, err := d.Reap(nil); !errors.Is(err, ErrNotInFlight) {
		t.Fatalf("Reap of a head never posted: %v", err)
	}
}

func TestNotificationFields(t *testing.T) {
	m := NewRAM(0x10000)
	// avail only 2-aligned: its fields sit in the other halves of words.
	d, err := NewDriver(m, Layout{Size: 8, Desc: 0x1000, Avail: 0x2002, Used: 0x3000})
	if err != nil {
		t.Fatal(err)
	}
	d.SetAvailFlags(1)
	d.SetUsedEvent(0x1234)
	d.Add(5, 6)
	le := binary.LittleEndian
	a := m.Bytes(0x2002, 6+2*8)
	if le.Uint16(a) != 1 || le.Uint16(a[2:]) != 2 || le.Uint16(a[4:]) != 5 || le.Uint16(a[6:]) != 6 || le.Uint16(a[4+2*8:]) != 0x1234 {
		t.Errorf("available ring % x", a)
	}
	u := m.Bytes(0x3000, 6+8*8)
	le.PutUint16(u, 1)
	le.PutUint16(u[4+8*8:], 9)
	if d.UsedFlags() != 1 || d.AvailEvent() != 9 {
		t.Errorf("used flags %d, avail_event %d", d.UsedFlags(), d.AvailEvent())
	}
	if _, err := NewDriver(m, Layout{Size: 8, Desc: 0, Avail: 0xfff0, Used: 0x3000}); err == nil {
		t.Error("NewDriver accepted an available ring past the end of RAM")
	}
}
