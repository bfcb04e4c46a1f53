package boot

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Memory is guest RAM as the loader needs it: a bounds-checked writable view
// of n bytes at guest-physical address gpa. vmm/memory.Guest satisfies it.
// Any error aborts the load.
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Config is what the VM asks the loader for, beyond the kernel itself.
type Config struct {
	// RAMSize is the guest's RAM in bytes, laid out by layout.RAMRanges.
	RAMSize uint64
	// Cmdline is the kernel command line (without a NUL).
	Cmdline string
	// Initrd is the initial ramdisk; empty means none.
	Initrd []byte
	// RSDP is the guest-physical address of the ACPI RSDP, passed in
	// boot_params.acpi_rsdp_addr to kernels with protocol 2.14 or later;
	// 0 passes nothing. Older kernels find it by scanning 0xE0000-0xFFFFF.
	RSDP uint64
	// Reserved lists extra [start, end) guest-physical ranges the e820 map
	// reports as reserved, such as the PCIe ECAM window, which Linux only
	// uses when firmware (e820 or ACPI) marks it reserved.
	Reserved [][2]uint64
}

// ErrRAMTooSmall is wrapped by the errors for guests with too little RAM for
// the kernel and initrd; the message says how much they need.
var ErrRAMTooSmall = errors.New("guest RAM too small")

const (
	pageSize = 0x1000
	mib      = 1 << 20

	// Zero-page fields outside the setup header (Documentation/arch/x86/zero-page.rst).
	bpAcpiRsdpAddr    = 0x070
	bpExtRamdiskImage = 0x0C0
	bpExtRamdiskSize  = 0x0C4
	bpExtCmdLinePtr   = 0x0C8
	bpE820Entries     = 0x1E8
	bpE820Table       = 0x2D0
	bootParamsSize    = 0x1000

	e820EntrySize  = 20
	e820MaxEntries = 128 // E820_MAX_ENTRIES_ZEROPAGE
	e820RAM        = 1
	e820Reserved   = 2
)

// Load writes the kernel, initrd, command line, boot_params, page tables and
// GDT into mem and returns the register state the boot CPU must start with.
// Everything is validated before the first byte is written.
func Load(mem Memory, k *Kernel, cfg Config) (CPU, error) {
	initrdAddr, err := k.place(cfg.RAMSize, uint64(len(cfg.Initrd)))
	if err != nil {
		return CPU{}, fmt.Errorf("load kernel: %w", err)
	}
	if err := k.checkCmdline(cfg.Cmdline); err != nil {
		return CPU{}, fmt.Errorf("load kernel: %w", err)
	}
	e820, err := e820Map(cfg.RAMSize, cfg.Reserved)
	if err != nil {
		return CPU{}, fmt.Errorf("load kernel: %w", err)
	}

	var bp [bootParamsSize]byte
	k.fillBootParams(&bp, cfg, initrdAddr, e820)

	var pt [pageTableSize]byte
	identityMap(&pt)
	gdt := gdtBytes()
	var idt [idtSize]byte

	cmdline := make([]byte, len(cfg.Cmdline)+1) // NUL-terminated
	copy(cmdline, cfg.Cmdline)

	type region struct {
		what string
		gpa  uint64
		data []byte
	}
	var writes []region
	for _, s := range k.segments {
		writes = append(writes, region{"kernel", s.addr, s.data})
	}
	writes = append(writes, []region{
		{"initrd", initrdAddr, cfg.Initrd},
		{"command line", layout.CmdlineAddr, cmdline},
		{"boot_params", layout.BootParams, bp[:]},
		{"page tables", layout.PML4Addr, pt[:]},
		{"GDT", layout.GDTAddr, gdt[:]},
		{"IDT", layout.IDTAddr, idt[:]},
	}...)
	// Every destination is found (and bounds-checked) first, then the
	// bytes are moved, in parallel: no two may overlap.
	var jobs []copyJob
	var spans []span
	for _, w := range writes {
		if len(w.data) == 0 {
			continue
		}
		spans = append(spans, span{w.what, w.gpa, uint64(len(w.data))})
		dst, err := slice(mem, w.gpa, uint64(len(w.data)))
		if err != nil {
			return CPU{}, fmt.Errorf("load kernel: write %s: %w", w.what, err)
		}
		jobs = appendChunks(jobs, dst, w.data)
	}
	// A segment's bytes past its file data (a vmlinux's .bss) are zero,
	// also in RAM a previous boot left behind.
	for _, s := range k.segments {
		if rest := s.size - uint64(len(s.data)); rest > 0 {
			spans = append(spans, span{"kernel .bss", s.addr + uint64(len(s.data)), rest})
			dst, err := slice(mem, s.addr+uint64(len(s.data)), rest)
			if err != nil {
				return CPU{}, fmt.Errorf("load kernel: clear kernel memory: %w", err)
			}
			jobs = appendChunks(jobs, dst, nil)
		}
	}
	if err := disjoint(spans); err != nil {
		return CPU{}, fmt.Errorf("load kernel: %w", err)
	}
	runCopies(jobs, runtime.GOMAXPROCS(0))
	return initialCPU(k.entry), nil
}

// span is a range of guest RAM the load writes.
type span struct {
	what     string
	gpa, len uint64
}

// disjoint says which two spans overlap, if any: the load's writes run
// in parallel, and the layout never overlaps them.
func disjoint(spans []span) error {
	s := slices.Clone(spans)
	slices.SortFunc(s, func(a, b span) int { return cmp.Compare(a.gpa, b.gpa) })
	for i := 1; i < len(s); i++ {
		if s[i].gpa < s[i-1].gpa+s[i-1].len {
			return fmt.Errorf("%s at %#x overlaps %s at %#x+%#x", s[i].what, s[i].gpa, s[i-1].what, s[i-1].gpa, s[i-1].len)
		}
	}
	return nil
}

// copyJob is a piece of the load: src copied to dst, or dst cleared when
// src is nil.
type copyJob struct{ dst, src []byte }

// loadChunk is the most one copyJob moves: small enough to spread a
// kernel's tens of MiB over the host's CPUs, large enough that each job
// is mostly copying.
const loadChunk = 4 << 20

// appendChunks appends the jobs that copy src to dst (len(src) bytes, or
// clear all of dst when src is nil), in loadChunk pieces.
func appendChunks(jobs []copyJob, dst, src []byte) []copyJob {
	if src != nil {
		dst = dst[:len(src)]
	}
	for off := 0; off < len(dst); off += loadChunk {
		end := min(off+loadChunk, len(dst))
		j := copyJob{dst: dst[off:end]}
		if src != nil {
			j.src = src[off:end]
		}
		jobs = append(jobs, j)
	}
	return jobs
}

// runCopies does jobs on up to workers goroutines. Loading is mostly the
// host's first touches of guest RAM, each a fresh page the host kernel
// zeroes (a 2 MiB one where guest RAM takes huge pages), and of the
// kernel file's pages: in the TCG test bed 0.3-2 s for a 44 MiB vmlinux,
// the largest step of a VM's start, with the host's other CPUs idle.
func runCopies(jobs []copyJob, workers int) {
	workers = min(workers, len(jobs), maxLoadWorkers)
	if workers <= 1 {
		for _, j := range jobs {
			j.run()
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(jobs)); i = next.Add(1) - 1 {
				jobs[i].run()
			}
		})
	}
	wg.Wait()
}

// maxLoadWorkers bounds the goroutines of one load: past a few, the
// copies contend for memory bandwidth and the host kernel's page
// allocator rather than CPU.
const maxLoadWorkers = 4

func (j copyJob) run() {
	if j.src == nil {
		clear(j.dst)
		return
	}
	copy(j.dst, j.src)
}

// slice is mem.Slice, checked to be the n bytes asked for.
func slice(mem Memory, gpa, n uint64) ([]byte, error) {
	dst, err := mem.Slice(gpa, n)
	if err != nil {
		return nil, err
	}
	if uint64(len(dst)) != n {
		return nil, fmt.Errorf("guest memory returned %d bytes at 0x%X, want %d", len(dst), gpa, n)
	}
	return dst, nil
}

// MinRAM returns the least guest RAM, rounded up to a MiB, with which Load
// can place this kernel and an initrd of initrdSize bytes (0 for none). It
// fails when no RAM size would do, for instance when the initrd cannot fit
// below the kernel's initrd_addr_max. The kernel needs more than this to do
// useful work; this is the floor below which it cannot even start.
func (k *Kernel) MinRAM(initrdSize uint64) (uint64, error) {
	need := k.End()
	if initrdSize > 0 {
		start := alignUp(need, pageSize)
		need = start + initrdSize
		if limit := uint64(k.InitrdAddrMax) + 1; need > limit {
			return 0, fmt.Errorf("initrd of %s does not fit between the kernel's end 0x%X and its initrd_addr_max 0x%X",
				sizeString(initrdSize), start, k.InitrdAddrMax)
		}
	}
	if need > layout.MMIO32Start {
		what := "kernel"
		if initrdSize > 0 {
			what = "kernel and initrd"
		}
		return 0, fmt.Errorf("%s need RAM up to 0x%X, beyond the %d MiB below the 32-bit MMIO hole",
			what, need, layout.MMIO32Start/mib)
	}
	return alignUp(need, mib), nil
}

// place checks that the kernel fits in ramSize bytes of guest RAM and returns
// where the initrd goes: page-aligned, as high as the kernel's
// initrd_addr_max, RAM below the MMIO hole and 4 GiB allow, and above the
// kernel's End. High placement keeps the initrd out of the way of the
// kernel's early allocations, which start low.
func (k *Kernel) place(ramSize, initrdSize uint64) (uint64, error) {
	top := min(ramSize, layout.MMIO32Start) // end of low RAM; MMIO32Start < 4 GiB
	limit := min(top, uint64(k.InitrdAddrMax)+1)
	floor := alignUp(k.End(), pageSize)
	fits := k.End() <= top
	var addr uint64
	if initrdSize > 0 {
		fits = fits && initrdSize <= limit && (limit-initrdSize)&^(pageSize-1) >= floor
		if fits {
			addr = (limit - initrdSize) &^ (pageSize - 1)
		}
	}
	if fits {
		return addr, nil
	}
	need, err := k.MinRAM(initrdSize)
	if err != nil {
		return 0, err
	}
	with := ""
	if initrdSize > 0 {
		with = fmt.Sprintf(" with this %s initrd", sizeString(initrdSize))
	}
	return 0, fmt.Errorf("%w: %s is not enough, the kernel needs at least %d MiB%s",
		ErrRAMTooSmall, sizeString(ramSize), need/mib, with)
}

func (k *Kernel) checkCmdline(c string) error {
	if i := strings.IndexByte(c, 0); i >= 0 {
		return fmt.Errorf("command line has a NUL byte at offset %d", i)
	}
	if uint64(len(c)) > uint64(k.CmdlineSize) {
		return fmt.Errorf("command line is %d bytes, the kernel accepts at most %d (cmdline_size)", len(c), k.CmdlineSize)
	}
	if len(c)+1 > layout.CmdlineMax {
		return fmt.Errorf("command line is %d bytes, at most %d fit at 0x%X", len(c), layout.CmdlineMax-1, layout.CmdlineAddr)
	}
	return nil
}

// fillBootParams builds the zero page: the image's setup header with the
// loader's fields filled in, then the e820 map and ACPI pointer. The rest
// stays zero; in particular the sentinel at 0x1EF, which tells the kernel
// that the loader did not copy junk from the boot sector.
func (k *Kernel) fillBootParams(bp *[bootParamsSize]byte, cfg Config, initrdAddr uint64, e820 []e820Entry) {
	le := binary.LittleEndian
	copy(bp[offSetupSects:], k.Header)
	bp[offTypeOfLoader] = loaderUnknown
	bp[offLoadFlags] |= canUseHeap
	le.PutUint16(bp[offHeapEndPtr:], heapEnd)
	le.PutUint64(bp[offSetupData:], 0) // we pass no setup_data chain

	le.PutUint32(bp[offCmdLinePtr:], uint32(layout.CmdlineAddr))
	le.PutUint32(bp[bpExtCmdLinePtr:], uint32(uint64(layout.CmdlineAddr)>>32))

	size := uint64(len(cfg.Initrd))
	if size == 0 {
		initrdAddr = 0
	}
	le.PutUint32(bp[offRamdiskImage:], uint32(initrdAddr))
	le.PutUint32(bp[bpExtRamdiskImage:], uint32(initrdAddr>>32))
	le.PutUint32(bp[offRamdiskSize:], uint32(size))
	le.PutUint32(bp[bpExtRamdiskSize:], uint32(size>>32))

	if cfg.RSDP != 0 && k.Protocol >= rsdpProtocol {
		le.PutUint64(bp[bpAcpiRsdpAddr:], cfg.RSDP)
	}

	bp[bpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		b := bp[bpE820Table+i*e820EntrySize:]
		le.PutUint64(b[0:], e.addr)
		le.PutUint64(b[8:], e.size)
		le.PutUint32(b[16:], e.typ)
	}
}

type e820Entry struct {
	addr, size uint64
	typ        uint32
}

// e820Map describes guest RAM to the kernel: low RAM up to the EBDA, the
// legacy area reserved (the RSDP and ACPI tables live there), RAM from 1 MiB
// to the MMIO hole, RAM above 4 GiB, then the caller's reserved ranges. The
// MMIO hole itself is left out: it is not RAM.
func e820Map(ramSize uint64, reserved [][2]uint64) ([]e820Entry, error) {
	var m []e820Entry
	add := func(start, end uint64, typ uint32) {
		if end > start {
			m = append(m, e820Entry{start, end - start, typ})
		}
	}
	for _, r := range layout.RAMRanges(ramSize) {
		if r[0] == 0 {
			add(0, min(r[1], layout.EBDAStart), e820RAM)
			add(layout.EBDAStart, min(r[1], layout.HighRAMStart), e820Reserved)
			add(layout.HighRAMStart, r[1], e820RAM)
			continue
		}
		add(r[0], r[1], e820RAM)
	}
	for _, r := range reserved {
		if r[1] <= r[0] {
			return nil, fmt.Errorf("reserved range [0x%X, 0x%X) is empty", r[0], r[1])
		}
		add(r[0], r[1], e820Reserved)
	}
	if len(m) > e820MaxEntries {
		return nil, fmt.Errorf("e820 map has %d entries, boot_params holds %d", len(m), e820MaxEntries)
	}
	return m, nil
}

func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }

// sizeString prints a byte count for people: exact MiB where it is one,
// else MiB with a decimal, else KiB or bytes for small counts.
func sizeString(n uint64) string {
	switch {
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n >= 1024 && n%1024 == 0:
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d bytes", n)
}
