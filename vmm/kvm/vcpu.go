package kvm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/holdp"
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
	wait    holdp.Waiter // KVM_RUN, keeping the P (SetHoldP)
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
	_, e := v.wait.Syscall6(unix.SYS_IOCTL, uintptr(v.fd), reqRun, 0, 0, 0, 0)
	switch e {
	case 0:
		return Exit(v.run.exitReason), nil // the kernel fails KVM_RUN on a closed fd, so run is set
	case unix.EINTR, unix.EAGAIN:
		return ExitIntr, nil
	}
	return ExitUnknown, fmt.Errorf("kvm: KVM_RUN vCPU %d: %w", v.id, e)
}

// SetHoldP lets Run keep its goroutine's P while the vCPU is in the guest,
// after a run that ended in an exit (package holdp: KVM_RUN made raw; any
// signal ends it with EINTR, and the run after that is a plain system call,
// so an idle guest holds no P). Call it before the vCPU's goroutine runs,
// with a P to spare for each vCPU that may hold one. Guests that exit to
// userspace often gain most: an I/O exit round trip took 0.80-0.94 of the
// time in the TCG test bed (BenchmarkIOExitHeld against BenchmarkIOExitBus).
func (v *VCPU) SetHoldP(on bool) { v.wait.SetHold(on) }

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
