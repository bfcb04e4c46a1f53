package boot

import (
	"encoding/binary"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// CPU is the boot CPU's state at the kernel's 64-bit entry point: long mode,
// paging on with the identity map, flat segments from our GDT, interrupts
// off, RSI pointing at boot_params. It holds no KVM types; the caller copies
// it into kvm_regs/kvm_sregs after reading the vCPU's reset state, so that
// registers not named here (LDT, APIC base, ...) keep their reset values.
type CPU struct {
	RIP, RSP, RSI, RFLAGS uint64

	CR0, CR3, CR4, EFER uint64

	CS, DS, ES, FS, GS, SS, TR Segment
	GDT, IDT                   Table
}

// Segment is a segment register with its hidden descriptor cache. Limit is
// in bytes, already scaled by G, which is how KVM's kvm_segment takes it.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8 // 4-bit descriptor type
	Present  bool
	DPL      uint8
	DB       bool // default operand size 32 (must be false for 64-bit code)
	S        bool // code or data segment, as opposed to a system segment
	L        bool // 64-bit code segment
	G        bool // limit counts 4 KiB units in the descriptor
}

// Table is a descriptor table register (GDTR, IDTR).
type Table struct {
	Base  uint64
	Limit uint16
}

// Control register and EFER bits.
const (
	cr0PE          = 1 << 0  // protected mode
	cr0MP          = 1 << 1  // monitor coprocessor
	cr0ET          = 1 << 4  // extension type (hard-wired 1 on modern CPUs)
	cr0NE          = 1 << 5  // native FPU errors
	cr0PG          = 1 << 31 // paging
	cr4PAE         = 1 << 5
	eferLME        = 1 << 8  // long mode enable
	eferLMA        = 1 << 10 // long mode active
	rflagsReserved = 1 << 1  // bit 1 always reads as 1; IF stays 0
)

// Selectors the 64-bit boot protocol requires (__BOOT_CS, __BOOT_DS).
const (
	bootCS = 0x10
	bootDS = 0x18
)

const (
	gdtEntries = 4  // null, null, code, data
	idtSize    = 16 // one 64-bit gate, all zero: any interrupt before the kernel's own IDT triple-faults
	// pageTableSize covers the PML4, one PDPT and four PDs of 2 MiB pages,
	// mapping the first 4 GiB.
	pageTableSize = 6 * pageSize
	ptPresent     = 1 << 0
	ptWrite       = 1 << 1
	ptLarge       = 1 << 7 // PS: the PD entry maps a 2 MiB page
)

// The page tables must end below layout.PageTableEnd: if they grow past it,
// this constant turns negative and the conversion stops the build.
const _ = uint(layout.PageTableEnd - layout.PML4Addr - pageTableSize)

// Segments: flat 4 GiB, ring 0. Type 0xB is execute/read, accessed; 0x3 is
// read/write, accessed; the accessed bits are set because VMX refuses to
// enter a guest whose usable segments lack them.
func codeSegment() Segment {
	return Segment{Limit: 0xFFFFFFFF, Selector: bootCS, Type: 0xB, Present: true, S: true, L: true, G: true}
}

func dataSegment() Segment {
	return Segment{Limit: 0xFFFFFFFF, Selector: bootDS, Type: 0x3, Present: true, S: true, DB: true, G: true}
}

// taskSegment is a busy 64-bit TSS (type 0xB) at selector 0, as after a
// reset: VMX wants a valid TR in long mode, and the kernel loads its own
// before it could use one.
func taskSegment() Segment {
	return Segment{Limit: 0xFFFF, Type: 0xB, Present: true}
}

// initialCPU is the boot CPU's state at the kernel's 64-bit entry point,
// entry (a bzImage's at KernelLoad + 0x200, a vmlinux's its own).
func initialCPU(entry uint64) CPU {
	code, data := codeSegment(), dataSegment()
	return CPU{
		RIP:    entry,
		RSP:    layout.StackTop,
		RSI:    layout.BootParams,
		RFLAGS: rflagsReserved,
		// CD and NW, set at reset, are cleared so caches work from the first
		// instruction.
		CR0:  cr0PE | cr0MP | cr0ET | cr0NE | cr0PG,
		CR3:  layout.PML4Addr,
		CR4:  cr4PAE,
		EFER: eferLME | eferLMA,
		CS:   code,
		DS:   data, ES: data, FS: data, GS: data, SS: data,
		TR:  taskSegment(),
		GDT: Table{Base: layout.GDTAddr, Limit: gdtEntries*8 - 1},
		IDT: Table{Base: layout.IDTAddr, Limit: idtSize - 1},
	}
}

// descriptor encodes s as an 8-byte GDT entry, so that the GDT in memory
// and the segment caches handed to KVM come from the same values.
func (s Segment) descriptor() uint64 {
	limit := s.Limit
	if s.G {
		limit >>= 12
	}
	d := uint64(limit&0xFFFF) |
		(s.Base&0xFFFFFF)<<16 |
		uint64(s.Type&0xF)<<40 |
		uint64(s.DPL&3)<<45 |
		uint64(limit>>16&0xF)<<48 |
		(s.Base>>24&0xFF)<<56
	for _, b := range []struct {
		set bool
		bit uint
	}{{s.S, 44}, {s.Present, 47}, {s.L, 53}, {s.DB, 54}, {s.G, 55}} {
		if b.set {
			d |= 1 << b.bit
		}
	}
	return d
}

func gdtBytes() [gdtEntries * 8]byte {
	var g [gdtEntries * 8]byte
	binary.LittleEndian.PutUint64(g[bootCS:], codeSegment().descriptor())
	binary.LittleEndian.PutUint64(g[bootDS:], dataSegment().descriptor())
	return g
}

// identityMap fills pt (to be placed at layout.PML4Addr) with page tables
// mapping guest-virtual = guest-physical for the first 4 GiB in 2 MiB pages:
// the kernel's entry code runs on them until it builds its own.
func identityMap(pt *[pageTableSize]byte) {
	le := binary.LittleEndian
	const (
		pdpt = layout.PML4Addr + pageSize
		pd0  = pdpt + pageSize
	)
	le.PutUint64(pt[0:], pdpt|ptPresent|ptWrite)
	for i := range uint64(4) {
		le.PutUint64(pt[pageSize+i*8:], (pd0+i*pageSize)|ptPresent|ptWrite)
		for j := range uint64(512) {
			phys := (i*512 + j) << 21
			le.PutUint64(pt[2*pageSize+i*pageSize+j*8:], phys|ptPresent|ptWrite|ptLarge)
		}
	}
}
