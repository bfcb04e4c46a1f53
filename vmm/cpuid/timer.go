package cpuid

import "github.com/hyperroot/hyperroot/vmm/kvm"

// ecxTSCDeadline is CPUID.1:ECX[24], TSC-deadline mode of the local APIC
// timer.
const ecxTSCDeadline = 1 << 24

// WithTSCDeadline returns entries with the TSC-deadline timer offered.
// KVM's in-kernel local APIC emulates it (KVM_CAP_TSC_DEADLINE_TIMER), but
// KVM_GET_SUPPORTED_CPUID never reports it, so a VMM that passes that
// list on leaves its guests on the APIC's one-shot timer: Linux then
// programs each timer event by writing the initial-count register, an
// exit KVM handles on its slow path, where with the deadline it writes
// one MSR that KVM handles on its fast path without leaving the exit
// handler. A tickless guest reprograms its timer at every idle entry and
// exit, so this is an exit saved on every wake-up; expensive when the
// guest is nested. QEMU, Firecracker and kvmtool add the bit the same way.
// The caller checks the capability; entries is not modified.
func WithTSCDeadline(entries []kvm.CPUIDEntry) []kvm.CPUIDEntry {
	out := append([]kvm.CPUIDEntry(nil), entries...)
	for i := range out {
		if out[i].Function == leafFeatures {
			out[i].ECX |= ecxTSCDeadline
		}
	}
	return out
}
