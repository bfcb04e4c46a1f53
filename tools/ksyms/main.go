// Command ksyms names a guest kernel's addresses from a VMM dump. A dump
// of a vCPU stuck in its kernel lists the words on its stack that point
// into the kernel (its code: return addresses; its data: marked so) and
// the IDT's first gate (`idt0=`, the divide
// error handler); the kernel's text sits at a random offset (KASLR) that
// differs from boot to boot, but every symbol's distance from that
// handler does not. Run in an appliance booted with the guest's kernel
// (the image's guests run the appliance's own), it reads this boot's
// /proc/kallsyms, moves each address by the difference between the
// dump's idt0 and this boot's handler, and prints the symbol it falls in.
//
// Usage, as the appliance's hyperroot.run job (arguments comma-separated):
//
//	CGO_ENABLED=0 go build -o /tmp/ov/ksyms/ksyms ./tools/ksyms
//	echo 'vms: []' > /tmp/none.yaml
//	go run ./tools/runner -oneshot -overlay /tmp/ov -config /tmp/none.yaml \
//	    -append "hyperroot.run=/ksyms/ksyms,idt0=0xffffffffa4a01230,0xffffffffa3818749"
//
// Without arguments it answers queries typed on the appliance's console
// ("@run idt0=ADDR ADDR ..."), one a line, until "@run exit": the
// end-to-end test TestDumpGuestStack names a running guest's stack so.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// divideError is the IDT's vector 0 handler in Linux 5.8 and later.
const divideError = "asm_exc_divide_error"

func main() {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		fmt.Fprintf(os.Stderr, "ksyms: %v\n", err)
		os.Exit(1)
	}
	t, err := readSymbols(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ksyms: %v\n", err)
		os.Exit(1)
	}
	if len(os.Args) > 1 {
		if !t.answer(os.Args[1:]) {
			os.Exit(2)
		}
		return
	}
	// No arguments: one query a line on standard input (the appliance's
	// console's "@run idt0=ADDR ADDR ..."), until "exit" or its end.
	fmt.Println("ksyms: ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		q := strings.Fields(sc.Text())
		if len(q) == 1 && q[0] == "exit" {
			return
		}
		if len(q) > 0 {
			t.answer(q)
		}
	}
}

// answer prints the names of a query's addresses, or why there are none.
func (t table) answer(q []string) bool {
	lines, err := t.name(q)
	for _, l := range lines {
		fmt.Println("ksyms:", l)
	}
	if err != nil {
		fmt.Println("ksyms: error:", err)
		return false
	}
	return true
}

type symbol struct {
	addr uint64
	name string
	data bool // a data symbol (kallsyms types d, b, r): a pointer, not a return address
}

// table is a boot's symbols, code and data, by address.
type table []symbol

// readSymbols reads /proc/kallsyms' code and data symbols ("ffffffff81000000
// T _text", a module's with " [module]" after the name). Addresses read
// as zero (kptr_restrict) are refused: nothing could be named.
func readSymbols(r io.Reader) (table, error) {
	var t table
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.ContainsAny(f[1], "tTwWdDbBrR") {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		name := f[2]
		if len(f) > 3 {
			name += " " + f[3]
		}
		t = append(t, symbol{a, name, strings.ContainsAny(f[1], "dDbBrR")})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t) == 0 {
		return nil, errors.New("no symbols with addresses in /proc/kallsyms (kptr_restrict?)")
	}
	sort.Slice(t, func(i, j int) bool { return t[i].addr < t[j].addr })
	return t, nil
}

// moduleStart is where x86-64 loads modules: their addresses move
// independently of the kernel's text, by load order and a random offset
// of their own, so a dumped one cannot be named from another boot.
const moduleStart = 0xffffffffc0000000

// name names each address in args, moved by the distance between the
// "idt0=ADDR" among them (the dumped boot's handler) and this boot's.
func (t table) name(args []string) ([]string, error) {
	var here uint64
	for _, s := range t {
		if s.name == divideError {
			here = s.addr
		}
	}
	if here == 0 {
		return nil, fmt.Errorf("no %s in this kernel's symbols", divideError)
	}
	var shift uint64 // added to a dumped address: this boot's minus the dump's
	var addrs []uint64
	haveIDT := false
	for _, a := range args {
		v, isIDT := strings.CutPrefix(a, "idt0=")
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("%q: not an address", a)
		}
		if isIDT {
			shift, haveIDT = here-n, true
			continue
		}
		addrs = append(addrs, n)
	}
	if !haveIDT {
		return nil, errors.New("no idt0=ADDR: the dumped boot's offset is unknown")
	}
	var out []string
	for _, a := range addrs {
		if a >= moduleStart {
			out = append(out, fmt.Sprintf("%#x: in a module's text (modules move independently)", a))
			continue
		}
		at := a + shift
		i := sort.Search(len(t), func(i int) bool { return t[i].addr > at }) - 1
		if i < 0 || t[i].addr >= moduleStart {
			out = append(out, fmt.Sprintf("%#x: outside the kernel's text", a))
			continue
		}
		what := ""
		if t[i].data {
			what = " (data)"
		}
		out = append(out, fmt.Sprintf("%#x: %s+%#x%s", a, t[i].name, at-t[i].addr, what))
	}
	return out, nil
}
