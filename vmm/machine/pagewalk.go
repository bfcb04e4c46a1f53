package machine

import (
	"fmt"
	"strings"
)

// A dump walks the guest's page tables for the address its vCPU executes:
// a guest that keeps faulting on an instruction fetch (RIP equal to CR2)
// although its own tables map the page present and executable is being
// failed by the CPU beneath it, not by its kernel. The walk reads guest
// RAM, whatever the guest put there: every entry's address is checked.

// Page table entry bits (4-level long-mode paging).
const (
	ptePresent  = 1 << 0
	pteUser     = 1 << 2
	pteLarge    = 1 << 7 // a 1 GiB (PDPTE) or 2 MiB (PDE) page
	pteNX       = 1 << 63
	pteAddrMask = 0x000F_FFFF_FFFF_F000
	efer64      = 1 << 10 // EFER.LMA: long mode active
	cr4LA57     = 1 << 12
)

// uint64Reader reads guest RAM (memory.Guest).
type uint64Reader interface {
	Uint64(gpa uint64) (uint64, error)
}

// pageWalk translates va as an instruction fetch through the guest's
// tables at cr3, and says what each level held.
func pageWalk(mem uint64Reader, efer, cr4, cr3, va uint64) string {
	var b strings.Builder
	t := walk(mem, efer, cr4, cr3, va, func(name string, e uint64) { fmt.Fprintf(&b, " %s=%#x", name, e) })
	switch {
	case t.why == notLongMode:
		return "not in long mode"
	case t.why == tableOutside:
		return fmt.Sprintf("page walk of %#x:%s %s at %#x: outside guest RAM", va, b.String(), t.name, t.at)
	case t.why == notPresent:
		return fmt.Sprintf("page walk of %#x:%s: not present", va, b.String())
	case t.large != "":
		fmt.Fprintf(&b, " (%s page)", t.large)
	}
	return fmt.Sprintf("page walk of %#x:%s", va, b.String()) + walkResult(t.gpa, t.nx, t.user)
}

// translation is the outcome of a walk: the guest-physical address and
// what the levels allowed, or why there is none.
type translation struct {
	gpa      uint64
	nx, user bool
	large    string // "2M" or "1G" for a large page
	why      walkFailure
	name     string // the level that failed: outside RAM or not present
	at       uint64 // the entry's address, for tableOutside
}

type walkFailure int

const (
	translated walkFailure = iota
	notLongMode
	tableOutside
	notPresent
)

// walk translates va through the guest's 4- or 5-level tables at cr3,
// calling visit with each level's name and entry as it reads them. Every
// entry is read through mem, which refuses addresses outside guest RAM.
func walk(mem uint64Reader, efer, cr4, cr3, va uint64, visit func(name string, e uint64)) translation {
	if efer&efer64 == 0 {
		return translation{why: notLongMode}
	}
	names := []string{"pml4e", "pdpte", "pde", "pte"}
	if cr4&cr4LA57 != 0 { // 5-level paging: one level more on top
		names = append([]string{"pml5e"}, names...)
	}
	table := cr3 & pteAddrMask
	t := translation{user: true} // user: every level lets user mode in
	for i, name := range names {
		level := i - (len(names) - 4) // 0 for the PML4, -1 for the PML5
		shift := uint(39 - 9*level)
		addr := table + 8*((va>>shift)&511)
		e, err := mem.Uint64(addr)
		if err != nil {
			return translation{why: tableOutside, name: name, at: addr}
		}
		if visit != nil {
			visit(name, e)
		}
		if e&ptePresent == 0 {
			return translation{why: notPresent, name: name}
		}
		t.nx = t.nx || e&pteNX != 0
		t.user = t.user && e&pteUser != 0
		if (level == 1 || level == 2) && e&pteLarge != 0 {
			size := uint64(1) << shift
			t.gpa = e&pteAddrMask&^(size-1) | va&(size-1)
			t.large = map[int]string{1: "1G", 2: "2M"}[level]
			return t
		}
		table = e & pteAddrMask
	}
	t.gpa = table | va&0xfff
	return t
}

func walkResult(gpa uint64, nx, user bool) string {
	what := "executable"
	if nx {
		what = "no-execute"
	}
	if user {
		what += ", user" // which SMEP forbids the kernel to execute
	}
	return fmt.Sprintf(": gpa %#x, present, %s", gpa, what)
}
