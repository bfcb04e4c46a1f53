package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// synthPhdr is one program header of a synthetic vmlinux.
type synthPhdr struct {
	typ, flags    uint32
	off, paddr    uint64
	filesz, memsz uint64
	vaddr         uint64
}

// synthSegments are shaped like Debian's 6.1 vmlinux, but tiny: text
// (executable, the entry at its start), data, the per-CPU segment (linked
// at virtual 0), and data with a .bss tail; then a note.
func synthSegments() []synthPhdr {
	return []synthPhdr{
		{typ: ptLoad, flags: pfExec | 4, off: 0x200, paddr: 16 * mib, filesz: 0x200, memsz: 0x200, vaddr: 0xffffffff81000000},
		{typ: ptLoad, flags: 6, off: 0x400, paddr: 18 * mib, filesz: 0x100, memsz: 0x100, vaddr: 0xffffffff81200000},
		{typ: ptLoad, flags: 6, off: 0x500, paddr: 18*mib + 0x1000, filesz: 0x80, memsz: 0x100},
		{typ: ptLoad, flags: 7, off: 0x600, paddr: 20 * mib, filesz: 0x100, memsz: 0x300, vaddr: 0xffffffff81400000},
		{typ: 4, off: 0x220, paddr: 16*mib + 0x20, filesz: 0x20, memsz: 0x20},
	}
}

const synthVmlinuxLen = 0x700

// synthVmlinux builds an ELF vmlinux that ParseVmlinux accepts, entry at
// the text's start; edit, if not nil, changes it before it is returned.
func synthVmlinux(phdrs []synthPhdr, edit func(img []byte)) []byte {
	le := binary.LittleEndian
	img := make([]byte, synthVmlinuxLen)
	copy(img, elfMagic)
	img[4], img[5], img[6] = elfClass64, elfData2LSB, elfVersion1
	le.PutUint16(img[16:], elfTypeExec)
	le.PutUint16(img[18:], elfMachineX8)
	le.PutUint32(img[20:], 1)
	le.PutUint64(img[24:], 16*mib) // entry: phys_startup_64
	le.PutUint64(img[32:], elfHeaderLen)
	le.PutUint16(img[52:], elfHeaderLen)
	le.PutUint16(img[54:], elfPhdrLen)
	le.PutUint16(img[56:], uint16(len(phdrs)))
	for i, p := range phdrs {
		ph := img[elfHeaderLen+i*elfPhdrLen:]
		le.PutUint32(ph[0:], p.typ)
		le.PutUint32(ph[4:], p.flags)
		le.PutUint64(ph[8:], p.off)
		le.PutUint64(ph[16:], p.vaddr)
		le.PutUint64(ph[24:], p.paddr)
		le.PutUint64(ph[32:], p.filesz)
		le.PutUint64(ph[40:], p.memsz)
		le.PutUint64(ph[48:], 0x1000)
	}
	for i := 0x200; i < len(img); i++ {
		img[i] = byte(i*13 + 1)
	}
	if edit != nil {
		edit(img)
	}
	return img
}

func TestParseVmlinux(t *testing.T) {
	img := synthVmlinux(synthSegments(), nil)
	k, err := ParseKernel(img)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Vmlinux || k.Entry() != 16*mib || k.Code != nil {
		t.Errorf("vmlinux %v entry 0x%X code %d bytes", k.Vmlinux, k.Entry(), len(k.Code))
	}
	if len(k.segments) != 4 {
		t.Fatalf("%d segments, want the 4 PT_LOAD", len(k.segments))
	}
	if k.End() != 20*mib+0x300 {
		t.Errorf("End = 0x%X, want the last segment's end 0x%X", k.End(), 20*mib+0x300)
	}
	// The header the loader gives it: what the kernel and tools read.
	le := binary.LittleEndian
	h := func(off int) []byte { return k.Header[off-offSetupSects:] }
	if le.Uint16(h(offBootFlag)) != bootFlag || le.Uint32(h(offHeaderMagic)) != headerMagic ||
		le.Uint16(h(offVersion)) != 0x020F || le.Uint32(h(offCmdlineSize)) != 2047 || k.CmdlineSize != 2047 {
		t.Errorf("synthesised header % x", k.Header)
	}

	// Loaded: each segment at its physical address, .bss zero, entered at
	// the ELF's entry, the RSDP passed (protocol 2.15).
	mem := newFakeMem(64 * mib)
	for _, p := range synthSegments() {
		if p.typ == ptLoad && p.memsz > p.filesz {
			stale := mem.read(p.paddr+p.filesz, p.memsz-p.filesz)
			for i := range stale {
				stale[i] = 0xEE
			}
		}
	}
	cpu, err := Load(mem, k, Config{RAMSize: 64 * mib, Initrd: []byte("initrd"), Cmdline: "console=ttyS0", RSDP: layout.ACPIStart})
	if err != nil {
		t.Fatal(err)
	}
	if cpu.RIP != 16*mib {
		t.Errorf("RIP = 0x%X, want the ELF entry 0x%X", cpu.RIP, 16*mib)
	}
	for _, p := range synthSegments()[:4] {
		got := mem.read(p.paddr, p.filesz)
		if !bytes.Equal(got, img[p.off:p.off+p.filesz]) {
			t.Errorf("segment at 0x%X does not hold its file bytes", p.paddr)
		}
		if tail := mem.read(p.paddr+p.filesz, p.memsz-p.filesz); p.memsz > p.filesz && !bytes.Equal(tail, make([]byte, len(tail))) {
			t.Errorf("segment at 0x%X: bytes past its file data are not zero", p.paddr)
		}
	}
	bp := bootParams(mem)
	if le.Uint16(bp[offVersion:]) != 0x020F || bp[offTypeOfLoader] != loaderUnknown ||
		le.Uint64(bp[bpAcpiRsdpAddr:]) != layout.ACPIStart || le.Uint32(bp[offCmdLinePtr:]) != layout.CmdlineAddr {
		t.Errorf("boot_params: version 0x%X loader 0x%X rsdp 0x%X cmdline 0x%X", le.Uint16(bp[offVersion:]),
			bp[offTypeOfLoader], le.Uint64(bp[bpAcpiRsdpAddr:]), le.Uint32(bp[offCmdLinePtr:]))
	}
	if initrd := le.Uint32(bp[offRamdiskImage:]); uint64(initrd) < k.End() {
		t.Errorf("initrd at 0x%X, inside the kernel (end 0x%X)", initrd, k.End())
	}
}

func TestParseVmlinuxErrors(t *testing.T) {
	le := binary.LittleEndian
	seg := func(edit func(p []synthPhdr)) []synthPhdr {
		p := synthSegments()
		edit(p)
		return p
	}
	for _, tc := range []struct {
		name  string
		img   []byte
		error string
	}{
		{"truncated", synthVmlinux(synthSegments(), nil)[:40], "truncated: the ELF header"},
		{"32-bit", synthVmlinux(synthSegments(), func(b []byte) { b[4] = 1 }), "want a 64-bit little-endian ELF"},
		{"big-endian", synthVmlinux(synthSegments(), func(b []byte) { b[5] = 2 }), "want a 64-bit little-endian ELF"},
		{"ELF version", synthVmlinux(synthSegments(), func(b []byte) { b[20] = 2 }), "ELF version 2"},
		{"shared object", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint16(b[16:], 3) }), "want an x86-64 executable"},
		{"arm64", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint16(b[18:], 183) }), "want an x86-64 executable"},
		{"phentsize", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint16(b[54:], 32) }), "program header size 32"},
		{"no phdrs", synthVmlinux(nil, nil), "0 program headers"},
		{"phdrs beyond", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint64(b[32:], synthVmlinuxLen-100) }), "truncated: 5 program headers"},
		{"phoff huge", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint64(b[32:], 1<<63) }), "truncated: 5 program headers"},
		{"segment beyond file", synthVmlinux(seg(func(p []synthPhdr) { p[1].filesz = synthVmlinuxLen }), nil), "beyond the file"},
		{"segment offset wraps", synthVmlinux(seg(func(p []synthPhdr) { p[1].off = 1<<64 - 0x100 }), nil), "beyond the file"},
		{"filesz > memsz", synthVmlinux(seg(func(p []synthPhdr) { p[1].memsz = 0x80 }), nil), "exceed its memory size"},
		{"low memory", synthVmlinux(seg(func(p []synthPhdr) { p[1].paddr = layout.BootParams }), nil), "where the boot structures are"},
		{"above 4 GiB", synthVmlinux(seg(func(p []synthPhdr) { p[3].paddr = 1<<32 - 0x100 }), nil), "above 4 GiB"},
		{"memsz wraps", synthVmlinux(seg(func(p []synthPhdr) { p[3].memsz = 1<<64 - 0x1000 }), nil), "above 4 GiB"},
		{"overlap", synthVmlinux(seg(func(p []synthPhdr) { p[2].paddr = 18*mib + 0x80 }), nil), "overlaps"},
		{"no PT_LOAD", synthVmlinux(seg(func(p []synthPhdr) {
			for i := range p {
				p[i].typ = 4
			}
		}), nil), "no loadable segment"},
		{"entry outside", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint64(b[24:], 0xffffffff81000000) }), "entry point 0xFFFFFFFF81000000 is not"},
		{"entry in data", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint64(b[24:], 18*mib) }), "entry point 0x1200000 is not"},
		{"entry in bss", synthVmlinux(synthSegments(), func(b []byte) { le.PutUint64(b[24:], 20*mib+0x200) }), "entry point 0x1400200 is not"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKernel(tc.img)
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Fatalf("err = %v, want one containing %q", err, tc.error)
			}
		})
	}
	if _, err := ParseKernel(bytes.Repeat([]byte("MZ not a kernel "), 64)); err == nil ||
		!strings.Contains(err.Error(), "not a bzImage") || !strings.Contains(err.Error(), "nor an ELF vmlinux") {
		t.Errorf("garbage: %v", err)
	}
}

// TestVmlinuxSeedCorpus keeps the committed fuzz seeds meaningful.
func TestVmlinuxSeedCorpus(t *testing.T) {
	want := map[string]string{
		"valid":         "",
		"overlap":       "overlaps",
		"entry-outside": "is not in the file bytes",
		"truncated":     "truncated: 5 program headers",
	}
	checkSeeds(t, "FuzzParseVmlinux", want, func(b []byte) error { _, err := ParseVmlinux(b); return err })
}

// FuzzParseVmlinux: any input is an error or a kernel whose segments Go's
// own ELF reader agrees with, and which Load places or refuses as MinRAM
// says.
func FuzzParseVmlinux(f *testing.F) {
	f.Add(synthVmlinux(synthSegments(), nil))
	mem := newFakeMem(64 * mib)
	f.Fuzz(func(t *testing.T, img []byte) {
		k, err := ParseVmlinux(img)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
			return
		}
		// Sections do not matter to a loader: Go's reader sees the
		// file without them.
		noSections := bytes.Clone(img)
		clear(noSections[40:48]) // e_shoff
		clear(noSections[60:64]) // e_shnum, e_shstrndx
		ef, err := elf.NewFile(bytes.NewReader(noSections))
		if err != nil {
			t.Fatalf("accepted a file debug/elf refuses: %v", err)
		}
		if ef.Entry != k.Entry() || ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
			t.Fatalf("debug/elf: entry 0x%X class %v machine %v; parsed entry 0x%X", ef.Entry, ef.Class, ef.Machine, k.Entry())
		}
		var loads []*elf.Prog
		for _, p := range ef.Progs {
			if p.Type == elf.PT_LOAD && p.Memsz > 0 {
				loads = append(loads, p)
			}
		}
		if len(loads) != len(k.segments) {
			t.Fatalf("debug/elf sees %d loadable segments, parsed %d", len(loads), len(k.segments))
		}
		for i, p := range loads {
			s := k.segments[i]
			if s.addr != p.Paddr || s.size != p.Memsz || uint64(len(s.data)) != p.Filesz ||
				!bytes.Equal(s.data, img[p.Off:p.Off+p.Filesz]) {
				t.Fatalf("segment %d: parsed [0x%X +0x%X, %d file bytes], debug/elf %+v", i, s.addr, s.size, len(s.data), p.ProgHeader)
			}
		}
		loadKeepsMinRAM(t, mem, k)
	})
}

func BenchmarkParseVmlinux(b *testing.B) {
	img := synthVmlinux(synthSegments(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseVmlinux(img); err != nil {
			b.Fatal(err)
		}
	}
}
