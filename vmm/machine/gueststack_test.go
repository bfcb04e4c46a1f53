package machine

import "testing"

// TestGuestStack: the words of a kernel stack that point into the
// kernel's image are listed with their offsets from rsp, across a page
// boundary, up to the first word outside guest RAM; the IDT's first gate
// gives the divide error handler's address; user mode and a stack in no
// page give what can be said.
func TestGuestStack(t *testing.T) {
	const (
		rsp = 0xff34653800003fe8 // 3 words before a page boundary
		idt = 0xfffffe0000000000
	)
	idx := func(va uint64, level uint) uint64 { return (va >> (39 - 9*level)) & 511 }
	ram := fakeRAM{}
	// rsp's two pages are 4K pages at 0x10000 and 0x20000; the IDT is
	// in a 2M page at 0x400000.
	for _, m := range []struct{ va, gpa uint64 }{{rsp &^ 0xfff, 0x10000}, {rsp&^0xfff + 0x1000, 0x20000}} {
		ram[0x1000+8*idx(m.va, 0)] = 0x2000 | ptePresent
		ram[0x2000+8*idx(m.va, 1)] = 0x3000 | ptePresent
		ram[0x3000+8*idx(m.va, 2)] = 0x4000 | ptePresent
		ram[0x4000+8*idx(m.va, 3)] = m.gpa | ptePresent
	}
	ram[0x1000+8*idx(idt, 0)] = 0x5000 | ptePresent
	ram[0x5000+8*idx(idt, 1)] = 0x6000 | ptePresent
	ram[0x6000+8*idx(idt, 2)] = 0x400000 | ptePresent | pteLarge
	// The divide error gate of a handler at 0xffffffffa4a01230.
	ram[0x400000] = 0xa4a0_8e00_0010_1230
	ram[0x400008] = 0xffffffff
	words := []uint64{0x1, 0xffffffffa3818749, 0xff172e330f231980, 0xffffffffa3a00de7, 0xffffffffc0683dcc}
	for i, w := range words {
		va := uint64(rsp) + 8*uint64(i)
		page := uint64(0x10000)
		if va&^0xfff != rsp&^0xfff {
			page = 0x20000
		}
		ram[page|va&0xfff] = w
	}
	got := guestStack(ram, efer64, 0, 0x1000, 0, rsp, idt, 4095)
	want := "stack at rsp, kernel addresses in 5 words: +0x8=0xffffffffa3818749 +0x18=0xffffffffa3a00de7 +0x20=0xffffffffc0683dcc; idt0=0xffffffffa4a01230"
	if got != want {
		t.Errorf("kernel stack:\n got %s\nwant %s", got, want)
	}
	if got := guestStack(ram, efer64, 0, 0x1000, 3, rsp, idt, 4095); got != "" {
		t.Errorf("user mode: %q", got)
	}
	if got := guestStack(ram, 0, 0, 0x1000, 0, rsp, idt, 4095); got != "" {
		t.Errorf("not in long mode: %q", got)
	}
	if got, want := guestStack(ram, efer64, 0, 0x1000, 0, 0xffff888000000000, 0xffff888000000000, 4095), "stack at rsp, kernel addresses in 0 words: none"; got != want {
		t.Errorf("unmapped stack: %q, want %q", got, want)
	}
	// No IDT (limit 0), or an unaligned stack: nothing read there.
	if got, want := guestStack(ram, efer64, 0, 0x1000, 0, rsp+1, idt, 0), "stack at rsp, kernel addresses in 0 words: none"; got != want {
		t.Errorf("unaligned stack, no IDT: %q, want %q", got, want)
	}
}
