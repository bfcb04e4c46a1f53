package vhostuser

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemory(t *testing.T) {
	g := newGuestRAM(t)
	m, err := Map(g.regions())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	half := uint64(ramSize / 2)
	slices := []struct {
		name   string
		gpa, n uint64
		memOff uint64 // where in the memfd the view must start
		ok     bool
	}{
		{"first byte", 0, 1, 0, true},
		{"whole low region", 0, half, 0, true},
		{"last byte of low region", half - 1, 1, half - 1, true},
		{"high region", highBase + 0x10, 0x20, half + 0x10, true},
		{"end of high region", highBase + half - 8, 8, ramSize - 8, true},
		{"crosses the low region's end", half - 4, 8, 0, false},
		{"just past the low region", half, 1, 0, false},
		{"in the hole", 0x8000_0000, 4, 0, false},
		{"crosses the high region's end", highBase + half - 4, 5, 0, false},
		{"empty", 0x100, 0, 0, false},
		{"wraps around", highBase + 8, ^uint64(0) - 4, 0, false},
		{"top of the address space", ^uint64(0), 1, 0, false},
	}
	for _, tt := range slices {
		t.Run(tt.name, func(t *testing.T) {
			b, err := m.Slice(tt.gpa, tt.n)
			if (err == nil) != tt.ok {
				t.Fatalf("Slice(%#x, %#x) = len %d, %v; want ok=%v", tt.gpa, tt.n, len(b), err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrAddress) {
					t.Fatalf("error %v does not wrap ErrAddress", err)
				}
				return
			}
			if uint64(len(b)) != tt.n || uint64(cap(b)) != tt.n {
				t.Fatalf("view has len %d cap %d, want %d", len(b), cap(b), tt.n)
			}
			// The view aliases the frontend's memory both ways.
			g.mem[tt.memOff] = 0x5a
			if b[0] != 0x5a {
				t.Fatal("view does not see the frontend's write")
			}
			b[0] = 0xa5
			if g.mem[tt.memOff] != 0xa5 {
				t.Fatal("frontend does not see the view's write")
			}
		})
	}

	translations := []struct {
		ua, gpa uint64
		ok      bool
	}{
		{g.userAddr(0), 0, true},
		{g.userAddr(half - 1), half - 1, true},
		{g.userAddr(half), highBase, true},
		{g.userAddr(ramSize - 1), highBase + half - 1, true},
		{g.userAddr(ramSize), 0, false},
		{g.userAddr(0) - 1, 0, false},
		{0, 0, false},
	}
	for _, tt := range translations {
		gpa, err := m.Translate(tt.ua)
		if (err == nil) != tt.ok || gpa != tt.gpa {
			t.Errorf("Translate(%#x) = %#x, %v; want %#x, ok=%v", tt.ua, gpa, err, tt.gpa, tt.ok)
		}
	}
	if r := m.Regions(); len(r) != 2 || r[1].GuestAddr != highBase || r[0].Fd != -1 {
		t.Errorf("Regions = %+v", r)
	}
}

func TestMapRejects(t *testing.T) {
	g := newGuestRAM(t)
	page := uint64(4096)
	unsealed, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unsealed)
	if err := unix.Ftruncate(unsealed, int64(page)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		regions []Region
	}{
		{"none", nil},
		{"nine", make([]Region, 9)},
		{"empty region", []Region{{Size: 0, Fd: g.fd}}},
		{"guest overlap", []Region{{Size: 2 * page, Fd: g.fd}, {GuestAddr: page, Size: page, UserAddr: 1 << 40, Fd: g.fd}}},
		{"user overlap", []Region{{Size: page, UserAddr: 1 << 40, Fd: g.fd}, {GuestAddr: 1 << 32, Size: page, UserAddr: 1<<40 + page - 4, Fd: g.fd}}},
		{"guest wraps", []Region{{GuestAddr: ^uint64(0) - page + 1, Size: 2 * page, Fd: g.fd}}},
		{"user wraps", []Region{{UserAddr: ^uint64(0) - page + 1, Size: 2 * page, Fd: g.fd}}},
		{"offset wraps", []Region{{Offset: ^uint64(0) - page + 1, Size: 2 * page, Fd: g.fd}}},
		{"misaligned guest address", []Region{{GuestAddr: 2, Size: page, Fd: g.fd}}},
		{"misaligned size", []Region{{Size: page - 1, Fd: g.fd}}},
		{"misaligned offset", []Region{{Size: page, Offset: 2, Fd: g.fd}}},
		{"past end of file", []Region{{Size: ramSize, Offset: page, Fd: g.fd}}},
		{"bad descriptor", []Region{{Size: page, Fd: -1}}},
		{"huge", []Region{{Size: 1 << 62, Fd: g.fd}}},
		{"unsealed memfd", []Region{{Size: page, Fd: unsealed}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if m, err := Map(tt.regions); err == nil {
				m.Close()
				t.Fatalf("Map(%+v) succeeded", tt.regions)
			}
		})
	}
	// A non-page-aligned (but 4-byte aligned) offset is fine.
	m, err := Map([]Region{{GuestAddr: 0x1004, Size: page, Offset: 4, Fd: g.fd}})
	if err != nil {
		t.Fatalf("Map with offset 4: %v", err)
	}
	defer m.Close()
	g.mem[4] = 0x77
	if b, err := m.Slice(0x1004, 1); err != nil || b[0] != 0x77 {
		t.Fatalf("Slice at the region start = %v, %v", b, err)
	}
}
