package pci

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeRouter records what the MSI-X capability asks of the VMM.
type fakeRouter struct {
	calls []string
	fail  bool
}

func (r *fakeRouter) Route(v int, addr uint64, data uint32, masked bool) error {
	r.calls = append(r.calls, fmt.Sprintf("route %d %#x %#x masked=%v", v, addr, data, masked))
	if r.fail {
		return errors.New("no route")
	}
	return nil
}

func (r *fakeRouter) Signal(v int) error {
	r.calls = append(r.calls, fmt.Sprintf("signal %d", v))
	return nil
}

func (r *fakeRouter) take() string {
	s := strings.Join(r.calls, "; ")
	r.calls = nil
	return s
}

const (
	tableBAR = 2
	tableOff = 0x1000
	pbaOff   = 0x1800
)

func newMSIX(t testing.TB, vectors int) (*MSIX, *fakeRouter) {
	t.Helper()
	r := &fakeRouter{}
	m, err := NewMSIX(MSIXOptions{Vectors: vectors, TableBAR: tableBAR, TableOffset: tableOff,
		PBABAR: tableBAR, PBAOffset: pbaOff, Router: r})
	if err != nil {
		t.Fatal(err)
	}
	return m, r
}

// entry writes vector v's table entry with dword accesses, as Linux does.
func entry(m *MSIX, v int, addr uint64, data uint32, ctrl uint32) {
	base := uint64(tableOff + 16*v)
	m.WriteBAR(tableBAR, base, le.AppendUint32(nil, uint32(addr)))
	m.WriteBAR(tableBAR, base+4, le.AppendUint32(nil, uint32(addr>>32)))
	m.WriteBAR(tableBAR, base+8, le.AppendUint32(nil, data))
	m.WriteBAR(tableBAR, base+12, le.AppendUint32(nil, ctrl))
}

func setControl(m *MSIX, enable, fnMask bool) {
	var c byte
	if enable {
		c |= 0x80
	}
	if fnMask {
		c |= 0x40
	}
	m.WriteCapability(2, []byte{0xFF, c}) // the low byte (table size) is read-only
}

func pba(m *MSIX) uint64 {
	var b [8]byte
	m.ReadBAR(tableBAR, pbaOff, b[:])
	return le.Uint64(b[:])
}

func TestMSIXCapability(t *testing.T) {
	m, _ := newMSIX(t, 3)
	c, _ := NewConfigSpace(testID(), BAR{Index: tableBAR, Size: 0x2000})
	off, err := c.AddCapability(m)
	if err != nil {
		t.Fatal(err)
	}
	if got := read32(c, off); got != 0x0002_0011 {
		t.Errorf("capability dword 0 = %#x, want table size 2 (N-1), id 0x11", got)
	}
	if got := read32(c, off+4); got != tableOff|tableBAR {
		t.Errorf("table offset/BIR = %#x", got)
	}
	if got := read32(c, off+8); got != pbaOff|tableBAR {
		t.Errorf("PBA offset/BIR = %#x", got)
	}
	write32(c, off, 0xFFFF_FFFF)
	write32(c, off+4, 0)
	if got := read32(c, off); got != 0xC002_0011 {
		t.Errorf("after writing all ones, dword 0 = %#x, want enable+mask set, the rest unchanged", got)
	}
	if got := read32(c, off+4); got != tableOff|tableBAR {
		t.Errorf("table offset/BIR writable: %#x", got)
	}
	if !m.Enabled() {
		t.Error("Enabled() false after setting the enable bit")
	}
	if m.TableSize() != 48 || m.PBASize() != 8 {
		t.Errorf("sizes %d, %d", m.TableSize(), m.PBASize())
	}
}

func TestMSIXDelivery(t *testing.T) {
	m, r := newMSIX(t, 2)
	steps := []struct {
		name string
		do   func()
		want string
		pba  uint64
	}{
		{"notify while disabled", func() { m.Notify(0) }, "", 0},
		{"program vector 0, still masked", func() { entry(m, 0, 0xFEE0_1000, 0x4041, 1) },
			"route 0 0xfee01000 0x0 masked=true; route 0 0xfee01000 0x4041 masked=true", 0},
		{"enable MSI-X: vector 0 masked by its own bit", func() { setControl(m, true, false) }, "", 0},
		{"notify masked vector sets pending", func() { m.Notify(0) }, "", 1},
		{"unmask delivers the pending vector", func() { entry(m, 0, 0xFEE0_1000, 0x4041, 0) },
			"route 0 0xfee01000 0x4041 masked=false; signal 0", 0},
		{"notify unmasked vector", func() { m.Notify(0) }, "signal 0", 0},
		{"program and unmask vector 1", func() { entry(m, 1, 0xFEE0_2000, 0x4042, 0) },
			"route 1 0xfee02000 0x0 masked=true; route 1 0xfee02000 0x4042 masked=true; route 1 0xfee02000 0x4042 masked=false", 0},
		{"function mask masks both", func() { setControl(m, true, true) },
			"route 0 0xfee01000 0x4041 masked=true; route 1 0xfee02000 0x4042 masked=true", 0},
		{"notify under function mask", func() { m.Notify(1) }, "", 2},
		{"writing the same control again changes nothing", func() { setControl(m, true, true) }, "", 2},
		{"function unmask delivers", func() { setControl(m, true, false) },
			"route 0 0xfee01000 0x4041 masked=false; route 1 0xfee02000 0x4042 masked=false; signal 1", 0},
		{"mask vector 1 with a byte write", func() { m.WriteBAR(tableBAR, tableOff+16+12, []byte{0xFF}) },
			"route 1 0xfee02000 0x4042 masked=true", 0},
		{"pending while vector-masked", func() { m.Notify(1) }, "", 2},
		{"disable MSI-X keeps the pending bit", func() { setControl(m, false, false) },
			"route 0 0xfee01000 0x4041 masked=true", 2},
		{"notify while disabled does nothing", func() { m.Notify(0) }, "", 2},
		{"64-bit write of vector 1's address", func() {
			m.WriteBAR(tableBAR, tableOff+16, le.AppendUint64(nil, 0x1_FEE0_3000))
		}, "route 1 0x1fee03000 0x4042 masked=true", 2},
	}
	for _, s := range steps {
		s.do()
		if got := r.take(); got != s.want {
			t.Errorf("%s: router saw %q, want %q", s.name, got, s.want)
		}
		if got := pba(m); got != s.pba {
			t.Errorf("%s: PBA = %#x, want %#x", s.name, got, s.pba)
		}
	}
	if err := m.Notify(2); err == nil {
		t.Error("Notify of vector 2 of 2 accepted")
	}
}

func TestMSIXTableAccess(t *testing.T) {
	m, r := newMSIX(t, 70) // PBA of two qwords
	var b [8]byte
	// Reset state: every vector masked, reserved control bits 0.
	m.ReadBAR(tableBAR, tableOff+16*69+12, b[:4])
	if le.Uint32(b[:]) != 1 {
		t.Errorf("vector 69 control at reset = %#x", le.Uint32(b[:]))
	}
	entry(m, 69, 0xFEE0_0000, 0x30, 0xFFFF_FFFE)
	m.ReadBAR(tableBAR, tableOff+16*69+12, b[:4])
	if le.Uint32(b[:4]) != 0 {
		t.Errorf("reserved vector control bits kept: %#x", le.Uint32(b[:4]))
	}
	m.ReadBAR(tableBAR, tableOff+16*69, b[:])
	if le.Uint64(b[:]) != 0xFEE0_0000 {
		t.Errorf("vector 69 address reads %#x", le.Uint64(b[:]))
	}
	setControl(m, true, true)
	r.take()
	m.Notify(69)
	m.ReadBAR(tableBAR, pbaOff+8, b[:])
	if le.Uint64(b[:]) != 1<<5 {
		t.Errorf("PBA qword 1 = %#x, want bit 5", le.Uint64(b[:]))
	}
	m.WriteBAR(tableBAR, pbaOff+8, make([]byte, 8)) // the PBA is read-only
	m.ReadBAR(tableBAR, pbaOff+8, b[:1])
	if b[0] != 1<<5 {
		t.Errorf("PBA write cleared a pending bit: %#x", b[0])
	}

	// Accesses that straddle the table's edges are claimed but do nothing;
	// accesses elsewhere in the BAR or in another BAR are not claimed.
	for _, a := range []struct {
		bar     int
		off     uint64
		n       int
		claimed bool
	}{
		{tableBAR, tableOff - 4, 8, true},
		{tableBAR, tableOff + 16*70 - 4, 8, true},
		{tableBAR, tableOff - 4, 4, false},
		{tableBAR, pbaOff + 16, 4, false},
		{tableBAR + 1, tableOff, 4, false},
		{tableBAR, ^uint64(0) - 2, 8, false},
		{tableBAR, tableOff, 0, false},
	} {
		before := r.take()
		data := []byte{1, 2, 3, 4, 5, 6, 7, 8}[:a.n]
		if got := m.WriteBAR(a.bar, a.off, data); got != a.claimed {
			t.Errorf("WriteBAR(%d, %#x, %d) claimed=%v", a.bar, a.off, a.n, got)
		}
		if got := m.ReadBAR(a.bar, a.off, data); got != a.claimed {
			t.Errorf("ReadBAR(%d, %#x, %d) claimed=%v", a.bar, a.off, a.n, got)
		}
		if a.claimed && string(data) != string(make([]byte, a.n)) {
			t.Errorf("straddling read at %#x = % x, want zeros", a.off, data)
		}
		if got := r.take(); got != "" || before != "" {
			t.Errorf("straddling access reached the router: %q", got)
		}
	}
}

func TestMSIXOptions(t *testing.T) {
	r := &fakeRouter{}
	for _, o := range []MSIXOptions{
		{Vectors: 0, Router: r},
		{Vectors: 2049, Router: r},
		{Vectors: 1, TableBAR: 6, Router: r},
		{Vectors: 1, TableOffset: 4, Router: r},
		{Vectors: 1},
		{Vectors: 64, PBAOffset: 0x3F8, Router: r}, // PBA inside the table
	} {
		if _, err := NewMSIX(o); err == nil {
			t.Errorf("NewMSIX(%+v) accepted", o)
		}
	}
	var errs []error
	r.fail = true
	m, err := NewMSIX(MSIXOptions{Vectors: 1, PBAOffset: 16, Router: r, Errors: func(e error) { errs = append(errs, e) }})
	if err != nil {
		t.Fatal(err)
	}
	m.WriteBAR(0, 0, []byte{0, 0, 0xE0, 0xFE})
	if len(errs) != 1 {
		t.Errorf("route failure reported %d times: %v", len(errs), errs)
	}
}
