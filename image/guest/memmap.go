package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// memmapAction reports the guest's physical memory map as the firmware
// (the VMM's e820 table) gave it, before mem= on the kernel command line
// cut what the kernel uses: "guest: memmap <start>-<end> <type>" per
// range (hex, end inclusive, from /sys/firmware/memmap) and "guest:
// memmap ram=<bytes>", the sum of the System RAM ranges. Then, with
// hyperroot.probe=<hex address>, it writes a pattern into the page at that
// physical address through /dev/mem and reads it back ("guest: memmap
// probe <addr> ok" or a failure): RAM the kernel was told not to use is
// not System RAM to it, so /dev/mem reaches it.
func memmapAction(seed uint64) error {
	dirs, err := filepath.Glob("/sys/firmware/memmap/*")
	if err != nil || len(dirs) == 0 {
		return fmt.Errorf("no /sys/firmware/memmap (%v)", err)
	}
	type rng struct {
		start, end uint64
		typ        string
	}
	var rs []rng
	read := func(dir, name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b))
	}
	for _, d := range dirs {
		start, err1 := strconv.ParseUint(strings.TrimPrefix(read(d, "start"), "0x"), 16, 64)
		end, err2 := strconv.ParseUint(strings.TrimPrefix(read(d, "end"), "0x"), 16, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("memmap %s: %v %v", d, err1, err2)
		}
		rs = append(rs, rng{start, end, read(d, "type")})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
	var ram uint64
	for _, r := range rs {
		fmt.Printf("guest: memmap %#x-%#x %s\n", r.start, r.end, r.typ)
		if r.typ == "System RAM" {
			ram += r.end - r.start + 1
		}
	}
	fmt.Printf("guest: memmap ram=%d\n", ram)
	if p := cmdlineString("probe"); p != "" {
		addr, err := strconv.ParseUint(strings.TrimPrefix(p, "0x"), 16, 64)
		if err != nil {
			return fmt.Errorf("probe %q: %v", p, err)
		}
		if err := probePage(addr, seed); err != nil {
			return fmt.Errorf("probe %#x: %v", addr, err)
		}
		fmt.Printf("guest: memmap probe %#x ok\n", addr)
	}
	return nil
}

// probePage writes a pattern into the page at physical address addr and
// reads it back, through a fresh mapping of /dev/mem each time.
func probePage(addr, seed uint64) error {
	const page = 4096
	addr &^= page - 1
	f, err := os.OpenFile("/dev/mem", os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	mapPage := func() ([]byte, error) {
		return unix.Mmap(int(f.Fd()), int64(addr), page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	m, err := mapPage()
	if err != nil {
		return err
	}
	for i := 0; i < page; i += 8 {
		binary.LittleEndian.PutUint64(m[i:], seed^addr^uint64(i))
	}
	unix.Munmap(m)
	if m, err = mapPage(); err != nil {
		return err
	}
	defer unix.Munmap(m)
	for i := 0; i < page; i += 8 {
		if got, want := binary.LittleEndian.Uint64(m[i:]), seed^addr^uint64(i); got != want {
			return fmt.Errorf("offset %d: read %#x, wrote %#x", i, got, want)
		}
	}
	return nil
}
