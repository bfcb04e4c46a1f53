package cpuid

import (
	"bufio"
	"strings"
	"testing"
)

func TestIsTCG(t *testing.T) {
	for in, want := range map[string]bool{
		"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU TCG CPU version 2.5+\n": true,
		"model name\t: AMD EPYC 7B13\n":                       false,
		"model name\t: QEMU Virtual CPU version 2.5+\n":       false, // qemu64 under KVM
		"vendor_id\t: GenuineIntel\n":                         false,
		"model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nmodel": false,
	} {
		if got := isTCG(firstCPU(bufio.NewScanner(strings.NewReader(in)))); got != want {
			t.Errorf("isTCG(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestIsVirtual(t *testing.T) {
	for in, want := range map[string]bool{
		"processor\t: 0\nmodel name\t: QEMU TCG CPU version 2.5+\nflags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm svm\n": true,
		"processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep svm\n":                                        false,
		"processor\t: 0\nflags\t\t: fpu hypervisor_x svm\n":                                                                   false,
		"": false,
	} {
		if got := isVirtual(firstCPU(bufio.NewScanner(strings.NewReader(in)))); got != want {
			t.Errorf("isVirtual(%q) = %v, want %v", in, got, want)
		}
	}
}
