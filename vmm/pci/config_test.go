package pci

import (
	"bytes"
	"encoding/binary"
	"testing"
)

var le = binary.LittleEndian

func read32(c interface{ ReadConfig(int, []byte) }, reg int) uint32 {
	var b [4]byte
	c.ReadConfig(reg, b[:])
	return le.Uint32(b[:])
}

func write32(c interface{ WriteConfig(int, []byte) }, reg int, v uint32) {
	c.WriteConfig(reg, le.AppendUint32(nil, v))
}

func testID() Identity {
	return Identity{Vendor: 0x1af4, Device: 0x1041, Class: 0x020000, Revision: 1,
		SubsystemVendor: 0x1af4, Subsystem: 0x0040, InterruptPin: 1}
}

func TestHeaderReadOnly(t *testing.T) {
	c, err := NewConfigSpace(testID())
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]uint32{
		RegVendor:       0x1041_1af4,
		RegRevision:     0x0200_0001, // revision, prog-if, subclass, class
		RegCacheLine:    0,           // header type 0, single function
		RegSubsysVendor: 0x0040_1af4,
		RegROM:          0,
		RegCapabilities: 0,
		RegIntLine:      0x0100,
	}
	for reg := range want {
		write32(c, reg, 0xFFFF_FFFF)
	}
	for reg, w := range want {
		got := read32(c, reg)
		if reg == RegCacheLine || reg == RegIntLine {
			got &^= 0xFF // cache line size and interrupt line are writable
		}
		if got != w {
			t.Errorf("register %#x after writing all ones = %#x, want %#x", reg, got, w)
		}
	}
	if got := read32(c, RegCacheLine) & 0xFF; got != 0xFF {
		t.Errorf("cache line size not writable: %#x", got)
	}
	if got := read32(c, RegIntLine) & 0xFF; got != 0xFF {
		t.Errorf("interrupt line not writable: %#x", got)
	}
	// Unused space reads 0 and ignores writes; beyond 4 KiB reads all ones.
	write32(c, 0x100, 0x1234_5678)
	if got := read32(c, 0x100); got != 0 {
		t.Errorf("extended space = %#x after write, want 0", got)
	}
	var b [4]byte
	c.ReadConfig(ConfigSize-2, b[:])
	if !bytes.Equal(b[:], []byte{0, 0, 0xFF, 0xFF}) {
		t.Errorf("read across the end of config space = % x", b)
	}
	c.WriteConfig(-1, b[:]) // must not panic
}

func TestCommandStatus(t *testing.T) {
	c, _ := NewConfigSpace(testID())
	tests := []struct {
		name  string
		write []byte
		reg   int
		want  uint32 // command | status<<16 after the write
	}{
		{"all ones to command", []byte{0xFF, 0xFF}, RegCommand, 0x0547},
		{"byte clears memory", []byte{0x05}, RegCommand, 0x0505},
		{"high byte alone", []byte{0x00}, RegCommand + 1, 0x0005},
		{"status writes ignored", []byte{0xFF, 0xFF}, RegStatus, 0x0005},
	}
	for _, tt := range tests {
		c.WriteConfig(tt.reg, tt.write)
		if got := read32(c, RegCommand); got != tt.want {
			t.Errorf("%s: command/status = %#x, want %#x", tt.name, got, tt.want)
		}
	}
	if c.Command() != 0x0005 {
		t.Errorf("Command() = %#x", c.Command())
	}
	// Error bits are write-1-to-clear; the interrupt bit is read-only.
	c.regs[RegStatus+1] = 0xF9
	c.SetInterruptStatus(true)
	c.WriteConfig(RegStatus, []byte{0xFF, 0x09}) // clear bits 8 and 11 only
	if got := le.Uint16(c.regs[RegStatus:]); got != 0xF008 {
		t.Errorf("status after W1C = %#x, want 0xf008", got)
	}
	c.SetInterruptStatus(false)
	if got := le.Uint16(c.regs[RegStatus:]); got != 0xF000 {
		t.Errorf("status after deasserting = %#x", got)
	}
}

func TestBARSizing(t *testing.T) {
	c, err := NewConfigSpace(testID(),
		BAR{Index: 0, Size: 0x1000},
		BAR{Index: 1, Size: 0x100000, Prefetchable: true},
		BAR{Index: 2, Size: 0x4000, Is64: true, Prefetchable: true},
		BAR{Index: 4, Size: 8 << 30, Is64: true},
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		index           int
		initial, sizing uint32 // value before, and after writing all ones
		addr, readback  uint32 // an address write and what it reads as
	}{
		{0, 0x0, 0xFFFF_F000, 0xC000_1234, 0xC000_1000},
		{1, 0x8, 0xFFF0_0008, 0xC010_0000, 0xC010_0008},
		{2, 0xC, 0xFFFF_C00C, 0x0000_8000, 0x0000_800C},
		{3, 0x0, 0xFFFF_FFFF, 0x0000_0001, 0x0000_0001}, // high half of BAR 2
		{4, 0x4, 0x0000_0004, 0x8000_0000, 0x0000_0004}, // 8 GiB: no low address bits
		{5, 0x0, 0xFFFF_FFFE, 0x0000_0003, 0x0000_0002},
	}
	for _, tt := range tests {
		reg := RegBAR0 + 4*tt.index
		if got := read32(c, reg); got != tt.initial {
			t.Errorf("BAR%d initial = %#x, want %#x", tt.index, got, tt.initial)
		}
		write32(c, reg, 0xFFFF_FFFF)
		if got := read32(c, reg); got != tt.sizing {
			t.Errorf("BAR%d sizing = %#x, want %#x", tt.index, got, tt.sizing)
		}
		write32(c, reg, tt.addr)
		if got := read32(c, reg); got != tt.readback {
			t.Errorf("BAR%d after writing %#x = %#x, want %#x", tt.index, tt.addr, got, tt.readback)
		}
	}
	// Byte writes follow the same masks.
	c.WriteConfig(RegBAR0+1, []byte{0xAB})
	if got := read32(c, RegBAR0); got != 0xC000_A000 {
		t.Errorf("BAR0 after byte write = %#x", got)
	}
	if got := len(c.BARs()); got != 4 {
		t.Errorf("BARs() has %d entries", got)
	}
}

func TestBARValidation(t *testing.T) {
	for _, bars := range [][]BAR{
		{{Index: 6, Size: 16}},
		{{Index: 5, Size: 16, Is64: true}},
		{{Index: 0, Size: 8}},
		{{Index: 0, Size: 0x3000}},
		{{Index: 0, Size: 1 << 32}},
		{{Index: 0, Size: 16, Is64: true}, {Index: 1, Size: 16}},
		{{Index: 2, Size: 16}, {Index: 2, Size: 32}},
	} {
		if _, err := NewConfigSpace(testID(), bars...); err == nil {
			t.Errorf("NewConfigSpace accepted %+v", bars)
		}
	}
	if _, err := NewConfigSpace(Identity{InterruptPin: 5}); err == nil {
		t.Error("interrupt pin 5 accepted")
	}
}

type recCap struct {
	StaticCapability
	writes [][2]int // offset, first byte
}

func (r *recCap) WriteCapability(off int, data []byte) {
	r.writes = append(r.writes, [2]int{off, int(data[0])})
}

func TestCapabilityList(t *testing.T) {
	c, _ := NewConfigSpace(testID())
	a := StaticCapability{ID: 0x09, Body: []byte{5, 1, 2}} // 5 bytes
	b := &recCap{StaticCapability: StaticCapability{ID: 0x11, Body: make([]byte, 10)}}
	offA, err := c.AddCapability(a)
	if err != nil {
		t.Fatal(err)
	}
	offB, err := c.AddCapability(b)
	if err != nil {
		t.Fatal(err)
	}
	if offA != 0x40 || offB != 0x48 {
		t.Fatalf("capabilities at %#x and %#x, want 0x40 and 0x48", offA, offB)
	}
	var buf [1]byte
	c.ReadConfig(RegStatus, buf[:])
	if buf[0]&StatusCapList == 0 {
		t.Error("status lacks the capability list bit")
	}
	// Walk the list the way an OS does.
	var ids []byte
	for p := read32(c, RegCapabilities) & 0xFF; p != 0; {
		w := read32(c, int(p))
		ids = append(ids, byte(w))
		if byte(w) == 0x09 && w>>16 != 0x0105 {
			t.Errorf("static capability body reads %#x", w>>16)
		}
		p = w >> 8 & 0xFF
	}
	if !bytes.Equal(ids, []byte{0x09, 0x11}) {
		t.Errorf("capability list = % x", ids)
	}
	// A dword write over b's header reaches b for bytes 2-3 only; the
	// header itself is read-only.
	write32(c, offB, 0xAABB_CCDD)
	if len(b.writes) != 1 || b.writes[0] != [2]int{2, 0xBB} {
		t.Errorf("capability saw writes %v", b.writes)
	}
	if got := read32(c, offB) & 0xFFFF; got != 0x0011 {
		t.Errorf("capability header after write = %#x", got)
	}
	big := StaticCapability{ID: 9, Body: make([]byte, 200)}
	if _, err := c.AddCapability(big); err == nil {
		t.Error("capability beyond 256 bytes accepted")
	}
}
