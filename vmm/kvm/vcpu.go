package kvm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU and its shared kvm_run page.
//
// Run and the exit accessors belong to the one goroutine that runs the vCPU
// (locked to its OS thread so a signal can reach it); SetImmediateExit may
// be called from any goroutine. Close must not race with any other method.
type VCPU struct {
	fd      int
	id      int
	mapping []byte // kvm_run and the pages after it (PIO data, coalesced MMIO)
	run     *run
	holdP   bool // SetHoldP
	raw     bool // the last Run ended in an exit: the next keeps its P
}

// CreateVCPU creates vCPU id (its initial APIC id) and maps its kvm_run.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := ioctl(vm.fd, reqCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU %d: %w", id, err)
	}
	fd := int(r)
	m, err := unix.Mmap(fd, 0, vm.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: map kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{fd: fd, id: id, mapping: m, run: (*run)(unsafe.Pointer(&m[0]))}, nil
}

// ID is the id the vCPU was created with.
func (v *VCPU) ID() int { return v.id }

// Fd is the vCPU file descriptor, owned by the VCPU.
func (v *VCPU) Fd() int { return v.fd }

// Close unmaps kvm_run and closes the vCPU.
func (v *VCPU) Close() error {
	if v.mapping != nil {
		v.run = nil
		if err := unix.Munmap(v.mapping); err != nil {
			return fmt.Errorf("kvm: unmap kvm_run of vCPU %d: %w", v.id, err)
		}
		v.mapping = nil
	}
	return closeFd(&v.fd, fmt.Sprintf("vCPU %d", v.id))
}

// Run enters the guest until the next exit to userspace (KVM_RUN) and
// returns why it exited; the exit's details are read with IO, MMIO,
// SystemEvent and friends until the next Run.
//
// A signal to the vCPU's thread or SetImmediateExit(true) makes Run return
// ExitIntr with a nil error (KVM reports these as EINTR; EAGAIN is treated
// the same): the caller checks whatever stop request it has and calls Run
// again. Run does not allocate.
func (v *VCPU) Run() (Exit, error) {
	var e unix.Errno
	if v.raw {
		_, _, e = unix.RawSyscall(unix.SYS_IOCTL, uintptr(v.fd), reqRun, 0)
	} else {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), reqRun, 0)
	}
	v.raw = v.holdP && e == 0
	switch e {
	case 0:
		return Exit(v.run.exitReason), nil // the kernel fails KVM_RUN on a closed fd, so run is set
	case unix.EINTR, unix.EAGAIN:
		return ExitIntr, nil
	}
	return ExitUnknown, fmt.Errorf("kvm: KVM_RUN vCPU %d: %w", v.id, e)
}

// SetHoldP lets Run keep its goroutine's P (the Go scheduler's slot for
// running Go code) while the vCPU is in the guest, as long as the guest
// keeps exiting to userspace. Call it before the vCPU's goroutine runs,
// with a P to spare for each vCPU that may hold one (GOMAXPROCS at least
// the vCPUs plus the Ps the rest of the process needs).
//
// Why: entered as a system call, KVM_RUN gives the runtime's monitor
// (sysmon) a P in a system call; after 20 µs it hands the P to another
// thread (a futex wake, and a futex sleep when that thread finds nothing to
// run), keeps itself awake at its shortest period (a nanosleep every 20
// µs), and the vCPU's return from the guest has to win a P back. A guest
// doing I/O exits every few hundred microseconds, so each exit paid about
// two futex calls and two to three of the monitor's nanosleeps (measured on
// the host with a thread blocked 200 µs in a system call between
// notifications: 2.2 futex and 2.6 nanosleep per round trip, 0.16 and 0.1
// with the waits made raw and a P to spare). Made raw, the call is
// invisible to the scheduler: the goroutine keeps running on its P.
//
// It is safe because nothing waits on a P held that way for long: every
// signal makes KVM_RUN return EINTR, and the runtime signals a goroutine it
// must stop, for a collection or because it has run 10 ms without a
// pause. After such an interruption, or any other error, the next Run is a
// plain system call again, so an idle guest (in KVM_RUN until its next
// exit, which may be seconds away) holds no P and costs the runtime one
// preemption, not one every 10 ms.
func (v *VCPU) SetHoldP(on bool) { v.holdP, v.raw = on, false }

// SetImmediateExit sets kvm_run.immediate_exit: while true, every Run
// returns ExitIntr at once without entering the guest. Stopping a vCPU is
// SetImmediateExit(true) followed by a signal to its thread (for a Run
// already in the guest); the vCPU goroutine clears it when it resumes.
func (v *VCPU) SetImmediateExit(on bool) {
	var b uint8
	if on {
		b = 1
	}
	if v.run != nil {
		v.run.immediateExit = b
	}
}

// SetRequestInterruptWindow asks KVM to exit with ExitIRQWindowOpen as soon
// as the guest can take an interrupt (for a userspace interrupt controller).
func (v *VCPU) SetRequestInterruptWindow(on bool) {
	var b uint8
	if on {
		b = 1
	}
	if v.run != nil {
		v.run.requestInterruptWindow = b
	}
}

// ReadyForInterruptInjection reports kvm_run.ready_for_interrupt_injection.
func (v *VCPU) ReadyForInterruptInjection() bool {
	return v.run != nil && v.run.readyForInterruptInjection != 0
}

// Regs returns the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) Regs() (Regs, error) {
	var r Regs
	if _, err := ioctlPtr(v.fd, reqGetRegs, unsafe.Pointer(&r)); err != nil {
		return r, fmt.Errorf("kvm: KVM_GET_REGS vCPU %d: %w", v.id, err)
	}
	return r, nil
}

// SetRegs sets the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r Regs) error {
	if _, err := ioctlPtr(v.fd, reqSetRegs, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_REGS vCPU %d: %w", v.id, err)
	}
	return nil
}

// Sregs returns the special registers (KVM_GET_SREGS).
func (v *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(v.fd, reqGetSregs, unsafe.Pointer(&s)); err != nil {
		return s, fmt.Errorf("kvm: KVM_GET_SREGS vCPU %d: %w", v.id, err)
	}
	return s, nil
}

// SetSregs sets the special registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s Sregs) error {
	if _, err := ioctlPtr(v.fd, reqSetSregs, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_SREGS vCPU %d: %w", v.id, err)
	}
	return nil
}

// FPU returns the x87/SSE state (KVM_GET_FPU).
func (v *VCPU) FPU() (FPU, error) {
	var f FPU
	if _, err := ioctlPtr(v.fd, reqGetFPU, unsafe.Pointer(&f)); err != nil {
		return f, fmt.Errorf("kvm: KVM_GET_FPU vCPU %d: %w", v.id, err)
	}
	return f, nil
}

// SetFPU sets the x87/SSE state (KVM_SET_FPU).
func (v *VCPU) SetFPU(f FPU) error {
	if _, err := ioctlPtr(v.fd, reqSetFPU, unsafe.Pointer(&f)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_FPU vCPU %d: %w", v.id, err)
	}
	return nil
}

// LAPIC returns the in-kernel local APIC's registers (KVM_GET_LAPIC).
func (v *VCPU) LAPIC() (LAPIC, error) {
	var l LAPIC
	if _, err := ioctlPtr(v.fd, reqGetLAPIC, unsafe.Pointer(&l)); err != nil {
		return l, fmt.Errorf("kvm: KVM_GET_LAPIC vCPU %d: %w", v.id, err)
	}
	return l, nil
}

// SetLAPIC sets the in-kernel local APIC's registers (KVM_SET_LAPIC), e.g.
// to route LINT0 to the PIC as firmware would.
func (v *VCPU) SetLAPIC(l LAPIC) error {
	if _, err := ioctlPtr(v.fd, reqSetLAPIC, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_LAPIC vCPU %d: %w", v.id, err)
	}
	return nil
}

// MPState returns the multiprocessing state (KVM_GET_MP_STATE).
func (v *VCPU) MPState() (MPState, error) {
	var s MPState
	if _, err := ioctlPtr(v.fd, reqGetMPState, unsafe.Pointer(&s)); err != nil {
		return s, fmt.Errorf("kvm: KVM_GET_MP_STATE vCPU %d: %w", v.id, err)
	}
	return s, nil
}

// SetMPState sets the multiprocessing state (KVM_SET_MP_STATE).
func (v *VCPU) SetMPState(s MPState) error {
	if _, err := ioctlPtr(v.fd, reqSetMPState, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_MP_STATE vCPU %d state %d: %w", v.id, s, err)
	}
	return nil
}

// Events returns the exceptions, interrupts and NMIs KVM holds for the
// vCPU (KVM_GET_VCPU_EVENTS).
func (v *VCPU) Events() (VCPUEvents, error) {
	var e VCPUEvents
	if _, err := ioctlPtr(v.fd, reqGetVCPUEvents, unsafe.Pointer(&e)); err != nil {
		return e, fmt.Errorf("kvm: KVM_GET_VCPU_EVENTS vCPU %d: %w", v.id, err)
	}
	return e, nil
}

// SetCPUID2 sets what CPUID reports to the guest (KVM_SET_CPUID2); start
// from System.SupportedCPUID.
func (v *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	const entryWords = int(unsafe.Sizeof(CPUIDEntry{}) / 4)
	buf := make([]uint32, 2+len(entries)*entryWords) // struct kvm_cpuid2: nent, padding
	buf[0] = uint32(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[2])), len(entries)), entries)
	}
	if _, err := ioctlPtr(v.fd, reqSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CPUID2 vCPU %d (%d entries): %w", v.id, len(entries), err)
	}
	return nil
}

// msrBuffer lays out struct kvm_msrs (nmsrs, pad, entries) in a buffer
// aligned for its uint64 fields.
func msrBuffer(entries []MSREntry) ([]uint64, []MSREntry) {
	buf := make([]uint64, 1+2*len(entries))
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(entries))
	if len(entries) == 0 {
		return buf, nil
	}
	view := unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[1])), len(entries))
	copy(view, entries)
	return buf, view
}

// GetMSRs fills in Data for each entry's Index (KVM_GET_MSRS).
func (v *VCPU) GetMSRs(entries []MSREntry) error {
	buf, view := msrBuffer(entries)
	n, err := ioctlPtr(v.fd, reqGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("kvm: KVM_GET_MSRS vCPU %d: %w", v.id, err)
	}
	copy(entries, view[:min(int(n), len(view))])
	if int(n) < len(entries) {
		return fmt.Errorf("kvm: KVM_GET_MSRS vCPU %d: MSR %#x not readable", v.id, entries[n].Index)
	}
	return nil
}

// SetMSRs writes each entry's Data to its Index (KVM_SET_MSRS).
func (v *VCPU) SetMSRs(entries []MSREntry) error {
	buf, _ := msrBuffer(entries)
	n, err := ioctlPtr(v.fd, reqSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_MSRS vCPU %d: %w", v.id, err)
	}
	if int(n) < len(entries) {
		return fmt.Errorf("kvm: KVM_SET_MSRS vCPU %d: MSR %#x rejected", v.id, entries[n].Index)
	}
	return nil
}
