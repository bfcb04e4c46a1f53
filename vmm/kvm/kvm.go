// Package kvm is a thin, typed layer over the Linux KVM ioctl API for
// x86-64: the system (/dev/kvm), VMs, vCPUs and the decoding of vCPU exits.
// It knows nothing about devices; Dispatch hands exits to a bus.Bus.
package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// APIVersion is the only KVM API version there has ever been.
const APIVersion = 12

// Cap is a KVM capability number for CheckExtension and EnableCap.
type Cap uint32

// Capabilities the VMM checks for (KVM_CAP_* in <linux/kvm.h>).
const (
	CapIRQChip          Cap = 0
	CapHLT              Cap = 1
	CapUserMemory       Cap = 3
	CapSetTSSAddr       Cap = 4
	CapExtCPUID         Cap = 7
	CapNrVCPUs          Cap = 9  // recommended maximum vCPUs per VM
	CapNrMemslots       Cap = 10 // maximum memory slots per VM
	CapMPState          Cap = 14
	CapSyncMMU          Cap = 16
	CapIRQRouting       Cap = 25
	CapIRQInjectStatus  Cap = 26
	CapIRQFD            Cap = 32
	CapPIT2             Cap = 33
	CapIOEventFD        Cap = 36
	CapSetIdentityMap   Cap = 37
	CapAdjustClock      Cap = 39
	CapVCPUEvents       Cap = 41
	CapEnableCap        Cap = 54
	CapXSave            Cap = 55
	CapXCRs             Cap = 56
	CapTSCControl       Cap = 60
	CapGetTSCKHz        Cap = 61
	CapMaxVCPUs         Cap = 66 // hard maximum vCPUs per VM
	CapTSCDeadlineTimer Cap = 72
	CapSignalMSI        Cap = 77
	CapReadonlyMem      Cap = 81
	CapIRQFDResample    Cap = 82
	CapSplitIRQChip     Cap = 121
	CapIOEventFDAnyLen  Cap = 122
	CapMaxVCPUID        Cap = 128 // maximum vCPU id + 1
	CapX2APICAPI        Cap = 129
	CapImmediateExit    Cap = 136
	CapX86DisableExits  Cap = 143
)

// Arguments of EnableCap(CapX2APICAPI, ...): 32-bit APIC ids in MSI routes
// and x2APIC mode, needed for more than 255 vCPUs.
const (
	X2APICAPIUse32BitIDs           = 1 << 0
	X2APICAPIDisableBroadcastQuirk = 1 << 1
)

// System is an open /dev/kvm.
type System struct {
	fd int
}

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: open /dev/kvm: %w", err)
	}
	s := &System{fd: fd}
	v, err := s.APIVersion()
	if err != nil {
		s.Close()
		return nil, err
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("kvm: API version %d, want %d", v, APIVersion)
	}
	return s, nil
}

// Close closes /dev/kvm; VMs created from it stay valid.
func (s *System) Close() error { return closeFd(&s.fd, "/dev/kvm") }

// APIVersion returns KVM_GET_API_VERSION.
func (s *System) APIVersion() (int, error) {
	r, err := ioctl(s.fd, reqGetAPIVersion, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_API_VERSION: %w", err)
	}
	return int(r), nil
}

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 when unsupported,
// otherwise 1 or a capability-specific number (e.g. CapMaxVCPUs).
func (s *System) CheckExtension(c Cap) (int, error) { return checkExtension(s.fd, c) }

func checkExtension(fd int, c Cap) (int, error) {
	r, err := ioctl(fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION %d: %w", c, err)
	}
	return int(r), nil
}

// VCPUMmapSize is the size of each vCPU's shared kvm_run area.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, reqGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if int(r) < int(unsafe.Sizeof(run{})) {
		return 0, fmt.Errorf("kvm: vCPU mmap size %d is smaller than kvm_run", r)
	}
	return int(r), nil
}

// maxEntries bounds the buffers SupportedCPUID and MSRIndexList grow, so a
// misbehaving kernel cannot make them loop forever.
const maxEntries = 1 << 16

// SupportedCPUID returns the CPUID leaves KVM can expose to a guest
// (KVM_GET_SUPPORTED_CPUID), the starting point of every vCPU's CPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	const entryWords = int(unsafe.Sizeof(CPUIDEntry{}) / 4)
	for n := 64; n <= maxEntries; n *= 2 {
		// struct kvm_cpuid2: nent, padding, then the entries.
		buf := make([]uint32, 2+n*entryWords)
		buf[0] = uint32(n)
		_, err := ioctlPtr(s.fd, reqGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		got := min(int(buf[0]), n)
		entries := unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[2])), n)
		return append([]CPUIDEntry(nil), entries[:got]...), nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: more than %d entries", maxEntries)
}

// MSRIndexList returns the MSRs KVM saves and restores for a vCPU
// (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	n := 0
	for {
		// struct kvm_msr_list: nmsrs, then the indices. On E2BIG the
		// kernel writes the needed count into nmsrs.
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctlPtr(s.fd, reqGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) && int(buf[0]) > n && buf[0] <= maxEntries {
			n = int(buf[0])
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		return append([]uint32(nil), buf[1:1+min(int(buf[0]), n)]...), nil
	}
}

// CreateVM creates an empty VM: no memory, no vCPUs, no irqchip.
func (s *System) CreateVM() (*VM, error) {
	size, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	// Machine type 0: the default x86 VM. KVM returns the fd with
	// O_CLOEXEC already set.
	r, err := ioctl(s.fd, reqCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(r), runSize: size}, nil
}

func closeFd(fd *int, what string) error {
	if *fd < 0 {
		return nil
	}
	err := unix.Close(*fd)
	*fd = -1
	if err != nil {
		return fmt.Errorf("kvm: close %s: %w", what, err)
	}
	return nil
}
