package pci

import (
	"encoding/binary"
	"testing"
)

// TestMSI: a 4-vector function's capability reads back 64-bit and 4
// vectors capable; the guest's address and data reach the router only as
// it enables vectors, each vector's data ending in its number, the ones
// beyond Multiple Message Enable masked; asking for more than the function
// has gets what it has; disabling masks them all.
func TestMSI(t *testing.T) {
	r := &fakeRouter{}
	m, err := NewMSI(MSIOptions{Vectors: 4, Router: r})
	if err != nil {
		t.Fatal(err)
	}
	var b [msiCapLen]byte
	m.ReadCapability(0, b[:])
	if ctl := binary.LittleEndian.Uint16(b[2:]); ctl != msi64Bit|2<<1 {
		t.Errorf("message control %#04x, want 64-bit, 4 vectors capable (%#04x)", ctl, msi64Bit|2<<1)
	}
	le := binary.LittleEndian
	var addr [8]byte
	le.PutUint64(addr[:], 0xfee0_1003) // the low two bits are reserved
	m.WriteCapability(4, addr[:])
	m.WriteCapability(12, []byte{0x48, 0x40})
	if got := r.take(); got != "" {
		t.Errorf("programming while off: %s, want nothing routed", got)
	}
	m.WriteCapability(2, []byte{msiEnable | 1<<msiMMEShift}) // 2 vectors
	if got := r.take(); got != "route 0 0xfee01000 0x4048 masked=false; route 1 0xfee01000 0x4049 masked=false" {
		t.Errorf("enable 2: %s", got)
	}
	if m.Enabled() != 2 {
		t.Errorf("Enabled() = %d, want 2", m.Enabled())
	}
	m.WriteCapability(2, []byte{msiEnable | 5<<msiMMEShift}) // 32 asked: 4 given
	if got := r.take(); got != "route 2 0xfee01000 0x404a masked=false; route 3 0xfee01000 0x404b masked=false" {
		t.Errorf("enable 32 of 4: %s", got)
	}
	m.ReadCapability(2, b[:2])
	if mme := (le.Uint16(b[:2]) & msiMMEMask) >> msiMMEShift; mme != 2 {
		t.Errorf("Multiple Message Enable reads %d, want 2 (4 vectors)", mme)
	}
	m.WriteCapability(2, []byte{0})
	if got := r.take(); got != "route 0 0x0 0x0 masked=true; route 1 0x0 0x0 masked=true; route 2 0x0 0x0 masked=true; route 3 0x0 0x0 masked=true" || m.Enabled() != 0 {
		t.Errorf("disable: %s, Enabled() = %d", got, m.Enabled())
	}
	for _, n := range []int{0, 3, 64} {
		if _, err := NewMSI(MSIOptions{Vectors: n, Router: r}); err == nil {
			t.Errorf("NewMSI with %d vectors did not fail", n)
		}
	}
}
