package cpuid

import (
	"bufio"
	"os"
	"slices"
	"strings"
)

// HostIsTCG reports whether the CPU this VMM runs on is emulated by QEMU's
// TCG (its model name is "QEMU TCG CPU version ..."), which is how
// hyperroot is tested: the appliance under QEMU, KVM inside it.
//
// TCG's nested SVM does not intercept a guest's XSETBV (fixed in QEMU 8.2,
// "target/i386: check intercept for XSETBV"; Debian bookworm has 7.2). The
// guest's XCR0 then reaches the emulated CPU directly, behind the back of
// the KVM that runs it: KVM keeps computing XSAVE sizes for the XCR0 it
// believes in (the guest warns "XSAVE consistency problem") and runs its
// own host with the guest's XCR0. Probing for the bug by executing XSETBV
// in a throw-away guest is therefore unsafe too: it clobbers the host's
// XCR0. Guests on such a host get no XSAVE (cpuid.WithoutXSAVE); under
// emulation that costs only AVX, which TCG emulates anyway.
func HostIsTCG() bool { return isTCG(HostCPU()) }

// HostIsVirtual reports whether this VMM's host is itself a virtual
// machine (/proc/cpuinfo's "hypervisor" flag, which KVM and the other
// hypervisors set, or QEMU's TCG, HostIsTCG), where each exit of its
// guests passes through an outer hypervisor or emulator and costs tens of
// microseconds or more.
func HostIsVirtual() bool { return isVirtual(HostCPU()) }

func isTCG(cpu map[string]string) bool {
	return strings.HasPrefix(cpu["model name"], "QEMU TCG CPU")
}

func isVirtual(cpu map[string]string) bool {
	return slices.Contains(strings.Fields(cpu["flags"]), "hypervisor") || isTCG(cpu)
}

// HostCPU is the first CPU's entry of /proc/cpuinfo by key ("vendor_id",
// "model name", "flags"), or nil where it cannot be read.
func HostCPU() map[string]string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	return firstCPU(bufio.NewScanner(f))
}

// firstCPU reads /proc/cpuinfo's "key : value" lines up to the blank line
// that ends the first CPU's entry.
func firstCPU(sc *bufio.Scanner) map[string]string {
	cpu := map[string]string{}
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" && len(cpu) > 0 {
			break
		}
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			k = strings.TrimSpace(k)
			if _, seen := cpu[k]; !seen {
				cpu[k] = strings.TrimSpace(v)
			}
		}
	}
	return cpu
}
