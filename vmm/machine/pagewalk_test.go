package machine

import (
	"errors"
	"strings"
	"testing"
)

// fakeRAM is guest RAM as a map of 8-byte words.
type fakeRAM map[uint64]uint64

func (r fakeRAM) Uint64(gpa uint64) (uint64, error) {
	v, ok := r[gpa]
	if !ok {
		return 0, errors.New("outside")
	}
	return v, nil
}

func TestPageWalk(t *testing.T) {
	const va = 0xffffffffc0700dcc
	idx := func(level uint) uint64 { return (va >> (39 - 9*level)) & 511 }
	ram := fakeRAM{
		0x1000 + 8*idx(0): 0x2000 | ptePresent,
		0x2000 + 8*idx(1): 0x3000 | ptePresent,
		0x3000 + 8*idx(2): 0x4000 | ptePresent,
		0x4000 + 8*idx(3): 0x7b5000 | ptePresent,
	}
	walk := func() string { return pageWalk(ram, efer64, 0, 0x1000, va) }
	if got := walk(); !strings.HasSuffix(got, ": gpa 0x7b5dcc, present, executable") || !strings.Contains(got, "pte=0x7b5001") {
		t.Errorf("4K page: %s", got)
	}
	for a := range ram {
		ram[a] |= pteUser
	}
	if got := walk(); !strings.HasSuffix(got, "present, executable, user") {
		t.Errorf("user page: %s", got)
	}
	for a := range ram {
		ram[a] &^= pteUser
	}
	ram[0x4000+8*idx(3)] |= pteNX
	if got := walk(); !strings.HasSuffix(got, "present, no-execute") {
		t.Errorf("NX page: %s", got)
	}
	ram[0x3000+8*idx(2)] = 0x600000 | ptePresent | pteLarge
	if got := walk(); !strings.HasSuffix(got, "(2M page): gpa 0x700dcc, present, executable") {
		t.Errorf("2M page: %s", got)
	}
	ram[0x2000+8*idx(1)] = 0
	if got := walk(); !strings.HasSuffix(got, "pdpte=0x0: not present") {
		t.Errorf("not present: %s", got)
	}
	delete(ram, 0x1000+8*idx(0))
	if got := walk(); !strings.Contains(got, "outside guest RAM") {
		t.Errorf("a table outside RAM: %s", got)
	}
	// 5-level paging: the PML5 at cr3 points to the same PML4.
	ram[0x1000+8*idx(0)] = 0x2000 | ptePresent
	ram[0x9000+8*((va>>48)&511)] = 0x1000 | ptePresent
	if got := pageWalk(ram, efer64, cr4LA57, 0x9000, va); !strings.Contains(got, "pml5e=0x1001 pml4e=0x2001") {
		t.Errorf("5-level: %s", got)
	}
	if got := pageWalk(ram, 0, 0, 0x1000, va); got != "not in long mode" {
		t.Errorf("32-bit: %s", got)
	}
}
