package kvm

import (
	"strconv"
	"unsafe"
)

// Exit is why KVM_RUN returned (kvm_run.exit_reason).
type Exit uint32

// Exit reasons (KVM_EXIT_*) an x86 VMM meets.
const (
	ExitUnknown       Exit = 0
	ExitException     Exit = 1
	ExitIO            Exit = 2
	ExitHypercall     Exit = 3
	ExitDebug         Exit = 4
	ExitHLT           Exit = 5
	ExitMMIO          Exit = 6
	ExitIRQWindowOpen Exit = 7
	ExitShutdown      Exit = 8 // triple fault: the guest is dead, reset it
	ExitFailEntry     Exit = 9
	ExitIntr          Exit = 10 // a signal or immediate_exit interrupted Run
	ExitSetTPR        Exit = 11
	ExitTPRAccess     Exit = 12
	ExitNMI           Exit = 16
	ExitInternalError Exit = 17
	ExitSystemEvent   Exit = 24
	ExitIOAPICEOI     Exit = 26
	ExitX86RDMSR      Exit = 29
	ExitX86WRMSR      Exit = 30
	ExitX86BusLock    Exit = 33
	ExitNotify        Exit = 37
	ExitMemoryFault   Exit = 39
)

// String returns the kernel's name for the exit without the KVM_EXIT_ prefix.
func (e Exit) String() string {
	switch e {
	case ExitUnknown:
		return "UNKNOWN"
	case ExitException:
		return "EXCEPTION"
	case ExitIO:
		return "IO"
	case ExitHypercall:
		return "HYPERCALL"
	case ExitDebug:
		return "DEBUG"
	case ExitHLT:
		return "HLT"
	case ExitMMIO:
		return "MMIO"
	case ExitIRQWindowOpen:
		return "IRQ_WINDOW_OPEN"
	case ExitShutdown:
		return "SHUTDOWN"
	case ExitFailEntry:
		return "FAIL_ENTRY"
	case ExitIntr:
		return "INTR"
	case ExitSetTPR:
		return "SET_TPR"
	case ExitTPRAccess:
		return "TPR_ACCESS"
	case ExitNMI:
		return "NMI"
	case ExitInternalError:
		return "INTERNAL_ERROR"
	case ExitSystemEvent:
		return "SYSTEM_EVENT"
	case ExitIOAPICEOI:
		return "IOAPIC_EOI"
	case ExitX86RDMSR:
		return "X86_RDMSR"
	case ExitX86WRMSR:
		return "X86_WRMSR"
	case ExitX86BusLock:
		return "X86_BUS_LOCK"
	case ExitNotify:
		return "NOTIFY"
	case ExitMemoryFault:
		return "MEMORY_FAULT"
	}
	return "EXIT_" + strconv.Itoa(int(e))
}

// IO is a port I/O exit. Data is Count accesses of Size bytes each, a view
// into kvm_run: for an OUT it holds what the guest wrote; for an IN the
// VMM fills it and the next Run completes the guest's instruction with it.
type IO struct {
	Out   bool
	Size  int // 1, 2 or 4
	Port  uint16
	Count int // >1 for string instructions (REP INS/OUTS)
	Data  []byte
}

// IO decodes the current exit as port I/O. ok is false when the exit is
// not ExitIO or its fields are inconsistent (a bad width, or data outside
// the kvm_run mapping).
func (v *VCPU) IO() (io IO, ok bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitIO {
		return IO{}, false
	}
	x := (*ioExit)(unsafe.Pointer(&v.run.exit[0]))
	size := uint64(x.size)
	if size != 1 && size != 2 && size != 4 || x.count == 0 {
		return IO{}, false
	}
	n := size * uint64(x.count)
	if x.dataOffset > uint64(len(v.mapping)) || n > uint64(len(v.mapping))-x.dataOffset {
		return IO{}, false
	}
	return IO{
		Out:   x.direction == ioDirectionOut,
		Size:  int(size),
		Port:  x.port,
		Count: int(x.count),
		Data:  v.mapping[x.dataOffset : x.dataOffset+n : x.dataOffset+n],
	}, true
}

// MMIO is an access to guest-physical memory that is not RAM. Data is a
// view into kvm_run: the written bytes, or the buffer a read fills.
type MMIO struct {
	Addr  uint64
	Write bool
	Data  []byte // 1 to 8 bytes
}

// MMIO decodes the current exit as MMIO; ok is false when the exit is not
// ExitMMIO or its length is not 1 to 8 bytes.
func (v *VCPU) MMIO() (m MMIO, ok bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitMMIO {
		return MMIO{}, false
	}
	x := (*mmioExit)(unsafe.Pointer(&v.run.exit[0]))
	if x.len == 0 || x.len > uint32(len(x.data)) {
		return MMIO{}, false
	}
	return MMIO{Addr: x.physAddr, Write: x.isWrite != 0, Data: x.data[:x.len:x.len]}, true
}

// SystemEventType says what a SYSTEM_EVENT exit asks for.
type SystemEventType uint32

// System event types (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown SystemEventType = 1
	SystemEventReset    SystemEventType = 2
	SystemEventCrash    SystemEventType = 3
	SystemEventWakeup   SystemEventType = 4
	SystemEventSuspend  SystemEventType = 5
	SystemEventSEVTerm  SystemEventType = 6
)

// SystemEvent decodes a SYSTEM_EVENT exit: its type and the first data word
// (the flags of older kernels), or ok false for another exit.
func (v *VCPU) SystemEvent() (typ SystemEventType, data uint64, ok bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitSystemEvent {
		return 0, 0, false
	}
	x := (*systemEventExit)(unsafe.Pointer(&v.run.exit[0]))
	return SystemEventType(x.typ), x.data[0], true
}

// FailEntry decodes a FAIL_ENTRY exit: the hardware's reason code (VMX exit
// reason / SVM exit code) and the host CPU.
func (v *VCPU) FailEntry() (reason uint64, cpu uint32, ok bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitFailEntry {
		return 0, 0, false
	}
	x := (*failEntryExit)(unsafe.Pointer(&v.run.exit[0]))
	return x.reason, x.cpu, true
}

// HardwareExitReason is the raw reason of an UNKNOWN exit.
func (v *VCPU) HardwareExitReason() (uint64, bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitUnknown {
		return 0, false
	}
	return *(*uint64)(unsafe.Pointer(&v.run.exit[0])), true
}

// InternalError is the payload of an INTERNAL_ERROR exit: why KVM could not
// emulate the guest (suberror 1 is an emulation failure) and up to 16
// words of suberror-specific data.
type InternalError struct {
	Suberror uint32
	N        int
	Data     [16]uint64
}

// InternalError decodes an INTERNAL_ERROR exit.
func (v *VCPU) InternalError() (InternalError, bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitInternalError {
		return InternalError{}, false
	}
	x := (*internalExit)(unsafe.Pointer(&v.run.exit[0]))
	return InternalError{Suberror: x.suberror, N: int(min(x.ndata, uint32(len(x.data)))), Data: x.data}, true
}

// Debug is the payload of a DEBUG exit (a guest-debug breakpoint or step).
type Debug struct {
	Exception uint32
	PC        uint64
	DR6, DR7  uint64
}

// Debug decodes a DEBUG exit.
func (v *VCPU) Debug() (Debug, bool) {
	if v.run == nil || Exit(v.run.exitReason) != ExitDebug {
		return Debug{}, false
	}
	x := (*debugExit)(unsafe.Pointer(&v.run.exit[0]))
	return Debug{Exception: x.exception, PC: x.pc, DR6: x.dr6, DR7: x.dr7}, true
}
