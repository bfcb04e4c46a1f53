package cpuid

import "testing"

func TestWithTSCDeadline(t *testing.T) {
	in := sample()
	out := WithTSCDeadline(in)
	if e := find(out, leafFeatures, 0); e == nil || e.ECX&ecxTSCDeadline == 0 {
		t.Fatalf("leaf 1 ECX without TSC-deadline: %+v", e)
	}
	if e := find(in, leafFeatures, 0); e.ECX&ecxTSCDeadline != 0 {
		t.Error("the input was modified")
	}
	// Nothing else changes, and ForVCPU keeps the bit.
	for i := range in {
		a, b := in[i], out[i]
		if a.Function == leafFeatures {
			b.ECX &^= ecxTSCDeadline
		}
		if a != b {
			t.Errorf("entry %d changed: %+v -> %+v", i, a, out[i])
		}
	}
	if e := find(ForVCPU(out, 1, 4), leafFeatures, 0); e.ECX&ecxTSCDeadline == 0 {
		t.Error("ForVCPU dropped the TSC-deadline bit")
	}
}
