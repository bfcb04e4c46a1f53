package main

import (
	"slices"
	"strings"
	"testing"
)

// TestName: a dumped boot's addresses are named by their distance from
// its divide error handler (idt0), in this boot's symbols, data marked as
// such; module addresses are not named, and without idt0 nothing is.
func TestName(t *testing.T) {
	kallsyms := `ffffffffada00000 T _text
ffffffffad9ff000 t below_text
ffffffffaea18680 T native_queued_spin_lock_slowpath
ffffffffaea18900 t __pv_queued_spin_unlock
ffffffffaf000100 T asm_exc_divide_error
ffffffffaf000200 T asm_exc_debug
ffffffffb0000000 D init_task
ffffffffb0200000 b some_lock
ffffffffc0683000 t virtblk_done	[virtio_blk]
0000000000000000 A fixed_percpu_data
`
	tab, err := readSymbols(strings.NewReader(kallsyms))
	if err != nil {
		t.Fatal(err)
	}
	// The dumped boot's text was 0x1200000 below this one's.
	got, err := tab.name([]string{"idt0=0xffffffffade00100", "0xffffffffad8186e9", "0xffffffffade00210", "0xffffffffc0683dcc", "0xffffffffaee00040"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"0xffffffffad8186e9: native_queued_spin_lock_slowpath+0x69",
		"0xffffffffade00210: asm_exc_debug+0x10",
		"0xffffffffc0683dcc: in a module's text (modules move independently)",
		"0xffffffffaee00040: init_task+0x40 (data)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("named:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := tab.name([]string{"0xffffffffad8186e9"}); err == nil {
		t.Error("named without idt0")
	}
	if _, err := tab.name([]string{"idt0=banana"}); err == nil {
		t.Error("accepted a non-address")
	}
	if _, err := readSymbols(strings.NewReader("0000000000000000 T _text\n")); err == nil {
		t.Error("accepted kallsyms without addresses (kptr_restrict)")
	}
}
