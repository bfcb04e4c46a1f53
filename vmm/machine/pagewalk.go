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
	if efer&efer64 == 0 {
		return "not in long mode"
	}
	names := []string{"pml4e", "pdpte", "pde", "pte"}
	if cr4&cr4LA57 != 0 { // 5-level paging: one level more on top
		names = append([]string{"pml5e"}, names...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "page walk of %#x:", va)
	table := cr3 & pteAddrMask
	nx, user := false, true // user: every level lets user mode in
	for i, name := range names {
		level := i - (len(names) - 4) // 0 for the PML4, -1 for the PML5
		shift := uint(39 - 9*level)
		addr := table + 8*((va>>shift)&511)
		e, err := mem.Uint64(addr)
		if err != nil {
			fmt.Fprintf(&b, " %s at %#x: outside guest RAM", name, addr)
			return b.String()
		}
		fmt.Fprintf(&b, " %s=%#x", name, e)
		if e&ptePresent == 0 {
			b.WriteString(": not present")
			return b.String()
		}
		nx = nx || e&pteNX != 0
		user = user && e&pteUser != 0
		if (level == 1 || level == 2) && e&pteLarge != 0 {
			size := uint64(1) << shift
			gpa := e&pteAddrMask&^(size-1) | va&(size-1)
			fmt.Fprintf(&b, " (%s page)", map[int]string{1: "1G", 2: "2M"}[level])
			return b.String() + walkResult(gpa, nx, user)
		}
		table = e & pteAddrMask
	}
	return b.String() + walkResult(table|va&0xfff, nx, user)
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
