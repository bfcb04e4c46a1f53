package cpuid

import (
	"slices"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/kvm"
)

const sig = kvm.CPUIDFlagSignificantIndex

// tcgMax is shaped like what KVM reports nested under QEMU TCG -cpu max:
// XSAVE with x87|SSE|AVX|PKRU in the standard (uncompacted) layout.
func tcgMax() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		{Function: 0, EAX: 0xd},
		// SSE3 0, SSSE3 9, FMA 12, CX16 13, SSE4.1 19, SSE4.2 20, POPCNT 23,
		// AES 25, XSAVE 26, AVX 28, F16C 29, RDRAND 30; EDX FXSR, SSE, SSE2.
		{Function: 1, ECX: 1<<0 | 1<<9 | 1<<12 | 1<<13 | 1<<19 | 1<<20 | 1<<23 | 1<<25 | 1<<26 | 1<<28 | 1<<29 | 1<<30,
			EDX: 1<<24 | 1<<25 | 1<<26},
		// FSGSBASE 0, BMI1 3, AVX2 5, SMEP 7, BMI2 8, ERMS 9, AVX512F 16,
		// ADX 19, SMAP 20; ECX PKU 3, OSPKE 4, GFNI 8, VAES 9; EDX CET_IBT 20, MD_CLEAR 10.
		{Function: 7, Index: 0, Flags: sig, EAX: 1, EBX: 1<<0 | 1<<3 | 1<<5 | 1<<7 | 1<<8 | 1<<9 | 1<<16 | 1<<19 | 1<<20,
			ECX: 1<<3 | 1<<4 | 1<<8 | 1<<9, EDX: 1<<10 | 1<<20},
		{Function: 7, Index: 1, Flags: sig, EAX: 1<<4 | 1<<5 | 1<<26}, // AVX_VNNI, AVX512_BF16, LAM
		{Function: leafXSAVE, Index: 0, Flags: sig, EAX: 0x207, EBX: 2696, ECX: 2696},
		{Function: leafXSAVE, Index: 1, Flags: sig, EAX: 1}, // XSAVEOPT only: standard layout
		{Function: leafXSAVE, Index: 2, Flags: sig, EAX: 256, EBX: 576},
		{Function: leafXSAVE, Index: 9, Flags: sig, EAX: 8, EBX: 2688},
		{Function: leafKVMSig, EAX: 0x40000001},
		// LAHF 0, SVM 2, ABM 5, SSE4A 6, XOP 11, FMA4 16.
		{Function: leafExtFeat, ECX: 1<<0 | 1<<2 | 1<<5 | 1<<6 | 1<<11 | 1<<16, EDX: 1 << 29},
	}
}

func TestWithoutXSAVE(t *testing.T) {
	in := tcgMax()
	orig := slices.Clone(in)
	out := WithoutXSAVE(in)
	if !slices.Equal(in, orig) {
		t.Fatal("input modified")
	}
	if !HasXSAVE(in) || HasXSAVE(out) {
		t.Fatalf("HasXSAVE: before %v, after %v", HasXSAVE(in), HasXSAVE(out))
	}
	for _, tc := range []struct {
		fn, idx            uint32
		eax, ebx, ecx, edx uint32 // what must remain
	}{
		{fn: 0, eax: 0xd},
		{fn: 1, ecx: 1<<0 | 1<<9 | 1<<13 | 1<<19 | 1<<20 | 1<<23 | 1<<25 | 1<<30, edx: 1<<24 | 1<<25 | 1<<26},
		{fn: 7, idx: 0, eax: 1, ebx: 1<<0 | 1<<3 | 1<<7 | 1<<8 | 1<<9 | 1<<19 | 1<<20, ecx: 1 << 8, edx: 1 << 10},
		{fn: 7, idx: 1, eax: 1 << 26},
		{fn: leafKVMSig, eax: 0x40000001},
		{fn: leafExtFeat, ecx: 1<<0 | 1<<2 | 1<<5 | 1<<6, edx: 1 << 29},
	} {
		e := find(out, tc.fn, tc.idx)
		if e == nil {
			t.Errorf("leaf %#x.%d dropped", tc.fn, tc.idx)
			continue
		}
		if e.EAX != tc.eax || e.EBX != tc.ebx || e.ECX != tc.ecx || e.EDX != tc.edx {
			t.Errorf("leaf %#x.%d = %#x %#x %#x %#x, want %#x %#x %#x %#x", tc.fn, tc.idx,
				e.EAX, e.EBX, e.ECX, e.EDX, tc.eax, tc.ebx, tc.ecx, tc.edx)
		}
	}
	for _, e := range out {
		if e.Function == leafXSAVE {
			t.Errorf("leaf 0xD.%d still present", e.Index)
		}
	}
	if len(out) != len(in)-4 {
		t.Errorf("%d entries out of %d, want 4 fewer (the 0xD subleaves)", len(out), len(in))
	}
}

// A leaf 7 entry without the significant-index flag answers every subleaf;
// it is treated as subleaf 0 only (not also masked as 7.1).
func TestWithoutXSAVENonSignificantIndex(t *testing.T) {
	out := WithoutXSAVE([]kvm.CPUIDEntry{{Function: 7, EAX: 1<<4 | 1<<5, EBX: 1<<5 | 1<<9}})
	if out[0].EBX != 1<<9 || out[0].EAX != 1<<4|1<<5 {
		t.Errorf("leaf 7 = %+v", out[0])
	}
}

// linuxXstate models what a Linux 6.1 guest does with the CPUID it is shown
// (arch/x86/kernel/fpu/xstate.c: fpu__init_system_xstate, init_xstate_size,
// paranoid_xstate_size_valid), for the standard XSAVE layout. kvmXCR0 maps
// the XCR0 the guest sets with XSETBV to the XCR0 KVM believes the guest
// has, from which KVM computes CPUID 0xD.0 EBX (xstate_required_size).
// It returns the size the guest adds up from the 0xD subleaves and the
// kernel_size it reads from 0xD.0 EBX; xsave is false if the guest does not
// use XSAVE at all (then it uses FXSAVE and checks nothing).
func linuxXstate(es []kvm.CPUIDEntry, kvmXCR0 func(uint64) uint64) (size, kernelSize uint32, xsave bool) {
	get := func(fn, idx uint32) kvm.CPUIDEntry {
		if e := find(es, fn, idx); e != nil {
			return *e
		}
		return kvm.CPUIDEntry{}
	}
	if get(1, 0).ECX&ecxXSAVE == 0 {
		return 0, 0, false
	}
	d0 := get(leafXSAVE, 0)
	features := uint64(d0.EAX) | uint64(d0.EDX)<<32
	// Components whose feature bit is not shown are dropped.
	if get(1, 0).ECX&(1<<28) == 0 {
		features &^= 1 << 2 // YMM needs AVX
	}
	if get(7, 0).ECX&(1<<3) == 0 {
		features &^= 1 << 9 // PKRU needs PKU
	}
	required := func(xcr0 uint64) uint32 { // KVM's xstate_required_size, standard layout
		r := uint32(576)
		for i := uint32(2); i < 64; i++ {
			if xcr0&(1<<i) != 0 {
				e := get(leafXSAVE, i)
				r = max(r, e.EBX+e.EAX)
			}
		}
		return r
	}
	size = 576
	for i := uint32(2); i < 64; i++ {
		if features&(1<<i) != 0 {
			e := get(leafXSAVE, i)
			size = e.EBX + e.EAX
		}
	}
	return size, required(kvmXCR0(features)), true
}

func TestLinuxXstateCheck(t *testing.T) {
	followed := func(x uint64) uint64 { return x }
	stuck := func(uint64) uint64 { return 1 } // KVM never saw XSETBV: reset value
	for _, tc := range []struct {
		name       string
		cpuid      []kvm.CPUIDEntry
		kvm        func(uint64) uint64
		wantSize   uint32 // 0: guest must not use XSAVE
		wantKernel uint32
	}{
		{"KVM follows XCR0", tcgMax(), followed, 2696, 2696},
		// The guest's warning, exactly: size 2696 != kernel_size 576.
		{"XSETBV not intercepted", tcgMax(), stuck, 2696, 576},
		{"XSETBV not intercepted, XSAVE hidden", WithoutXSAVE(tcgMax()), stuck, 0, 0},
		{"KVM follows XCR0, XSAVE hidden", WithoutXSAVE(tcgMax()), followed, 0, 0},
	} {
		size, kernelSize, xsave := linuxXstate(tc.cpuid, tc.kvm)
		if tc.wantSize == 0 {
			if xsave {
				t.Errorf("%s: guest uses XSAVE", tc.name)
			}
			continue
		}
		if size != tc.wantSize {
			t.Errorf("%s: size %d, want %d", tc.name, size, tc.wantSize)
		}
		if kernelSize != tc.wantKernel {
			t.Errorf("%s: kernel_size %d, want %d", tc.name, kernelSize, tc.wantKernel)
		}
	}
}
