package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

func mustKernel(t testing.TB, edit func([]byte)) *Kernel {
	t.Helper()
	k, err := ParseBzImage(synthImage(edit))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) ^ seed
	}
	return b
}

// bootParams reads the zero page Load wrote.
func bootParams(m *fakeMem) []byte { return m.read(layout.BootParams, bootParamsSize) }

type e820Want struct {
	addr, size uint64
	typ        uint32
}

func readE820(bp []byte) []e820Want {
	le := binary.LittleEndian
	var out []e820Want
	for i := range int(bp[0x1E8]) {
		e := bp[0x2D0+20*i:]
		out = append(out, e820Want{le.Uint64(e), le.Uint64(e[8:]), le.Uint32(e[16:])})
	}
	return out
}

func TestLoadBootParams(t *testing.T) {
	le := binary.LittleEndian
	k := mustKernel(t, nil)
	mem := newFakeMem(256 * mib)
	initrd := pattern(10000, 0x5A)
	const cmdline = "console=ttyS0 root=/dev/vda"
	if _, err := Load(mem, k, Config{RAMSize: 256 * mib, Cmdline: cmdline, Initrd: initrd, RSDP: 0xE0000}); err != nil {
		t.Fatal(err)
	}
	bp := bootParams(mem)

	// Initrd: as high as possible in 256 MiB, page aligned.
	wantInitrd := uint64(256*mib - 3*4096) // 10000 bytes round to 3 pages below the top
	u32 := []struct {
		name string
		off  int
		want uint32
	}{
		{"cmd_line_ptr", 0x228, layout.CmdlineAddr},
		{"ext_cmd_line_ptr", 0x0C8, 0},
		{"ramdisk_image", 0x218, uint32(wantInitrd)},
		{"ext_ramdisk_image", 0x0C0, 0},
		{"ramdisk_size", 0x21C, 10000},
		{"ext_ramdisk_size", 0x0C4, 0},
		{"header magic", 0x202, 0x53726448},
		{"kernel_alignment (copied)", 0x230, synthAlign},
		{"init_size (copied)", 0x260, synthInitSize},
		{"cmdline_size (copied)", 0x238, synthCmdlineSize},
		{"initrd_addr_max (copied)", 0x22C, 0x7FFFFFFF},
	}
	for _, f := range u32 {
		if got := le.Uint32(bp[f.off:]); got != f.want {
			t.Errorf("%s at 0x%X = 0x%X, want 0x%X", f.name, f.off, got, f.want)
		}
	}
	u8 := []struct {
		name string
		off  int
		want byte
	}{
		{"setup_sects (copied)", 0x1F1, synthSetupSects},
		{"type_of_loader", 0x210, 0xFF},
		{"loadflags", 0x211, 0x81}, // LOADED_HIGH from the image, CAN_USE_HEAP from us
		{"sentinel", 0x1EF, 0},
		{"e820_entries", 0x1E8, 3},
	}
	for _, f := range u8 {
		if got := bp[f.off]; got != f.want {
			t.Errorf("%s at 0x%X = 0x%X, want 0x%X", f.name, f.off, got, f.want)
		}
	}
	if got := le.Uint16(bp[0x224:]); got != 0xFE00 {
		t.Errorf("heap_end_ptr = 0x%X, want 0xFE00", got)
	}
	if got := le.Uint64(bp[0x070:]); got != 0xE0000 {
		t.Errorf("acpi_rsdp_addr = 0x%X, want 0xE0000", got)
	}
	if got := le.Uint64(bp[0x250:]); got != 0 {
		t.Errorf("setup_data = 0x%X, want 0", got)
	}

	wantE820 := []e820Want{
		{0, 0x9FC00, 1},
		{0x9FC00, 0x100000 - 0x9FC00, 2},
		{0x100000, 255 * mib, 1},
	}
	if got := readE820(bp); !equalE820(got, wantE820) {
		t.Errorf("e820 = %x, want %x", got, wantE820)
	}

	if got := mem.read(layout.CmdlineAddr, uint64(len(cmdline)+1)); string(got) != cmdline+"\x00" {
		t.Errorf("command line = %q", got)
	}
	if got := mem.read(wantInitrd, uint64(len(initrd))); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	if got := mem.read(layout.KernelLoad, uint64(len(k.Code))); !bytes.Equal(got, k.Code) {
		t.Error("kernel bytes at KernelLoad differ")
	}
}

func equalE820(a, b []e820Want) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLoadOverwritesStaleBootParams checks the zero page is rewritten whole
// (a rebooted guest leaves junk behind, and the kernel trusts every field).
func TestLoadOverwritesStaleBootParams(t *testing.T) {
	mem := newFakeMem(64 * mib)
	junk := mem.read(layout.BootParams, bootParamsSize)
	for i := range junk {
		junk[i] = 0xEE
	}
	if _, err := Load(mem, mustKernel(t, nil), Config{RAMSize: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	bp := bootParams(mem)
	for _, off := range []int{0x000, 0x070, 0x1EF, 0x218, 0x21C, 0xD00, 0xFFF} {
		if bp[off] != 0 {
			t.Errorf("boot_params[0x%X] = 0x%X, want 0", off, bp[off])
		}
	}
}

func TestLoadInitrdPlacement(t *testing.T) {
	le := binary.LittleEndian
	const initrdLen = 3*mib + 123
	tests := []struct {
		name    string
		ram     uint64
		edit    func([]byte)
		wantTop uint64 // initrd must end within a page below this
	}{
		{"128 MiB", 128 * mib, nil, 128 * mib},
		{"5 GiB guest, Debian's initrd_addr_max", 5 << 30, nil, 2 << 30},
		{"5 GiB guest stays below the hole", 5 << 30, func(b []byte) { le.PutUint32(b[offInitrdAddrMax:], 0xFFFFFFFF) }, layout.MMIO32Start},
		{"initrd_addr_max", 2 << 30, func(b []byte) { le.PutUint32(b[offInitrdAddrMax:], 1<<30-1) }, 1 << 30},
		{"unaligned RAM size", 100*mib + 1234, nil, 100*mib + 1234},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKernel(t, tt.edit)
			mem := newFakeMem(tt.ram)
			initrd := pattern(initrdLen, 1)
			if _, err := Load(mem, k, Config{RAMSize: tt.ram, Initrd: initrd}); err != nil {
				t.Fatal(err)
			}
			bp := bootParams(mem)
			addr := uint64(le.Uint32(bp[0x218:])) | uint64(le.Uint32(bp[0x0C0:]))<<32
			end := addr + initrdLen
			switch {
			case addr%4096 != 0:
				t.Errorf("initrd at 0x%X is not page aligned", addr)
			case end > tt.wantTop || end+4096 <= tt.wantTop:
				t.Errorf("initrd [0x%X, 0x%X) does not end within a page below 0x%X", addr, end, tt.wantTop)
			case addr < k.End():
				t.Errorf("initrd at 0x%X overlaps the kernel, which ends at 0x%X", addr, k.End())
			}
			if got := mem.read(addr, initrdLen); !bytes.Equal(got, initrd) {
				t.Error("initrd bytes differ")
			}
		})
	}
}

func TestLoadE820(t *testing.T) {
	tests := []struct {
		name     string
		ram      uint64
		reserved [][2]uint64
		want     []e820Want
	}{
		{"5 GiB", 5 << 30, nil, []e820Want{
			{0, 0x9FC00, 1}, {0x9FC00, 0x60400, 2}, {0x100000, 0xC0000000 - 0x100000, 1}, {1 << 32, 2 << 30, 1},
		}},
		{"exactly up to the hole", 3 << 30, nil, []e820Want{
			{0, 0x9FC00, 1}, {0x9FC00, 0x60400, 2}, {0x100000, 0xC0000000 - 0x100000, 1},
		}},
		{"ECAM reserved", 64 * mib, [][2]uint64{{layout.ECAMStart, layout.ECAMStart + layout.ECAMSize}}, []e820Want{
			{0, 0x9FC00, 1}, {0x9FC00, 0x60400, 2}, {0x100000, 63 * mib, 1}, {layout.ECAMStart, layout.ECAMSize, 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newFakeMem(tt.ram)
			if _, err := Load(mem, mustKernel(t, nil), Config{RAMSize: tt.ram, Reserved: tt.reserved}); err != nil {
				t.Fatal(err)
			}
			if got := readE820(bootParams(mem)); !equalE820(got, tt.want) {
				t.Errorf("e820 = %x\nwant   %x", got, tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	le := binary.LittleEndian
	long := strings.Repeat("x", synthCmdlineSize+1)
	tests := []struct {
		name string
		edit func([]byte)
		cfg  Config
		want string
		is   error
	}{
		{"RAM below kernel", nil, Config{RAMSize: 16 * mib},
			"guest RAM too small: 16 MiB is not enough, the kernel needs at least 20 MiB", ErrRAMTooSmall},
		{"RAM below kernel and initrd", nil, Config{RAMSize: 21 * mib, Initrd: make([]byte, 5*mib)},
			"guest RAM too small: 21 MiB is not enough, the kernel needs at least 25 MiB with this 5 MiB initrd", ErrRAMTooSmall},
		{"initrd above initrd_addr_max", func(b []byte) { le.PutUint32(b[offInitrdAddrMax:], 32*mib-1) },
			Config{RAMSize: 1 << 30, Initrd: make([]byte, 16*mib)},
			"initrd of 16 MiB does not fit between the kernel's end 0x1400000 and its initrd_addr_max 0x1FFFFFF", nil},
		{"kernel beyond the hole", func(b []byte) { le.PutUint32(b[offInitSize:], 0xC0000000) },
			Config{RAMSize: 8 << 30}, "kernel need RAM up to 0xC1000000, beyond the 3072 MiB below the 32-bit MMIO hole", nil},
		{"cmdline over cmdline_size", nil, Config{RAMSize: 64 * mib, Cmdline: long},
			"command line is 2048 bytes, the kernel accepts at most 2047 (cmdline_size)", nil},
		{"cmdline over buffer", func(b []byte) { le.PutUint32(b[offCmdlineSize:], 1<<20) },
			Config{RAMSize: 64 * mib, Cmdline: strings.Repeat("y", layout.CmdlineMax)},
			"command line is 65536 bytes, at most 65535 fit at 0x20000", nil},
		{"cmdline NUL", nil, Config{RAMSize: 64 * mib, Cmdline: "a\x00b"}, "command line has a NUL byte at offset 1", nil},
		{"empty reserved range", nil, Config{RAMSize: 64 * mib, Reserved: [][2]uint64{{5, 5}}}, "reserved range [0x5, 0x5) is empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newFakeMem(max(tt.cfg.RAMSize, 64*mib))
			_, err := Load(mem, mustKernel(t, tt.edit), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			if len(mem.regions) != 0 {
				t.Errorf("failed Load wrote %d regions; it must validate before writing", len(mem.regions))
			}
		})
	}
}

// A cmdline of exactly cmdline_size bytes is allowed (the NUL is extra).
func TestLoadCmdlineAtLimit(t *testing.T) {
	c := strings.Repeat("z", synthCmdlineSize)
	mem := newFakeMem(64 * mib)
	if _, err := Load(mem, mustKernel(t, nil), Config{RAMSize: 64 * mib, Cmdline: c}); err != nil {
		t.Fatal(err)
	}
	if got := mem.read(layout.CmdlineAddr, synthCmdlineSize+1); string(got) != c+"\x00" {
		t.Error("command line not written with its NUL")
	}
}

func TestLoadRSDPNeedsProtocol214(t *testing.T) {
	k := mustKernel(t, func(b []byte) { binary.LittleEndian.PutUint16(b[offVersion:], 0x020D) })
	mem := newFakeMem(64 * mib)
	if _, err := Load(mem, k, Config{RAMSize: 64 * mib, RSDP: 0xE0000}); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(bootParams(mem)[0x070:]); got != 0 {
		t.Errorf("acpi_rsdp_addr = 0x%X for protocol 2.13, want 0 (field unknown to it)", got)
	}
}

type failingMem struct{}

func (failingMem) Slice(gpa, n uint64) ([]byte, error) { return nil, errors.New("no such memory") }

func TestLoadMemoryError(t *testing.T) {
	_, err := Load(failingMem{}, mustKernel(t, nil), Config{RAMSize: 64 * mib})
	if err == nil || !strings.Contains(err.Error(), "load kernel: write kernel: no such memory") {
		t.Errorf("error = %v", err)
	}
}

// TestMinRAM checks MinRAM against Load itself: the size it names works,
// one MiB less does not.
func TestMinRAM(t *testing.T) {
	k := mustKernel(t, nil)
	for _, n := range []uint64{0, 1, 4096, 5*mib + 3, 40 * mib} {
		need, err := k.MinRAM(n)
		if err != nil {
			t.Fatalf("MinRAM(%d): %v", n, err)
		}
		if need%mib != 0 {
			t.Errorf("MinRAM(%d) = %d, not whole MiB", n, need)
		}
		initrd := make([]byte, n)
		if _, err := Load(newFakeMem(need), k, Config{RAMSize: need, Initrd: initrd}); err != nil {
			t.Errorf("MinRAM(%d) = %d MiB, but Load fails there: %v", n, need/mib, err)
		}
		_, err = Load(newFakeMem(need), k, Config{RAMSize: need - mib, Initrd: initrd})
		if !errors.Is(err, ErrRAMTooSmall) {
			t.Errorf("MinRAM(%d) = %d MiB, but Load with 1 MiB less gives %v", n, need/mib, err)
		}
	}
	if need, _ := k.MinRAM(0); need != synthEnd {
		t.Errorf("MinRAM(0) = 0x%X, want the kernel's footprint end 0x%X", need, synthEnd)
	}
}

func TestCPUState(t *testing.T) {
	mem := newFakeMem(64 * mib)
	cpu, err := Load(mem, mustKernel(t, nil), Config{RAMSize: 64 * mib})
	if err != nil {
		t.Fatal(err)
	}
	u64 := []struct {
		name      string
		got, want uint64
	}{
		{"RIP", cpu.RIP, 0x100200},
		{"RSI", cpu.RSI, layout.BootParams},
		{"RSP", cpu.RSP, layout.StackTop},
		{"RFLAGS", cpu.RFLAGS, 2},
		{"CR3", cpu.CR3, layout.PML4Addr},
		{"CR0 PE|PG", cpu.CR0 & 0x80000001, 0x80000001},
		{"CR0 CD|NW", cpu.CR0 & 0x60000000, 0},
		{"CR4 PAE", cpu.CR4 & 0x20, 0x20},
		{"EFER", cpu.EFER, 0x500},
		{"GDT base", cpu.GDT.Base, layout.GDTAddr},
		{"GDT limit", uint64(cpu.GDT.Limit), 31},
		{"IDT base", cpu.IDT.Base, layout.IDTAddr},
		{"CS selector", uint64(cpu.CS.Selector), 0x10},
		{"SS selector", uint64(cpu.SS.Selector), 0x18},
		{"TR type", uint64(cpu.TR.Type), 0xB},
	}
	for _, c := range u64 {
		if c.got != c.want {
			t.Errorf("%s = 0x%X, want 0x%X", c.name, c.got, c.want)
		}
	}
	if !cpu.CS.L || cpu.CS.DB || !cpu.CS.S || !cpu.CS.Present {
		t.Errorf("CS = %+v, want a present 64-bit code segment", cpu.CS)
	}
	for name, s := range map[string]Segment{"DS": cpu.DS, "ES": cpu.ES, "FS": cpu.FS, "GS": cpu.GS, "SS": cpu.SS} {
		if s != cpu.DS || s.Selector != 0x18 || s.Type != 3 || s.L || !s.Present {
			t.Errorf("%s = %+v, want the flat data segment", name, s)
		}
	}
	if cpu.TR.S || !cpu.TR.Present {
		t.Errorf("TR = %+v, want a present system segment", cpu.TR)
	}

	// The GDT in memory: fixed encodings of the flat 64-bit code and data
	// descriptors, and they match the segment caches the CPU starts with.
	gdt := mem.read(layout.GDTAddr, 32)
	want := []uint64{0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF}
	for i, w := range want {
		if got := binary.LittleEndian.Uint64(gdt[i*8:]); got != w {
			t.Errorf("GDT[%d] = 0x%016X, want 0x%016X", i, got, w)
		}
	}
	for _, s := range []Segment{cpu.CS, cpu.DS} {
		if got := binary.LittleEndian.Uint64(gdt[s.Selector:]); got != s.descriptor() {
			t.Errorf("GDT entry 0x%X = 0x%016X, segment cache encodes 0x%016X", s.Selector, got, s.descriptor())
		}
	}
	if idt := mem.read(layout.IDTAddr, idtSize); !bytes.Equal(idt, make([]byte, idtSize)) {
		t.Error("IDT is not empty")
	}
}

func TestPageTables(t *testing.T) {
	le := binary.LittleEndian
	mem := newFakeMem(64 * mib)
	if _, err := Load(mem, mustKernel(t, nil), Config{RAMSize: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	if end := uint64(layout.PML4Addr + 6*4096); end > layout.PageTableEnd {
		t.Fatalf("page tables end at 0x%X, past PageTableEnd 0x%X", end, layout.PageTableEnd)
	}
	pt := mem.read(layout.PML4Addr, 6*4096)
	entry := func(table, i uint64) uint64 { return le.Uint64(pt[table*4096+i*8:]) }

	if got := entry(0, 0); got != 0xA003 {
		t.Errorf("PML4[0] = 0x%X, want PDPT 0xA000 | present | write", got)
	}
	for i := uint64(1); i < 512; i++ {
		if entry(0, i) != 0 {
			t.Fatalf("PML4[%d] = 0x%X, want 0", i, entry(0, i))
		}
	}
	for i := uint64(0); i < 4; i++ {
		if got, want := entry(1, i), 0xB003+i*0x1000; got != want {
			t.Errorf("PDPT[%d] = 0x%X, want 0x%X", i, got, want)
		}
	}
	if entry(1, 4) != 0 {
		t.Errorf("PDPT[4] = 0x%X, want 0 (only 4 GiB mapped)", entry(1, 4))
	}
	for i := uint64(0); i < 2048; i++ {
		if got, want := entry(2+i/512, i%512), i<<21|0x83; got != want {
			t.Fatalf("PD entry %d = 0x%X, want 0x%X (2 MiB page, present, write)", i, got, want)
		}
	}

	// Walk the tables like the MMU: every address the kernel touches first
	// translates to itself.
	walk := func(va uint64) (uint64, bool) {
		pml4e := le.Uint64(pt[(va>>39&511)*8:])
		if pml4e&1 == 0 {
			return 0, false
		}
		pdpt := (pml4e &^ 0xFFF) - layout.PML4Addr
		pdpte := le.Uint64(pt[pdpt+(va>>30&511)*8:])
		if pdpte&1 == 0 || pdpte&0x80 != 0 {
			return 0, false
		}
		pd := (pdpte &^ 0xFFF) - layout.PML4Addr
		pde := le.Uint64(pt[pd+(va>>21&511)*8:])
		if pde&1 == 0 || pde&0x80 == 0 {
			return 0, false
		}
		return pde&^0x1FFFFF | va&0x1FFFFF, true
	}
	for _, va := range []uint64{0, layout.KernelLoad + 0x200, layout.BootParams, layout.StackTop, layout.CmdlineAddr,
		synthEnd, 0xBFFFF123, 0xFEE00000, 0xFFFFFFFF} {
		if pa, ok := walk(va); !ok || pa != va {
			t.Errorf("VA 0x%X -> 0x%X (mapped %v), want identity", va, pa, ok)
		}
	}
	if _, ok := walk(1 << 32); ok {
		t.Error("VA 4 GiB is mapped, want only the first 4 GiB")
	}
}

// TestRunCopies: the load's copies and clears, cut into loadChunk jobs and
// run on several goroutines, leave the same bytes as one copy would.
func TestRunCopies(t *testing.T) {
	src := make([]byte, 3*loadChunk+12345)
	for i := range src {
		src[i] = byte(i*7 + i>>13)
	}
	for _, workers := range []int{1, 2, 8} {
		dst := make([]byte, len(src)+100)
		bss := bytes.Repeat([]byte{0xAA}, loadChunk+1)
		jobs := appendChunks(nil, dst, src)
		if len(jobs) != 4 {
			t.Fatalf("%d jobs for %d bytes, want 4", len(jobs), len(src))
		}
		jobs = appendChunks(jobs, bss, nil)
		runCopies(jobs, workers)
		if !bytes.Equal(dst[:len(src)], src) {
			t.Errorf("%d workers: the copy differs", workers)
		}
		if !bytes.Equal(dst[len(src):], make([]byte, 100)) {
			t.Errorf("%d workers: bytes past the source were written", workers)
		}
		if !bytes.Equal(bss, make([]byte, len(bss))) {
			t.Errorf("%d workers: the cleared range is not all zero", workers)
		}
	}
}

// TestDisjoint: the load refuses to run overlapping writes in parallel.
func TestDisjoint(t *testing.T) {
	ok := []span{{"a", 0x2000, 0x1000}, {"b", 0x1000, 0x1000}, {"c", 0x3000, 1}}
	if err := disjoint(ok); err != nil {
		t.Errorf("adjacent spans: %v", err)
	}
	bad := append(ok, span{"initrd", 0x2fff, 2})
	if err := disjoint(bad); err == nil || !strings.Contains(err.Error(), "initrd") {
		t.Errorf("overlap: %v", err)
	}
}
