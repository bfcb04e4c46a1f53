package cpuid

import (
	"testing"

	"github.com/hyperroot/hyperroot/vmm/kvm"
)

func find(es []kvm.CPUIDEntry, fn, idx uint32) *kvm.CPUIDEntry {
	for i := range es {
		if es[i].Function == fn && es[i].Index == idx {
			return &es[i]
		}
	}
	return nil
}

func sample() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		{Function: 0, EAX: 0x1f},
		{Function: leafFeatures, EBX: 0x12345678, EDX: edxHTT},
		{Function: leafTopology, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafTopology, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafTopology, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafKVMSig, EAX: 0x40000001},
		{Function: leafKVMFeat, EAX: 1},
		{Function: leafExtFeat, ECX: extECXTopoExt},
		{Function: leafAddrSizes, ECX: 0x7007},
		{Function: leafAMDTopoExt, EAX: 7},
	}
}

func TestForVCPU(t *testing.T) {
	for _, tc := range []struct{ id, n int }{{0, 1}, {1, 2}, {5, 8}, {63, 64}, {299, 300}} {
		in := sample()
		out := ForVCPU(in, tc.id, tc.n)
		f := find(out, leafFeatures, 0)
		if got := int(f.EBX >> 24); got != tc.id&0xff {
			t.Errorf("%v: leaf 1 APIC id %d", tc, got)
		}
		if got := int(f.EBX >> 16 & 0xff); got != min(tc.n, 255) {
			t.Errorf("%v: leaf 1 logical count %d", tc, got)
		}
		if f.EBX&0xffff != 0x5678 || f.ECX&ecxHypervisor == 0 || (f.EDX&edxHTT != 0) != (tc.n > 1) {
			t.Errorf("%v: leaf 1 = %+v", tc, f)
		}
		core := find(out, leafTopology, 1)
		if core.EBX != uint32(tc.n) || core.EDX != uint32(tc.id) || core.ECX>>8&0xff != 2 || (1<<core.EAX) < tc.n {
			t.Errorf("%v: leaf 0xB core level = %+v", tc, core)
		}
		if smt := find(out, leafTopology, 0); smt.EBX != 1 || smt.EAX != 0 || smt.ECX != 1<<8 {
			t.Errorf("%v: leaf 0xB SMT level = %+v", tc, smt)
		}
		if end := find(out, leafTopology, 2); end.ECX>>8&0xff != 0 {
			t.Errorf("%v: leaf 0xB level 2 is not the end: %+v", tc, end)
		}
		sig := find(out, leafKVMSig, 0)
		b := []byte{}
		for _, r := range []uint32{sig.EBX, sig.ECX, sig.EDX} {
			b = append(b, byte(r), byte(r>>8), byte(r>>16), byte(r>>24))
		}
		if string(b[:9]) != "KVMKVMKVM" {
			t.Errorf("signature %q", b)
		}
		if find(out, leafAMDTopoExt, 0) != nil || find(out, leafExtFeat, 0).ECX&extECXTopoExt != 0 {
			t.Error("AMD topology extensions still advertised")
		}
		if nc := find(out, leafAddrSizes, 0).ECX & 0xff; int(nc) != (tc.n-1)&0xff {
			t.Errorf("%v: NC = %d", tc, nc)
		}
		// Beyond 255 vCPUs: x2APIC, and extended MSI destination ids.
		big := tc.n > 255
		if (f.ECX&ecxX2APIC != 0) != big {
			t.Errorf("%v: x2APIC bit %v", tc, f.ECX&ecxX2APIC != 0)
		}
		if kf := find(out, leafKVMFeat, 0); kf.EAX&1 == 0 || (kf.EAX&kvmMSIExtDestID != 0) != big {
			t.Errorf("%v: KVM features %#x", tc, kf.EAX)
		}
		if in[1].EBX != 0x12345678 {
			t.Fatal("input modified")
		}
	}
}

// TestNoNestedVirt: the host's VMX and SVM flags, and the SVM feature
// leaf, do not reach the guest; the other feature bits do.
func TestNoNestedVirt(t *testing.T) {
	const ecxSSE3, extECXLAHF = 1 << 0, 1 << 0
	in := []kvm.CPUIDEntry{
		{Function: leafFeatures, ECX: ecxVMX | ecxSSE3},
		{Function: leafExtFeat, ECX: extECXSVM | extECXLAHF},
		{Function: leafSVM, EAX: 1, EBX: 0x8000, EDX: 0xffff},
	}
	out := ForVCPU(in, 0, 1)
	if f := find(out, leafFeatures, 0); f.ECX&ecxVMX != 0 || f.ECX&ecxSSE3 == 0 {
		t.Errorf("leaf 1 ECX %#x: want VMX clear, SSE3 kept", f.ECX)
	}
	if f := find(out, leafExtFeat, 0); f.ECX&extECXSVM != 0 || f.ECX&extECXLAHF == 0 {
		t.Errorf("leaf 0x80000001 ECX %#x: want SVM clear, LAHF kept", f.ECX)
	}
	if f := find(out, leafSVM, 0); f != nil {
		t.Errorf("the SVM feature leaf reached the guest: %+v", *f)
	}
	if in[0].ECX&ecxVMX == 0 || in[1].ECX&extECXSVM == 0 {
		t.Error("ForVCPU changed its input")
	}
}
