package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	kvmGetAPIVersion   = 0xAE00
	kvmCreateVM        = 0xAE01
	kvmCheckExtension  = 0xAE03
	kvmCapNrVCPUs      = 9
	kvmCapMaxVCPUs     = 66
	kvmExpectedVersion = 12
)

// kvmState is what the console says about virtualisation support.
type kvmState struct {
	API          int
	Module       string // kvm_amd or kvm_intel
	NestedPaging bool   // npt (AMD) or ept (Intel)
	MaxVCPUs     int
}

func (s kvmState) String() string {
	np := "off"
	if s.NestedPaging {
		np = "on"
	}
	return fmt.Sprintf("ok api=%d module=%s nested-paging=%s max-vcpus=%d", s.API, s.Module, np, s.MaxVCPUs)
}

// probeKVM checks that /dev/kvm works by creating (and dropping) a VM, and
// finds the vendor module and whether it runs with nested paging, without
// which guests are far slower.
func probeKVM() (kvmState, error) {
	var s kvmState
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return s, fmt.Errorf("/dev/kvm: %w (no kvm_amd/kvm_intel loaded, or no virtualisation in this CPU)", err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if s.API, err = unix.IoctlRetInt(fd, kvmGetAPIVersion); err != nil {
		return s, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if s.API != kvmExpectedVersion {
		return s, fmt.Errorf("KVM API version %d, want %d", s.API, kvmExpectedVersion)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		return s, fmt.Errorf("KVM_CREATE_VM: %w", errno)
	}
	unix.Close(int(vm))
	if n, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCheckExtension, kvmCapMaxVCPUs); errno == 0 {
		s.MaxVCPUs = int(n)
	}
	for mod, param := range map[string]string{"kvm_amd": "npt", "kvm_intel": "ept"} {
		v, err := moduleParam(mod, param)
		if err != nil {
			continue
		}
		s.Module = mod
		s.NestedPaging = v == "1" || v == "Y" || v == "y"
	}
	if s.Module == "" {
		return s, errors.New("KVM works but neither kvm_amd nor kvm_intel is loaded")
	}
	return s, nil
}
