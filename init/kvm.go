package main

import (
	"errors"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/kvm"
)

// kvmState is what the console says about virtualisation support.
type kvmState struct {
	API          int
	Module       string // kvm_amd or kvm_intel
	NestedPaging bool   // npt (AMD) or ept (Intel)
	MaxVCPUs     int
	// NXHugePages is KVM's nx_huge_pages setting (the iTLB multihit
	// mitigation: guest huge pages mapped no-execute until executed from,
	// then split), "" when the kernel has none.
	NXHugePages string
}

func (s kvmState) String() string {
	np := "off"
	if s.NestedPaging {
		np = "on"
	}
	nx := ""
	if s.NXHugePages != "" {
		nx = " nx-huge-pages=" + s.NXHugePages
	}
	return fmt.Sprintf("ok api=%d module=%s nested-paging=%s max-vcpus=%d%s", s.API, s.Module, np, s.MaxVCPUs, nx)
}

// probeKVM checks that /dev/kvm works by creating (and dropping) a VM, and
// finds the vendor module and whether it runs with nested paging, without
// which guests are far slower.
func probeKVM() (kvmState, error) {
	var s kvmState
	sys, err := kvm.Open()
	if err != nil {
		return s, fmt.Errorf("%w (no kvm_amd/kvm_intel loaded, or no virtualisation in this CPU)", err)
	}
	defer sys.Close()
	if s.API, err = sys.APIVersion(); err != nil {
		return s, err
	}
	vm, err := sys.CreateVM()
	if err != nil {
		return s, err
	}
	vm.Close()
	if n, err := sys.CheckExtension(kvm.CapMaxVCPUs); err == nil {
		s.MaxVCPUs = n
	}
	for mod, param := range map[string]string{"kvm_amd": "npt", "kvm_intel": "ept"} {
		v, err := moduleParam(mod, param)
		if err != nil {
			continue
		}
		s.Module = mod
		s.NestedPaging = v == "1" || v == "Y" || v == "y"
	}
	if v, err := moduleParam("kvm", "nx_huge_pages"); err == nil {
		s.NXHugePages = v
	}
	if s.Module == "" {
		return s, errors.New("KVM works but neither kvm_amd nor kvm_intel is loaded")
	}
	return s, nil
}
