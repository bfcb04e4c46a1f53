package machine

import (
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
	"github.com/hyperroot/hyperroot/vmm/kvm"
)

// TestXCR0Probe runs the probe guest on the host's KVM. Hosts whose KVM
// offers no XSAVE (PVM does not) get it forced into the guest's CPUID, so
// the probe's code path runs everywhere; the test checks that the probe
// finishes, fast, without error, and logs its verdict.
func TestXCR0Probe(t *testing.T) {
	testenv.NeedKVM(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	supported, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	ids := cpuid.ForVCPU(supported, 0, 1)
	forced := !cpuid.HasXSAVE(ids)
	for i := range ids {
		switch {
		case ids[i].Function == 1:
			ids[i].ECX |= 1 << 26
		case ids[i].Function == 0xD && ids[i].Index == 0:
			ids[i].EAX |= 3
		}
	}
	start := time.Now()
	xcr0, ok, err := probeXCR0(sys, ids)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > probeTimeout+time.Second {
		t.Errorf("probe took %v", d)
	}
	// The guest wrote 3; it reads back 3 (KVM followed) or KVM's reset
	// value 1 (KVM missed the XSETBV). Anything else is a probe bug.
	if ok && xcr0 != 3 && xcr0 != 1 {
		t.Errorf("probe read XCR0 = %#x, want 3 or 1", xcr0)
	}
	t.Logf("XSAVE forced into CPUID: %v; guest got that far: %v; XCR0 read back: %#x; took %v",
		forced, ok, xcr0, time.Since(start))
}
