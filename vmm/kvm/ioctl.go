package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux ioctl request encoding (asm-generic/ioctl.h): direction in bits
// 30-31, argument size in bits 16-29, type in bits 8-15, number in 0-7.
const (
	dirW  uintptr = 1 << 30
	dirR  uintptr = 2 << 30
	dirRW         = dirR | dirW
	typ   uintptr = 0xAE << 8 // KVMIO
)

// Request numbers, computed from the sizes of the Go mirrors of the kernel
// structures (abi.go); abi_test.go pins both the sizes and the numbers.
const (
	// on /dev/kvm
	reqGetAPIVersion      = typ | 0x00
	reqCreateVM           = typ | 0x01
	reqGetMSRIndexList    = dirRW | 4<<16 | typ | 0x02
	reqCheckExtension     = typ | 0x03
	reqGetVCPUMmapSize    = typ | 0x04
	reqGetSupportedCPUID  = dirRW | 8<<16 | typ | 0x05
	reqCreateVCPU         = typ | 0x41
	reqSetUserMemRegion   = dirW | unsafe.Sizeof(userspaceMemoryRegion{})<<16 | typ | 0x46
	reqSetTSSAddr         = typ | 0x47
	reqSetIdentityMapAddr = dirW | 8<<16 | typ | 0x48
	reqCreateIRQChip      = typ | 0x60
	reqIRQLine            = dirW | unsafe.Sizeof(irqLevel{})<<16 | typ | 0x61
	reqSetGSIRouting      = dirW | 8<<16 | typ | 0x6a
	reqIRQFD              = dirW | unsafe.Sizeof(irqfd{})<<16 | typ | 0x76
	reqCreatePIT2         = dirW | unsafe.Sizeof(pitConfig{})<<16 | typ | 0x77
	reqIOEventFD          = dirW | unsafe.Sizeof(ioeventfd{})<<16 | typ | 0x79
	reqEnableCap          = dirW | unsafe.Sizeof(enableCap{})<<16 | typ | 0xa3
	reqSignalMSI          = dirW | unsafe.Sizeof(msi{})<<16 | typ | 0xa5

	// on a vCPU
	reqRun           = typ | 0x80
	reqGetRegs       = dirR | unsafe.Sizeof(Regs{})<<16 | typ | 0x81
	reqSetRegs       = dirW | unsafe.Sizeof(Regs{})<<16 | typ | 0x82
	reqGetSregs      = dirR | unsafe.Sizeof(Sregs{})<<16 | typ | 0x83
	reqSetSregs      = dirW | unsafe.Sizeof(Sregs{})<<16 | typ | 0x84
	reqGetMSRs       = dirRW | 8<<16 | typ | 0x88
	reqSetMSRs       = dirW | 8<<16 | typ | 0x89
	reqGetFPU        = dirR | unsafe.Sizeof(FPU{})<<16 | typ | 0x8c
	reqSetFPU        = dirW | unsafe.Sizeof(FPU{})<<16 | typ | 0x8d
	reqGetLAPIC      = dirR | unsafe.Sizeof(LAPIC{})<<16 | typ | 0x8e
	reqSetLAPIC      = dirW | unsafe.Sizeof(LAPIC{})<<16 | typ | 0x8f
	reqSetCPUID2     = dirW | 8<<16 | typ | 0x90
	reqGetMPState    = dirR | 4<<16 | typ | 0x98
	reqSetMPState    = dirW | 4<<16 | typ | 0x99
	reqGetVCPUEvents = dirR | unsafe.Sizeof(VCPUEvents{})<<16 | typ | 0x9f
)

// ioctl issues a request whose argument is an integer (or nothing).
//
// Requests interrupted by a signal (EINTR: Go's runtime preempts goroutines
// with SIGURG, and KVM_CREATE_VM and others wait interruptibly) are issued
// again; KVM_RUN does not come through here, its EINTR means something.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		switch e {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, e
	}
}

// ioctlPtr issues a request whose argument is a pointer. Taking
// unsafe.Pointer (not uintptr) keeps the argument alive and unmoved until
// the system call returns.
// Like ioctl, it retries on EINTR.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		switch e {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, e
	}
}

// RunningVCPURequests are the requests a vCPU's thread issues on its vCPU
// once the machine runs: KVM_RUN, and the reads a dump (and the trace)
// makes of a vCPU that has left it (KVM_GET_MSRS for the TSC-deadline
// timer's deadline). A seccomp filter lets exactly these through
// (vmm/seccomp); set-up requests are issued before it is loaded.
func RunningVCPURequests() []uintptr {
	return []uintptr{reqRun, reqGetRegs, reqGetSregs, reqGetLAPIC, reqGetMPState, reqGetVCPUEvents, reqGetMSRs}
}

// RunningVMRequests are the requests a running machine issues on its VM,
// from any thread: interrupt lines, and the MSI routes, irqfds and
// ioeventfds the devices set up when the guest programs them.
func RunningVMRequests() []uintptr {
	return []uintptr{reqIRQLine, reqSetGSIRouting, reqIRQFD, reqIOEventFD}
}

// PassthroughVMRequests are what a running machine with passed-through
// devices issues on its VM besides RunningVMRequests: the memory slots of
// the devices' BAR pages, which follow a BAR where the guest moves it
// (vmm/vfio). A machine without such devices never changes its memory
// slots once it runs, and its filter does not let it.
func PassthroughVMRequests() []uintptr {
	return []uintptr{reqSetUserMemRegion}
}
