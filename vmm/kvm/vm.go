package kvm

import (
	"fmt"
	"unsafe"
)

// VM is a KVM virtual machine.
type VM struct {
	fd      int
	runSize int // size of each vCPU's kvm_run mapping
}

// Fd is the VM file descriptor, owned by the VM.
func (vm *VM) Fd() int { return vm.fd }

// Close closes the VM. KVM frees it once every vCPU is closed too.
func (vm *VM) Close() error { return closeFd(&vm.fd, "VM") }

// CheckExtension is System.CheckExtension asked of this VM, which is what
// KVM recommends: some answers (CapMaxVCPUs, CapNrMemslots) are per VM.
func (vm *VM) CheckExtension(c Cap) (int, error) { return checkExtension(vm.fd, c) }

// SetUserMemoryRegion maps size bytes of this process at host into the guest
// at gpa as memory slot slot (KVM_SET_USER_MEMORY_REGION). size 0 deletes the
// slot. flags is MemLogDirtyPages and/or MemReadonly.
func (vm *VM) SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error {
	r := userspaceMemoryRegion{slot: slot, flags: flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: uint64(host)}
	if _, err := ioctlPtr(vm.fd, reqSetUserMemRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", slot, gpa, size, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and a local APIC per
// vCPU (created afterwards), with the default GSI routing: GSI n goes to
// IOAPIC pin n and, for n < 16, to the PICs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, reqCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer (ports 0x40-0x43) and its
// port 0x61 speaker gate. It needs the irqchip.
func (vm *VM) CreatePIT2() error {
	c := pitConfig{flags: pitSpeakerDummy}
	if _, err := ioctlPtr(vm.fd, reqCreatePIT2, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetTSSAddr places the three pages Intel VMX needs for real-mode emulation
// (KVM_SET_TSS_ADDR); they must not overlap RAM or MMIO the guest uses.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctl(vm.fd, reqSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity map Intel VMX uses for
// real mode (KVM_SET_IDENTITY_MAP_ADDR), usually just below the TSS pages.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, reqSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// IRQLine sets the level of an in-kernel irqchip input (KVM_IRQ_LINE).
// Edge-triggered interrupts are a true then false pair.
func (vm *VM) IRQLine(gsi uint32, level bool) error {
	l := irqLevel{irq: gsi}
	if level {
		l.level = 1
	}
	if _, err := ioctlPtr(vm.fd, reqIRQLine, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("kvm: KVM_IRQ_LINE gsi %d level %v: %w", gsi, level, err)
	}
	return nil
}

// RouteType says where a GSI route delivers.
type RouteType uint32

// Route types (KVM_IRQ_ROUTING_*).
const (
	RouteIRQChip RouteType = 1
	RouteMSI     RouteType = 2
)

// IRQChip names an in-kernel interrupt controller for a RouteIRQChip route.
type IRQChip uint32

// In-kernel interrupt controllers (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster IRQChip = 0
	IRQChipPICSlave  IRQChip = 1
	IRQChipIOAPIC    IRQChip = 2
)

// MSI is a message-signalled interrupt: the guest-programmed address and
// data of an MSI or MSI-X vector.
type MSI struct {
	Addr uint64
	Data uint32
}

// Route sends one GSI to an irqchip pin or as an MSI. Several routes may
// share a GSI (the legacy ones go to both a PIC and the IOAPIC).
type Route struct {
	GSI  uint32
	Type RouteType
	Chip IRQChip // RouteIRQChip
	Pin  uint32  // RouteIRQChip
	MSI  MSI     // RouteMSI
}

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
// Include the default legacy routes when adding MSI routes, or the PIC and
// IOAPIC inputs stop working.
func (vm *VM) SetGSIRouting(routes []Route) error {
	const (
		hdrWords   = 2 // struct kvm_irq_routing: nr, flags
		entryWords = int(unsafe.Sizeof(routingEntry{}) / 4)
	)
	buf := make([]uint32, hdrWords+len(routes)*entryWords)
	buf[0] = uint32(len(routes))
	if len(routes) > 0 {
		entries := unsafe.Slice((*routingEntry)(unsafe.Pointer(&buf[hdrWords])), len(routes))
		for i, r := range routes {
			e := &entries[i]
			e.gsi, e.typ = r.GSI, uint32(r.Type)
			switch r.Type {
			case RouteIRQChip:
				e.u[0], e.u[1] = uint32(r.Chip), r.Pin
			case RouteMSI:
				e.u[0], e.u[1], e.u[2] = uint32(r.MSI.Addr), uint32(r.MSI.Addr>>32), r.MSI.Data
			default:
				return fmt.Errorf("kvm: route %d (gsi %d): unknown type %d", i, r.GSI, r.Type)
			}
		}
	}
	if _, err := ioctlPtr(vm.fd, reqSetGSIRouting, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING (%d routes): %w", len(routes), err)
	}
	return nil
}

// IRQFD makes a write to eventfd fd raise gsi inside the kernel, without
// the VMM: this is how vhost-user backends and device threads interrupt the
// guest. With resampleFd >= 0 the GSI is level-triggered: KVM deasserts it
// when the guest EOIs and signals resampleFd so the device can re-raise it.
// deassign removes the binding instead.
func (vm *VM) IRQFD(fd int, gsi uint32, resampleFd int, deassign bool) error {
	a := irqfd{fd: uint32(fd), gsi: gsi}
	if resampleFd >= 0 {
		a.flags |= irqfdFlagResample
		a.resamplefd = uint32(resampleFd)
	}
	if deassign {
		a.flags = irqfdFlagDeassign
	}
	if _, err := ioctlPtr(vm.fd, reqIRQFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// IOEvent describes guest writes that signal an ioeventfd instead of
// exiting to the VMM: virtqueue notifications.
type IOEvent struct {
	Addr  uint64 // port (PIO) or guest-physical address
	Len   uint32 // access width 1, 2, 4 or 8; 0 matches any width (MMIO only, CapIOEventFDAnyLen)
	PIO   bool   // port I/O rather than MMIO
	Match bool   // signal only when the written value equals Data
	Data  uint64
}

// IOEventFD binds eventfd fd to guest writes described by ev
// (KVM_IOEVENTFD), or with deassign removes that binding; ev must then be
// the same as when assigned.
func (vm *VM) IOEventFD(fd int, ev IOEvent, deassign bool) error {
	a := ioeventfd{addr: ev.Addr, len: ev.Len, fd: int32(fd)}
	if ev.PIO {
		a.flags |= ioeventfdFlagPIO
	}
	if ev.Match {
		a.flags |= ioeventfdFlagDatamatch
		a.datamatch = ev.Data
	}
	if deassign {
		a.flags |= ioeventfdFlagDeassign
	}
	if _, err := ioctlPtr(vm.fd, reqIOEventFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD fd %d addr %#x len %d pio %v: %w", fd, ev.Addr, ev.Len, ev.PIO, err)
	}
	return nil
}

// SignalMSI injects one MSI (KVM_SIGNAL_MSI). It reports false when the
// guest had the interrupt blocked (e.g. its LAPIC disabled).
func (vm *VM) SignalMSI(m MSI) (bool, error) {
	a := msi{addressLo: uint32(m.Addr), addressHi: uint32(m.Addr >> 32), data: m.Data}
	r, err := ioctlPtr(vm.fd, reqSignalMSI, unsafe.Pointer(&a))
	if err != nil {
		return false, fmt.Errorf("kvm: KVM_SIGNAL_MSI addr %#x data %#x: %w", m.Addr, m.Data, err)
	}
	return r > 0, nil
}

// EnableCap turns on a VM capability that needs asking for (KVM_ENABLE_CAP),
// with up to four capability-specific arguments.
func (vm *VM) EnableCap(c Cap, args ...uint64) error {
	if len(args) > 4 {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP %d: %d arguments, at most 4", c, len(args))
	}
	a := enableCap{cap: uint32(c)}
	copy(a.args[:], args)
	if _, err := ioctlPtr(vm.fd, reqEnableCap, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP %d: %w", c, err)
	}
	return nil
}
