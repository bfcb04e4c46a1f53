package pci

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// testDev is a device whose BAR reads return the BAR index and offset and
// which records MoveBAR calls.
type testDev struct {
	*ConfigSpace
	moves  []string
	writes []string
}

func newTestDev(t testing.TB, bars ...BAR) *testDev {
	t.Helper()
	c, err := NewConfigSpace(testID(), bars...)
	if err != nil {
		t.Fatal(err)
	}
	return &testDev{ConfigSpace: c}
}

func (d *testDev) MoveBAR(i int, from, to uint64) error {
	d.moves = append(d.moves, fmt.Sprintf("%d:%#x->%#x", i, from, to))
	return nil
}

func (d *testDev) ReadBAR(i int, off uint64, data []byte) {
	for j := range data {
		data[j] = byte(i<<4) + byte(off) + byte(j)
	}
}

func (d *testDev) WriteBAR(i int, off uint64, data []byte) {
	d.writes = append(d.writes, fmt.Sprintf("%d:%#x:% x", i, off, data))
}

// recDev records what reaches the reset port.
type recDev struct{ ops []string }

func (r *recDev) Read(off uint64, data []byte) {
	r.ops = append(r.ops, fmt.Sprintf("r%d/%d", off, len(data)))
	data[0] = 0x42
}
func (r *recDev) Write(off uint64, data []byte) {
	r.ops = append(r.ops, fmt.Sprintf("w%d=%#x", off, data[0]))
}

func newBus(t testing.TB) (*Bus, *recDev) {
	t.Helper()
	reset := &recDev{}
	base, size := MMIO64Window(1 << 30)
	b, err := New(Options{MMIO64Base: base, MMIO64Size: size, Reset: reset})
	if err != nil {
		t.Fatal(err)
	}
	return b, reset
}

func pio(t testing.TB, b *Bus, port uint64, width int, write bool, v uint32) uint32 {
	t.Helper()
	data := le.AppendUint32(nil, v)[:width]
	if write {
		b.Conf1().Write(port-layout.PCIConfAddr, data)
		return 0
	}
	b.Conf1().Read(port-layout.PCIConfAddr, data)
	var full [4]byte
	copy(full[:], data)
	return le.Uint32(full[:])
}

func confAddr(bus, dev, fn, reg int) uint32 {
	return 1<<31 | uint32(bus)<<16 | uint32(dev)<<11 | uint32(fn)<<8 | uint32(reg)
}

func TestConf1(t *testing.T) {
	b, reset := newBus(t)
	if _, err := b.Add(newTestDev(t)); err != nil {
		t.Fatal(err)
	}
	// Linux's pci_check_type1: a byte write to 0xCFB must not disturb
	// CONFIG_ADDRESS, which must then read back what was written.
	pio(t, b, 0xCFB, 1, true, 1)
	if got := pio(t, b, 0xCF8, 4, false, 0); got != 0 {
		t.Errorf("CONFIG_ADDRESS after outb 0xCFB = %#x", got)
	}
	pio(t, b, 0xCF8, 4, true, 0x8000_0003)
	if got := pio(t, b, 0xCF8, 4, false, 0); got != 0x8000_0000 {
		t.Errorf("CONFIG_ADDRESS = %#x, want 0x80000000 (low bits reserved)", got)
	}
	tests := []struct {
		name  string
		addr  uint32
		port  uint64
		width int
		want  uint32
	}{
		{"host bridge ids", confAddr(0, 0, 0, 0), 0xCFC, 4, 0x0d57_8086},
		{"host bridge class word", confAddr(0, 0, 0, 8), 0xCFE, 2, 0x0600},
		{"host bridge class byte", confAddr(0, 0, 0, 8), 0xCFF, 1, 0x06},
		{"host bridge header type", confAddr(0, 0, 0, 0xC), 0xCFE, 1, 0x00},
		{"device word at odd port", confAddr(0, 1, 0, 0), 0xCFD, 2, 0x411a},
		{"device dword", confAddr(0, 1, 0, 0), 0xCFC, 4, 0x1041_1af4},
		{"device interrupt pin", confAddr(0, 1, 0, 0x3C), 0xCFD, 1, 1},
		{"empty slot", confAddr(0, 2, 0, 0), 0xCFC, 4, 0xFFFF_FFFF},
		{"slot 31", confAddr(0, 31, 0, 0), 0xCFC, 4, 0xFFFF_FFFF},
		{"function 1", confAddr(0, 1, 1, 0), 0xCFC, 4, 0xFFFF_FFFF},
		{"bus 1", confAddr(1, 0, 0, 0), 0xCFC, 4, 0xFFFF_FFFF},
		{"enable bit clear", confAddr(0, 0, 0, 0) &^ (1 << 31), 0xCFC, 4, 0xFFFF_FFFF},
		{"word read of address register", confAddr(0, 0, 0, 0), 0xCF8, 2, 0xFFFF},
	}
	for _, tt := range tests {
		pio(t, b, 0xCF8, 4, true, tt.addr)
		if got := pio(t, b, tt.port, tt.width, false, 0); got != tt.want {
			t.Errorf("%s: read %d bytes at %#x = %#x, want %#x", tt.name, tt.width, tt.port, got, tt.want)
		}
	}
	// Writes through CONFIG_DATA reach the device.
	pio(t, b, 0xCF8, 4, true, confAddr(0, 1, 0, 0x3C))
	pio(t, b, 0xCFC, 1, true, 0x5A)
	if got := pio(t, b, 0xCFC, 4, false, 0); got != 0x015A {
		t.Errorf("interrupt line after write = %#x", got)
	}
	// With the enable bit clear, writes go nowhere.
	pio(t, b, 0xCF8, 4, true, confAddr(0, 1, 0, 0x3C)&^(1<<31))
	pio(t, b, 0xCFC, 1, true, 0x11)
	pio(t, b, 0xCF8, 4, true, confAddr(0, 1, 0, 0x3C))
	if got := pio(t, b, 0xCFC, 1, false, 0); got != 0x5A {
		t.Errorf("disabled write changed interrupt line to %#x", got)
	}

	// 0xCF9: bytes reach the reset device; wider accesses are the
	// address register's (or nobody's) and do not.
	pio(t, b, 0xCF9, 1, true, 6)
	if got := pio(t, b, 0xCF9, 1, false, 0); got != 0x42 {
		t.Errorf("reset port read = %#x", got)
	}
	pio(t, b, 0xCF8, 2, true, 0x0600)
	pio(t, b, 0xCF8, 4, true, 0x8000_0600)
	if want := "w0=0x6 r0/1"; strings.Join(reset.ops, " ") != want {
		t.Errorf("reset device saw %q, want %q", strings.Join(reset.ops, " "), want)
	}
	if got := pio(t, b, 0xCF8, 4, false, 0); got != 0x8000_0600 {
		t.Errorf("CONFIG_ADDRESS = %#x after dword write", got)
	}
}

func TestECAM(t *testing.T) {
	b, _ := newBus(t)
	d := newTestDev(t)
	if _, err := b.Add(d); err != nil {
		t.Fatal(err)
	}
	e := b.ECAM()
	ecamOff := func(bus, dev, fn, reg uint64) uint64 { return bus<<20 | dev<<15 | fn<<12 | reg }
	tests := []struct {
		name  string
		off   uint64
		width int
		want  uint64
	}{
		{"host bridge ids", ecamOff(0, 0, 0, 0), 4, 0x0d57_8086},
		{"host bridge class", ecamOff(0, 0, 0, 0xA), 2, 0x0600},
		{"device ids as qword", ecamOff(0, 1, 0, 0), 8, 0x1041_1af4 | uint64(read32(d, RegCommand))<<32},
		{"device unaligned word", ecamOff(0, 1, 0, 1), 2, 0x411a},
		{"extended register", ecamOff(0, 1, 0, 0x100), 4, 0},
		{"last register", ecamOff(0, 1, 0, 0xFFC), 4, 0},
		{"crossing into the next function", ecamOff(0, 1, 0, 0xFFE), 4, 0xFFFF_FFFF},
		{"function 7", ecamOff(0, 1, 7, 0), 4, 0xFFFF_FFFF},
		{"bus 255", ecamOff(255, 0, 0, 0), 4, 0xFFFF_FFFF},
		{"past the window", layout.ECAMSize, 4, 0xFFFF_FFFF},
	}
	for _, tt := range tests {
		data := make([]byte, tt.width)
		e.Read(tt.off, data)
		var full [8]byte
		copy(full[:], data)
		if got := le.Uint64(full[:]); got != tt.want {
			t.Errorf("%s: read %d at %#x = %#x, want %#x", tt.name, tt.width, tt.off, got, tt.want)
		}
	}
	e.Write(ecamOff(0, 1, 0, 0x3C), []byte{0x77})
	if got := read32(d, RegIntLine) & 0xFF; got != 0x77 {
		t.Errorf("ECAM write reached interrupt line as %#x", got)
	}
	e.Write(ecamOff(0, 1, 1, 0x3C), []byte{0x11}) // absent function
	if got := read32(d, RegIntLine) & 0xFF; got != 0x77 {
		t.Errorf("write to function 1 reached function 0: %#x", got)
	}
}

// mmio reads n bytes at guest-physical addr through whichever window holds it.
func mmio(b *Bus, addr uint64, n int) []byte {
	data := make([]byte, n)
	for _, w := range b.Windows() {
		if addr >= w.Base && addr-w.Base < w.Size {
			w.Device.Read(addr-w.Base, data)
			return data
		}
	}
	allOnes(data)
	return data
}

func TestBARAllocationAndRouting(t *testing.T) {
	b, _ := newBus(t)
	base64, _ := MMIO64Window(1 << 30)
	d1 := newTestDev(t, BAR{Index: 0, Size: 0x1000}, BAR{Index: 2, Size: 0x4000, Is64: true, Prefetchable: true})
	d2 := newTestDev(t, BAR{Index: 1, Size: 0x10000})
	for i, d := range []*testDev{d1, d2} {
		if n, err := b.Add(d); err != nil || n != i+1 {
			t.Fatalf("Add = slot %d, %v; want slot %d", n, err, i+1)
		}
	}
	// Firmware-style assignment: natural alignment, 64-bit BARs above RAM,
	// memory decoding on, the device told where its BARs are.
	if got := read32(d1, RegBAR0); got != 0xC000_0000 {
		t.Errorf("d1 BAR0 = %#x", got)
	}
	if lo, hi := read32(d1, RegBAR0+8), read32(d1, RegBAR0+12); uint64(hi)<<32|uint64(lo&^0xF) != base64 {
		t.Errorf("d1 BAR2 = %#x:%#x, want %#x", hi, lo, base64)
	}
	if got := read32(d2, RegBAR0+4); got != 0xC001_0000 {
		t.Errorf("d2 BAR1 = %#x, want 0xc0010000 (64 KiB aligned)", got)
	}
	if d1.Command()&CommandMemory == 0 {
		t.Error("memory decoding not enabled")
	}
	if got := read32(d2, RegIntLine) & 0xFF; got != INTxGSI(2, 1) {
		t.Errorf("d2 interrupt line = %d, want %d", got, INTxGSI(2, 1))
	}
	wantMoves := fmt.Sprintf("0:0x0->0xc0000000 2:0x0->%#x", base64)
	if got := strings.Join(d1.moves, " "); got != wantMoves {
		t.Errorf("d1 moves = %q, want %q", got, wantMoves)
	}

	reads := []struct {
		addr uint64
		want []byte
	}{
		{0xC000_0010, []byte{0x10, 0x11, 0x12, 0x13}},
		{0xC000_0FFE, []byte{0xFE, 0xFF}},
		{0xC000_0FFF, []byte{0xFF, 0xFF}},     // straddles the end of the BAR
		{0xC000_1000, []byte{0xFF}},           // gap
		{0xC001_0004, []byte{0x14}},           // d2 BAR1
		{base64 + 0x3FF8, []byte{0x18, 0x19}}, // 0x20 + 0xF8, truncated to a byte,
	}
	for _, r := range reads {
		if got := mmio(b, r.addr, len(r.want)); !bytes.Equal(got, r.want) {
			t.Errorf("read %#x = % x, want % x", r.addr, got, r.want)
		}
	}
	b.Windows()[0].Device.Write(0xC001_0008-layout.PCIMMIO32Base, []byte{1, 2})
	if got := strings.Join(d2.writes, " "); got != "1:0x8:01 02" {
		t.Errorf("d2 writes = %q", got)
	}

	// The guest moves d1's BARs the way Linux does: decoding off, size,
	// program, decoding on.
	c1 := b.ECAM()
	reg := func(r int) uint64 { return 1<<15 | uint64(r) }
	d1.moves = nil
	c1.Write(reg(RegCommand), []byte{0, 0})
	if got := mmio(b, 0xC000_0010, 1); got[0] != 0xFF {
		t.Errorf("BAR still decodes with memory disabled: % x", got)
	}
	c1.Write(reg(RegBAR0), []byte{0xFF, 0xFF, 0xFF, 0xFF})
	c1.Write(reg(RegBAR0), le.AppendUint32(nil, 0xC002_0000))
	c1.Write(reg(RegBAR0+8), le.AppendUint32(nil, 0x0000_0000))
	c1.Write(reg(RegBAR0+12), le.AppendUint32(nil, uint32((base64+0x10000)>>32)))
	c1.Write(reg(RegBAR0+8), le.AppendUint32(nil, uint32(base64+0x10000)))
	c1.Write(reg(RegCommand), []byte{CommandMemory, 0})
	wantMoves = fmt.Sprintf("0:0xc0000000->0x0 2:%#x->0x0 0:0x0->0xc0020000 2:0x0->%#x", base64, base64+0x10000)
	if got := strings.Join(d1.moves, " "); got != wantMoves {
		t.Errorf("d1 moves = %q, want %q", got, wantMoves)
	}
	for _, r := range []struct {
		addr uint64
		want byte
	}{
		{0xC000_0010, 0xFF},
		{0xC002_0010, 0x10},
		{base64 + 8, 0xFF},
		{base64 + 0x10008, 0x28},
		{0xC001_0004, 0x14}, // d2 untouched
	} {
		if got := mmio(b, r.addr, 1); got[0] != r.want {
			t.Errorf("after the move, read %#x = %#x, want %#x", r.addr, got[0], r.want)
		}
	}

	// A BAR placed outside the windows (over RAM) decodes nothing; one
	// placed over another BAR does not steal its addresses.
	d1.moves = nil
	c1.Write(reg(RegBAR0), le.AppendUint32(nil, 0x1000))
	c1.Write(reg(RegBAR0), le.AppendUint32(nil, 0xC001_0000))
	if got := strings.Join(d1.moves, " "); got != "0:0xc0020000->0x0 0:0x0->0xc0010000" {
		t.Errorf("moves = %q", got)
	}
	if got := mmio(b, 0xC001_0004, 1); got[0] != 0x04 {
		t.Errorf("overlapping BARs read %#x, want 0x04 (the lower slot's)", got[0])
	}
	if n := len(*b.routes.Load()); n != 2 {
		t.Errorf("%d routes with two of three BARs overlapping, want 2", n)
	}
}

func TestAddLimits(t *testing.T) {
	b, _ := newBus(t)
	for i := 1; i < Slots; i++ {
		if _, err := b.Add(newTestDev(t)); err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
	}
	if _, err := b.Add(newTestDev(t)); err == nil {
		t.Error("33rd device accepted")
	}

	// The 32-bit window is 512 MiB: the second 512 MiB BAR does not fit,
	// and a failed Add leaves the allocator as it was.
	b, _ = newBus(t)
	if _, err := b.Add(newTestDev(t, BAR{Index: 0, Size: 256 << 20})); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(newTestDev(t, BAR{Index: 0, Size: 1 << 20}, BAR{Index: 1, Size: 512 << 20})); err == nil {
		t.Error("BAR larger than the room left accepted")
	}
	d := newTestDev(t, BAR{Index: 0, Size: 1 << 20})
	if _, err := b.Add(d); err != nil {
		t.Fatal(err)
	}
	if got := read32(d, RegBAR0); got != 0xD000_0000 {
		t.Errorf("BAR after a failed Add = %#x, want 0xd0000000", got)
	}

	// Without a 64-bit window, 64-bit BARs go below 4 GiB.
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	d = newTestDev(t, BAR{Index: 0, Size: 1 << 12, Is64: true})
	if _, err := b.Add(d); err != nil {
		t.Fatal(err)
	}
	if lo, hi := read32(d, RegBAR0), read32(d, RegBAR0+4); lo != 0xC000_0004 || hi != 0 {
		t.Errorf("64-bit BAR without a 64-bit window at %#x:%#x", hi, lo)
	}
	if len(b.Windows()) != 1 {
		t.Errorf("%d windows without a 64-bit one", len(b.Windows()))
	}
	if _, err := New(Options{MMIO64Base: 1 << 20, MMIO64Size: 1 << 30}); err == nil {
		t.Error("64-bit window below 4 GiB accepted")
	}
}

func TestMMIO64Window(t *testing.T) {
	for _, tt := range []struct{ ram, base uint64 }{
		{512 << 20, 4 << 30},
		{3 << 30, 4 << 30},
		{3<<30 + 1, 5 << 30},
		{8 << 30, 9 << 30},
	} {
		if base, size := MMIO64Window(tt.ram); base != tt.base || size != layout.PCIMMIO64Size {
			t.Errorf("MMIO64Window(%#x) = %#x+%#x, want %#x", tt.ram, base, size, tt.base)
		}
	}
}

func BenchmarkBARRead(b *testing.B) {
	bus, _ := newBus(b)
	for i := 0; i < 8; i++ {
		bus.Add(newTestDev(b, BAR{Index: 0, Size: 0x1000}, BAR{Index: 2, Size: 0x4000, Is64: true}))
	}
	w := bus.Windows()[0].Device
	data := make([]byte, 4)
	b.ReportAllocs()
	for b.Loop() {
		w.Read(0x5010, data)
	}
}

func BenchmarkConf1Read(b *testing.B) {
	bus, _ := newBus(b)
	c := bus.Conf1()
	addr := le.AppendUint32(nil, confAddr(0, 0, 0, 8))
	data := make([]byte, 2)
	b.ReportAllocs()
	for b.Loop() {
		c.Write(0, addr)
		c.Read(6, data)
	}
}
