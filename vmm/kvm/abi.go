package kvm

// Go mirrors of the structures in <linux/kvm.h> and <asm/kvm.h> for x86-64.
// Field order, widths and padding follow the kernel ABI exactly (see
// abi_test.go); names follow Go conventions.

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment: a segment register with its hidden
// descriptor cache, which is what the CPU actually uses.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: a descriptor-table register (GDTR, IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment, control and descriptor-table
// registers, EFER and the APIC base.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64 // pending external interrupts, one bit per vector
}

// FPU is struct kvm_fpu: x87 and SSE state.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// LAPIC is struct kvm_lapic_state: the local APIC's 4 KiB register page,
// truncated to the first 1 KiB where all registers live. Register r is at
// byte offset r (e.g. the ID register at 0x20, bits 24-31 in xAPIC mode).
type LAPIC struct {
	Regs [1024]byte
}

// CPUIDEntry is struct kvm_cpuid_entry2: one CPUID leaf/subleaf.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // CPUIDFlagSignificantIndex etc.
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDEntry.Flags bits.
const (
	CPUIDFlagSignificantIndex = 1 << 0 // Index selects a subleaf
)

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// MPState is a vCPU's multiprocessing state (struct kvm_mp_state).
type MPState uint32

// Multiprocessing states. With the in-kernel irqchip, application
// processors start Uninitialized and wait for INIT/SIPI; setting Runnable
// starts them directly.
const (
	MPStateRunnable      MPState = 0
	MPStateUninitialized MPState = 1
	MPStateInitReceived  MPState = 2
	MPStateHalted        MPState = 3
	MPStateSIPIReceived  MPState = 4
)

// VCPUEvents is struct kvm_vcpu_events: exceptions, interrupts and NMIs
// KVM holds pending or half-injected for a vCPU, read to see why a guest
// does not make progress (KVM_GET_VCPU_EVENTS).
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8 // interrupt shadow (after STI or MOV SS)
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFaultPending  uint8
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// struct kvm_userspace_memory_region
type userspaceMemoryRegion struct {
	slot          uint32
	flags         uint32
	guestPhysAddr uint64
	memorySize    uint64
	userspaceAddr uint64
}

// Memory slot flags for SetUserMemoryRegion.
const (
	MemLogDirtyPages = 1 << 0
	MemReadonly      = 1 << 1
)

// struct kvm_irq_level
type irqLevel struct {
	irq   uint32
	level uint32
}

// struct kvm_irq_routing_entry; u holds the irqchip or msi union member.
type routingEntry struct {
	gsi   uint32
	typ   uint32
	flags uint32
	_     uint32
	u     [8]uint32
}

// struct kvm_irqfd
type irqfd struct {
	fd         uint32
	gsi        uint32
	flags      uint32
	resamplefd uint32
	_          [16]uint8
}

const (
	irqfdFlagDeassign = 1 << 0
	irqfdFlagResample = 1 << 1
)

// struct kvm_pit_config
type pitConfig struct {
	flags uint32
	_     [15]uint32
}

// pitSpeakerDummy makes the in-kernel PIT also emulate port 0x61, which
// Linux pokes during calibration.
const pitSpeakerDummy = 1

// struct kvm_ioeventfd
type ioeventfd struct {
	datamatch uint64
	addr      uint64
	len       uint32
	fd        int32
	flags     uint32
	_         [36]uint8
}

const (
	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2
)

// struct kvm_msi
type msi struct {
	addressLo uint32
	addressHi uint32
	data      uint32
	flags     uint32
	devid     uint32
	_         [12]uint8
}

// struct kvm_enable_cap
type enableCap struct {
	cap   uint32
	flags uint32
	args  [4]uint64
	_     [64]uint8
}

// run is the fixed part of struct kvm_run, the page KVM shares with
// userspace to describe each exit. The exit union is read through the
// typed views below.
type run struct {
	requestInterruptWindow     uint8
	immediateExit              uint8
	_                          [6]uint8
	exitReason                 uint32
	readyForInterruptInjection uint8
	ifFlag                     uint8
	flags                      uint16
	cr8                        uint64
	apicBase                   uint64
	exit                       [256]byte // the union, at offset 32
	validRegs                  uint64
	dirtyRegs                  uint64
	syncRegs                   [2048]byte
}

// Views of kvm_run's exit union, one per exit reason.
type (
	ioExit struct {
		direction  uint8
		size       uint8
		port       uint16
		count      uint32
		dataOffset uint64 // from the start of kvm_run
	}
	mmioExit struct {
		physAddr uint64
		data     [8]uint8
		len      uint32
		isWrite  uint8
	}
	failEntryExit struct {
		reason uint64
		cpu    uint32
	}
	debugExit struct {
		exception uint32
		_         uint32
		pc        uint64
		dr6       uint64
		dr7       uint64
	}
	internalExit struct {
		suberror uint32
		ndata    uint32
		data     [16]uint64
	}
	systemEventExit struct {
		typ   uint32
		ndata uint32
		data  [16]uint64
	}
)

const ioDirectionOut = 1
