package cpuid

import "github.com/hyperroot/hyperroot/vmm/kvm"

// leafXSAVE enumerates the XSAVE state components (leaf 0xD).
const leafXSAVE = 0xD

const ecxXSAVE = 1 << 26 // leaf 1 ECX: XSAVE/XRSTOR, XSETBV/XGETBV, CR4.OSXSAVE

// xsaveDependents lists, per leaf/subleaf register, the feature bits that
// cannot work without XSAVE: their registers live in an XSAVE state
// component the OS must enable in XCR0 (AVX's YMM, AVX-512's opmask and
// ZMM, MPX's bounds, PKU's PKRU, AMX's tiles, CET's XSS-managed state) or
// they are XSAVE itself. Real CPUs never show these without XSAVE, and some
// software tests only the feature bit, so they go with it.
var xsaveDependents = [...]struct {
	fn, idx uint32
	reg     int // 0 EAX, 1 EBX, 2 ECX, 3 EDX
	bits    uint32
}{
	// FMA 12, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29.
	{leafFeatures, 0, 2, 1<<12 | 1<<26 | 1<<27 | 1<<28 | 1<<29},
	// AVX2 5, MPX 14, AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31.
	{0x7, 0, 1, 1<<5 | 1<<14 | 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31},
	// AVX512_VBMI 1, PKU 3, OSPKE 4, VBMI2 6, CET_SS 7, VAES 9,
	// VPCLMULQDQ 10, VNNI 11, BITALG 12, VPOPCNTDQ 14.
	{0x7, 0, 2, 1<<1 | 1<<3 | 1<<4 | 1<<6 | 1<<7 | 1<<9 | 1<<10 | 1<<11 | 1<<12 | 1<<14},
	// 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, CET_IBT 20, AMX_BF16 22,
	// AVX512_FP16 23, AMX_TILE 24, AMX_INT8 25.
	{0x7, 0, 3, 1<<2 | 1<<3 | 1<<8 | 1<<20 | 1<<22 | 1<<23 | 1<<24 | 1<<25},
	// AVX_VNNI 4, AVX512_BF16 5.
	{0x7, 1, 0, 1<<4 | 1<<5},
	// AMD XOP 11, FMA4 16.
	{leafExtFeat, 0, 2, 1<<11 | 1<<16},
}

// HasXSAVE reports whether entries advertise XSAVE (leaf 1 ECX bit 26).
func HasXSAVE(entries []kvm.CPUIDEntry) bool {
	for _, e := range entries {
		if e.Function == leafFeatures {
			return e.ECX&ecxXSAVE != 0
		}
	}
	return false
}

// WithoutXSAVE returns a copy of entries describing a CPU without XSAVE:
// the XSAVE bit and every feature that needs XSAVE-managed state are
// cleared and leaf 0xD is dropped, so the guest keeps CR4.OSXSAVE clear
// and saves its FPU/SSE state with FXSAVE.
//
// It is for hosts whose KVM cannot follow the guest's XCR0. KVM learns the
// guest's XCR0 only when XSETBV exits to it; it reports CPUID 0xD.0 EBX
// (and 0xD.1 EBX) from that value and loads it into XCR0 on every entry
// while the guest's CR4.OSXSAVE is set. Under QEMU TCG before 8.2 the
// nested SVM CPU ignores the XSETBV intercept, so KVM keeps XCR0 = x87 and
// a Linux guest sees a 576-byte XSAVE area for the features it just
// enabled ("XSAVE consistency problem") and loses state on every exit.
// entries is not modified.
func WithoutXSAVE(entries []kvm.CPUIDEntry) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(entries))
	for _, e := range entries {
		if e.Function == leafXSAVE {
			continue
		}
		idx := e.Index
		if e.Flags&kvm.CPUIDFlagSignificantIndex == 0 {
			idx = 0 // one entry answers every subleaf; treat it as subleaf 0
		}
		for _, d := range xsaveDependents {
			if e.Function != d.fn || idx != d.idx {
				continue
			}
			switch d.reg {
			case 0:
				e.EAX &^= d.bits
			case 1:
				e.EBX &^= d.bits
			case 2:
				e.ECX &^= d.bits
			case 3:
				e.EDX &^= d.bits
			}
		}
		out = append(out, e)
	}
	return out
}
