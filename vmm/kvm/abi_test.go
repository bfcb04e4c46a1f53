package kvm

import (
	"testing"
	"unsafe"
)

// The expected values below come from the kernel's <linux/kvm.h> for
// x86-64 (sizeof, offsetof and the _IO* macros, printed by a C program);
// a wrong field width or missing padding in abi.go shows up here, not as
// memory corruption in a guest.

func TestStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_lapic_state", unsafe.Sizeof(LAPIC{}), 1024},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_mp_state", unsafe.Sizeof(MPState(0)), 4},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 32},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"kvm_irq_routing_entry", unsafe.Sizeof(routingEntry{}), 48},
		{"kvm_irqfd", unsafe.Sizeof(irqfd{}), 32},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 64},
		{"kvm_msi", unsafe.Sizeof(msi{}), 32},
		{"kvm_enable_cap", unsafe.Sizeof(enableCap{}), 104},
		{"kvm_run", unsafe.Sizeof(run{}), 2352},
		{"kvm_run.io", unsafe.Sizeof(ioExit{}), 16},
		{"kvm_run.mmio", unsafe.Sizeof(mmioExit{}), 24},
		{"kvm_run.debug", unsafe.Sizeof(debugExit{}), 32},
		{"kvm_run.internal", unsafe.Sizeof(internalExit{}), 136},
		{"kvm_run.system_event", unsafe.Sizeof(systemEventExit{}), 136},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, kernel has %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestFieldOffsets(t *testing.T) {
	var r run
	var s Sregs
	var f FPU
	var io ioExit
	var m mmioExit
	var se systemEventExit
	var d debugExit
	var fe failEntryExit
	var ev ioeventfd
	var re routingEntry
	var ec enableCap
	// Union members are at kvm_run+32, so their kernel offsets minus 32.
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_run.exit_reason", unsafe.Offsetof(r.exitReason), 8},
		{"kvm_run.ready_for_interrupt_injection", unsafe.Offsetof(r.readyForInterruptInjection), 12},
		{"kvm_run.cr8", unsafe.Offsetof(r.cr8), 16},
		{"kvm_run.apic_base", unsafe.Offsetof(r.apicBase), 24},
		{"kvm_run.<union>", unsafe.Offsetof(r.exit), 32},
		{"kvm_run.kvm_valid_regs", unsafe.Offsetof(r.validRegs), 288},
		{"kvm_run.s", unsafe.Offsetof(r.syncRegs), 304},
		{"kvm_run.io.port", 32 + unsafe.Offsetof(io.port), 34},
		{"kvm_run.io.count", 32 + unsafe.Offsetof(io.count), 36},
		{"kvm_run.io.data_offset", 32 + unsafe.Offsetof(io.dataOffset), 40},
		{"kvm_run.mmio.data", 32 + unsafe.Offsetof(m.data), 40},
		{"kvm_run.mmio.len", 32 + unsafe.Offsetof(m.len), 48},
		{"kvm_run.mmio.is_write", 32 + unsafe.Offsetof(m.isWrite), 52},
		{"kvm_run.system_event.ndata", 32 + unsafe.Offsetof(se.ndata), 36},
		{"kvm_run.system_event.data", 32 + unsafe.Offsetof(se.data), 40},
		{"kvm_run.debug.arch.pc", 32 + unsafe.Offsetof(d.pc), 40},
		{"kvm_run.debug.arch.dr7", 32 + unsafe.Offsetof(d.dr7), 56},
		{"kvm_run.fail_entry.cpu", 32 + unsafe.Offsetof(fe.cpu), 40},
		{"kvm_sregs.gdt", unsafe.Offsetof(s.GDT), 192},
		{"kvm_sregs.cr0", unsafe.Offsetof(s.CR0), 224},
		{"kvm_sregs.apic_base", unsafe.Offsetof(s.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(s.InterruptBitmap), 280},
		{"kvm_fpu.last_ip", unsafe.Offsetof(f.LastIP), 136},
		{"kvm_fpu.xmm", unsafe.Offsetof(f.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(f.MXCSR), 408},
		{"kvm_ioeventfd.len", unsafe.Offsetof(ev.len), 16},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(ev.fd), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(ev.flags), 24},
		{"kvm_irq_routing_entry.u", unsafe.Offsetof(re.u), 16},
		{"kvm_enable_cap.args", unsafe.Offsetof(ec.args), 8},
	} {
		if tc.got != tc.want {
			t.Errorf("offsetof(%s) = %d, kernel has %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", reqGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", reqCreateVM, 0xae01},
		{"KVM_GET_MSR_INDEX_LIST", reqGetMSRIndexList, 0xc004ae02},
		{"KVM_CHECK_EXTENSION", reqCheckExtension, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", reqGetVCPUMmapSize, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", reqGetSupportedCPUID, 0xc008ae05},
		{"KVM_CREATE_VCPU", reqCreateVCPU, 0xae41},
		{"KVM_GET_VCPU_EVENTS", reqGetVCPUEvents, 0x8040ae9f},
		{"KVM_SET_USER_MEMORY_REGION", reqSetUserMemRegion, 0x4020ae46},
		{"KVM_SET_TSS_ADDR", reqSetTSSAddr, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", reqSetIdentityMapAddr, 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", reqCreateIRQChip, 0xae60},
		{"KVM_IRQ_LINE", reqIRQLine, 0x4008ae61},
		{"KVM_SET_GSI_ROUTING", reqSetGSIRouting, 0x4008ae6a},
		{"KVM_IRQFD", reqIRQFD, 0x4020ae76},
		{"KVM_CREATE_PIT2", reqCreatePIT2, 0x4040ae77},
		{"KVM_IOEVENTFD", reqIOEventFD, 0x4040ae79},
		{"KVM_ENABLE_CAP", reqEnableCap, 0x4068aea3},
		{"KVM_SIGNAL_MSI", reqSignalMSI, 0x4020aea5},
		{"KVM_RUN", reqRun, 0xae80},
		{"KVM_GET_STATS_FD", reqGetStatsFD, 0xaece},
		{"KVM_GET_REGS", reqGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", reqSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", reqGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", reqSetSregs, 0x4138ae84},
		{"KVM_GET_MSRS", reqGetMSRs, 0xc008ae88},
		{"KVM_SET_MSRS", reqSetMSRs, 0x4008ae89},
		{"KVM_GET_FPU", reqGetFPU, 0x81a0ae8c},
		{"KVM_SET_FPU", reqSetFPU, 0x41a0ae8d},
		{"KVM_GET_LAPIC", reqGetLAPIC, 0x8400ae8e},
		{"KVM_SET_LAPIC", reqSetLAPIC, 0x4400ae8f},
		{"KVM_SET_CPUID2", reqSetCPUID2, 0x4008ae90},
		{"KVM_GET_MP_STATE", reqGetMPState, 0x8004ae98},
		{"KVM_SET_MP_STATE", reqSetMPState, 0x4004ae99},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, kernel has %#x", tc.name, tc.got, tc.want)
		}
	}
}
