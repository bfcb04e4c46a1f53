package machine

import (
	"fmt"
	"strings"
)

// A guest stuck in its kernel (spinning with interrupts off on a lock,
// or halted waiting for something) shows in a dump where it is (RIP), but
// not how it got there. guestStack reads the words at the top of the
// vCPU's stack and lists those that point into the kernel's image or its
// modules: the return addresses of its call chain, among stale ones and
// pointers to the kernel's own data (a static lock's address). The kernel's text
// is at a random offset (KASLR); the IDT's first gate, the divide error
// handler, is at a fixed distance from its start, so a reader holding the
// same kernel's /proc/kallsyms finds the offset and names every address
// (docs/TESTING.md, "Naming a guest kernel's addresses").

// stackWords is how many 8-byte words of the stack a dump reads: an
// interrupt handler's frames and the code it interrupted fit in 512 bytes
// in the cases this is for.
const stackWords = 64

// The kernel image (text and data) and modules on x86-64, above the
// direct map and vmalloc space.
const (
	kernelStart = 0xffffffff80000000
	kernelEnd   = 0xffffffffff000000
)

// guestStack describes the stack at rsp and the IDT's first gate (when
// the IDT has one and it points into the kernel: a Linux guest's) of a
// vCPU in long mode, in kernel mode (cpl 0); "" otherwise. Linux keeps
// both 8-byte aligned; a word that is not is not read (its last bytes
// could be on another page).
func guestStack(mem uint64Reader, efer, cr4, cr3 uint64, cpl uint8, rsp, idt uint64, idtLimit uint16) string {
	if efer&efer64 == 0 || cpl != 0 {
		return ""
	}
	var b strings.Builder
	page, gpa, ok := ^uint64(0), uint64(0), false
	read := func(va uint64) (uint64, bool) {
		if va&7 != 0 {
			return 0, false
		}
		if va&^0xfff != page {
			page = va &^ 0xfff
			t := walk(mem, efer, cr4, cr3, page, nil)
			gpa, ok = t.gpa, t.why == translated
		}
		if !ok {
			return 0, false
		}
		v, err := mem.Uint64(gpa | va&0xfff)
		return v, err == nil
	}
	words := 0
	for ; words < stackWords; words++ {
		v, ok := read(rsp + 8*uint64(words))
		if !ok {
			break
		}
		if v >= kernelStart && v < kernelEnd {
			fmt.Fprintf(&b, " +%#x=%#x", 8*words, v)
		}
	}
	s := fmt.Sprintf("stack at rsp, kernel addresses in %d words:%s", words, b.String())
	if b.Len() == 0 {
		s += " none"
	}
	// A 16-byte interrupt gate: the handler's offset in bits 0-15 and
	// 48-63 of the first word and 0-31 of the second.
	if idtLimit < 15 {
		return s
	}
	lo, ok1 := read(idt)
	hi, ok2 := read(idt + 8)
	if h := lo&0xffff | (lo>>48&0xffff)<<16 | (hi&0xffffffff)<<32; ok1 && ok2 && h >= kernelStart && h < kernelEnd {
		s += fmt.Sprintf("; idt0=%#x", h)
	}
	return s
}
