// Package cpuid turns the CPUID leaves KVM supports into the ones each vCPU
// of a VM shows its guest: a topology that matches the vCPU count (one
// thread per core, all cores in one package), the vCPU's own APIC id, the
// hypervisor bit and KVM's signature, so that the guest counts its CPUs
// right and finds KVM's paravirtual features; the TSC-deadline timer of
// KVM's local APIC (timer.go); no hardware virtualisation
// (VMX, SVM); and, where the host cannot virtualise XCR0, a CPU without
// XSAVE.
package cpuid

import "github.com/hyperroot/hyperroot/vmm/kvm"

const (
	leafFeatures   = 0x1
	leafCache      = 0x4
	leafTopology   = 0xB
	leafTopology2  = 0x1F
	leafKVMSig     = 0x40000000
	leafKVMFeat    = 0x40000001
	leafExtFeat    = 0x80000001
	leafAddrSizes  = 0x80000008
	leafAMDTopoExt = 0x8000001E
	leafSVM        = 0x8000000A

	ecxHypervisor = 1 << 31
	ecxX2APIC     = 1 << 21
	ecxVMX        = 1 << 5
	extECXSVM     = 1 << 2
	// KVM_FEATURE_MSI_EXT_DEST_ID: MSIs may carry APIC id bits 8-14 in
	// address bits 5-11 (the VMM moves them where KVM reads them).
	kvmMSIExtDestID = 1 << 15
	// xAPICCPUs is how many vCPUs 8-bit APIC ids reach (0-254).
	xAPICCPUs     = 255
	edxHTT        = 1 << 28
	extECXCmpLeg  = 1 << 1  // CmpLegacy: multi-core, HTT not meaning threads
	extECXTopoExt = 1 << 22 // leaf 0x8000001E present
)

// kvmSignature is "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
var kvmSignature = [3]uint32{0x4b4d564b, 0x564b4d56, 0x0000004d}

// bitsFor returns how many APIC-id bits n distinct ids need.
func bitsFor(n int) uint32 {
	b := uint32(0)
	for (1 << b) < n {
		b++
	}
	return b
}

// ForVCPU returns the CPUID entries for vCPU id (its APIC id) of a VM with
// n vCPUs, derived from supported (KVM_GET_SUPPORTED_CPUID). supported is
// not modified.
func ForVCPU(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported)+2)
	coreBits := bitsFor(n)
	for _, e := range supported {
		switch e.Function {
		case leafFeatures:
			e.EBX = e.EBX&0x0000ffff | uint32(min(n, 255))<<16 | uint32(id&0xff)<<24
			e.ECX |= ecxHypervisor
			// No nested virtualisation: a guest that sees VMX or SVM
			// loads its own KVM (a distribution kernel does), and
			// KVM's nested code is host kernel a guest then reaches.
			// Without the flag KVM refuses the guest VMXON and
			// EFER.SVME as a CPU without it would.
			e.ECX &^= ecxVMX
			if n > xAPICCPUs {
				e.ECX |= ecxX2APIC // the VMM starts them in x2APIC mode
			}
			if n > 1 {
				e.EDX |= edxHTT
			} else {
				e.EDX &^= edxHTT
			}
		case leafCache:
			// Cores per package - 1 in EAX[31:26]; one thread per cache.
			e.EAX = e.EAX&0x03ffffff | uint32(min(n, 64)-1)<<26
			e.EAX &^= 0xfff << 14
		case leafTopology, leafTopology2:
			e.EDX = uint32(id)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1: // core level: n cores
				e.EAX, e.EBX, e.ECX = coreBits, uint32(n), 1|2<<8
			default: // no further levels
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		case leafKVMSig:
			e.EBX, e.ECX, e.EDX = kvmSignature[0], kvmSignature[1], kvmSignature[2]
		case leafKVMFeat:
			if n > xAPICCPUs {
				e.EAX |= kvmMSIExtDestID
			}
		case leafExtFeat:
			// No AMD topology-extension leaf: it would describe the host.
			e.ECX &^= extECXTopoExt | extECXSVM
			if n > 1 {
				e.ECX |= extECXCmpLeg
			} else {
				e.ECX &^= extECXCmpLeg
			}
		case leafAddrSizes:
			// NC = cores - 1, ApicIdCoreIdSize = bits for the core id.
			e.ECX = e.ECX&^0xf0ff | uint32(n-1)&0xff | (coreBits&0xf)<<12
		case leafAMDTopoExt, leafSVM:
			continue
		}
		out = append(out, e)
	}
	return out
}
