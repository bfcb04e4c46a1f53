package acpi

import (
	"encoding/binary"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Identity written into every table header. Linux prints these on boot
// ("ACPI: FACP 0x... (v06 HYPRRT HYPRROOT ...)").
const (
	oemID           = "HYPRRT"   // 6 bytes
	oemTableID      = "HYPRROOT" // 8 bytes
	oemRevision     = 1
	creatorID       = "HYPR" // 4 bytes
	creatorRevision = 1
	headerLen       = 36
)

// Table revisions: what ACPI 6.4 defines for each table.
const (
	rsdpRevision = 2 // ACPI 2.0+ RSDP with XSDT
	xsdtRevision = 1
	fadtRevision = 6 // with fadtMinor: FADT 6.4, 276 bytes
	fadtMinor    = 4
	madtRevision = 5
	mcfgRevision = 1
	dsdtRevision = 2 // 2+: AML integers are 64-bit
)

// newTable returns a table of length bytes whose header is filled in except
// the checksum, which seal computes once the body is written.
func newTable(signature string, revision byte, length int) []byte {
	b := make([]byte, length)
	copy(b[0:4], signature)
	binary.LittleEndian.PutUint32(b[4:8], uint32(length))
	b[8] = revision
	copy(b[10:16], oemID)
	copy(b[16:24], oemTableID)
	binary.LittleEndian.PutUint32(b[24:28], oemRevision)
	copy(b[28:32], creatorID)
	binary.LittleEndian.PutUint32(b[32:36], creatorRevision)
	return b
}

// seal fixes the header length to len(b) and sets the checksum byte so the
// whole table sums to zero (mod 256).
func seal(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[4:8], uint32(len(b)))
	b[9] = 0
	b[9] = -sum(b)
	return b
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// DefinitionBlock builds a complete AML table (DSDT or SSDT): the standard
// header followed by the encoded terms.
func DefinitionBlock(signature string, terms ...aml.Term) ([]byte, error) {
	body, err := aml.Encode(terms...)
	if err != nil {
		return nil, fmt.Errorf("definition block %s: %w", signature, err)
	}
	return seal(append(newTable(signature, dsdtRevision, headerLen), body...)), nil
}

// rsdp is the Root System Description Pointer (ACPI 6.5, 5.2.5.3). The
// first 20 bytes carry the ACPI 1.0 checksum, all 36 the extended one.
func rsdp(xsdtAddr uint64) []byte {
	b := make([]byte, 36)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], oemID)
	b[15] = rsdpRevision
	// RsdtAddress (b[16:20]) stays 0: every OS that reads revision 2 uses the XSDT.
	binary.LittleEndian.PutUint32(b[20:24], uint32(len(b)))
	binary.LittleEndian.PutUint64(b[24:32], xsdtAddr)
	b[8] = -sum(b[:20])
	b[32] = -sum(b)
	return b
}

// xsdt lists the 64-bit addresses of every table except the DSDT, which the
// FADT points to.
func xsdt(tables []uint64) []byte {
	b := newTable("XSDT", xsdtRevision, headerLen)
	for _, a := range tables {
		b = binary.LittleEndian.AppendUint64(b, a)
	}
	return seal(b)
}

// Generic address structure (ACPI 6.5, 5.2.3.2) fields used here.
const (
	gasSystemIO  = 1
	gasByte      = 1 // access size: byte
	gasBitWidth8 = 8
)

// putIOByteGAS writes a 12-byte generic address for an 8-bit I/O port register.
func putIOByteGAS(b []byte, port uint16) {
	b[0] = gasSystemIO
	b[1] = gasBitWidth8
	b[2] = 0 // bit offset
	b[3] = gasByte
	binary.LittleEndian.PutUint64(b[4:12], uint64(port))
}

// FADT fields (ACPI 6.5, table 5.9): byte offsets.
const (
	fadtLen            = 276
	fadtSCIInt         = 46
	fadtIAPCBootArch   = 109
	fadtFlags          = 112
	fadtResetReg       = 116
	fadtResetValue     = 128
	fadtMinorVersion   = 131
	fadtXDSDT          = 140
	fadtSleepControl   = 244
	fadtSleepStatus    = 256
	fadtHypervisorID   = 268
	bootArch8042       = 1 << 1 // an 8042 keyboard controller is present
	bootArchNoVGA      = 1 << 2 // do not probe for VGA
	flagPowerButton    = 1 << 4 // power button is a control-method device, not fixed
	flagSleepButton    = 1 << 5 // no fixed sleep button either
	flagResetRegSup    = 1 << 10
	flagHWReducedACPI  = 1 << 20
	hypervisorVendorID = "HYPERRT"
)

// fadt is a hardware-reduced FADT: no PM1/GPE blocks, no FACS, no SMI; the
// OS powers off by writing SLP_TYP|SLP_EN to the sleep control register and
// resets by writing 0x06 to the reset port.
func fadt(dsdtAddr uint64) []byte {
	b := newTable("FACP", fadtRevision, fadtLen)
	// SCI_INT is unused in hardware-reduced mode, but Linux still compares it
	// with every MADT interrupt override: 0 would make it treat the
	// IRQ0->GSI2 override as the SCI's. The GED line is the reduced-hardware
	// equivalent of the SCI, so name it.
	binary.LittleEndian.PutUint16(b[fadtSCIInt:], layout.GEDIRQ)
	// Legacy devices are left clear: there is no PnP BIOS. The CMOS RTC is
	// present (the "RTC not present" bit stays clear).
	binary.LittleEndian.PutUint16(b[fadtIAPCBootArch:], bootArch8042|bootArchNoVGA)
	binary.LittleEndian.PutUint32(b[fadtFlags:],
		flagPowerButton|flagSleepButton|flagResetRegSup|flagHWReducedACPI)
	putIOByteGAS(b[fadtResetReg:], layout.ResetPort)
	b[fadtResetValue] = 0x06 // CF9h: full reset (bit 2) with system reset (bit 1)
	b[fadtMinorVersion] = fadtMinor
	// Only the 64-bit X_DSDT is set: ACPICA warns when both are set and differ.
	binary.LittleEndian.PutUint64(b[fadtXDSDT:], dsdtAddr)
	putIOByteGAS(b[fadtSleepControl:], layout.SleepCtlPort)
	putIOByteGAS(b[fadtSleepStatus:], layout.SleepStsPort)
	copy(b[fadtHypervisorID:fadtHypervisorID+8], hypervisorVendorID)
	return seal(b)
}

// MADT (ACPI 6.5, 5.2.12) entry types and flags.
const (
	madtLocalAPIC      = 0
	madtIOAPIC         = 1
	madtIntOverride    = 2
	madtLocalAPICNMI   = 4
	madtLocalX2APIC    = 9
	madtLocalX2APICNMI = 0xA
	madtPCATCompat     = 1 << 0 // dual 8259s present: the OS must mask them
	lapicEnabled       = 1 << 0
	mpsActiveHigh      = 0b01
	mpsEdge            = 0b01 << 2
	// maxXAPICID is the highest APIC ID an xAPIC (type 0) entry may carry:
	// 0xFF is the broadcast ID, so CPUs from 255 on need x2APIC entries.
	maxXAPICID  = 254
	allXAPICs   = 0xFF
	allX2APICs  = 0xFFFF_FFFF
	nmiLINT     = 1 // LINT1 carries NMI on PC-compatible wiring
	ioapicID    = 0 // matches the reset value of KVM's in-kernel IOAPIC ID register
	timerGSI    = 2 // ISA IRQ0 (PIT) is wired to IOAPIC pin 2, as on real chipsets
	isaBus      = 0
	gsiBaseZero = 0
)

// madt describes the interrupt controllers: one local APIC per vCPU with
// APIC ID = vCPU index, the IOAPIC, the PIT override and LINT1 NMI wiring.
//
// Linux accepts x2APIC entries (IDs 255 and up) only if the boot CPU's
// local APIC is already in x2APIC mode when it parses the MADT, as firmware
// leaves it on large machines; otherwise it logs "x2apic entry ignored".
// So with more than 255 vCPUs the VMM must start its vCPUs in x2APIC mode
// (IA32_APIC_BASE.EXTD) and advertise x2APIC plus KVM_FEATURE_MSI_EXT_DEST_ID
// in CPUID, which lets Linux keep x2APIC without interrupt remapping (see
// x2APICCPUs in vmm/machine).
func madt(cpus int) []byte {
	le := binary.LittleEndian
	b := newTable("APIC", madtRevision, headerLen+8)
	le.PutUint32(b[36:], layout.LAPICAddr)
	le.PutUint32(b[40:], madtPCATCompat)
	for i := 0; i < cpus; i++ {
		if i <= maxXAPICID {
			b = append(b, madtLocalAPIC, 8, byte(i), byte(i)) // UID, APIC ID
			b = le.AppendUint32(b, lapicEnabled)
			continue
		}
		b = append(b, madtLocalX2APIC, 16, 0, 0)
		b = le.AppendUint32(b, uint32(i)) // x2APIC ID
		b = le.AppendUint32(b, lapicEnabled)
		b = le.AppendUint32(b, uint32(i)) // ACPI processor UID
	}
	b = append(b, madtIOAPIC, 12, ioapicID, 0)
	b = le.AppendUint32(b, layout.IOAPICAddr)
	b = le.AppendUint32(b, gsiBaseZero)

	b = append(b, madtIntOverride, 10, isaBus, 0) // source IRQ 0
	b = le.AppendUint32(b, timerGSI)
	b = le.AppendUint16(b, mpsActiveHigh|mpsEdge)

	b = append(b, madtLocalAPICNMI, 6, allXAPICs)
	b = le.AppendUint16(b, mpsActiveHigh|mpsEdge)
	b = append(b, nmiLINT)
	if cpus > maxXAPICID+1 {
		b = append(b, madtLocalX2APICNMI, 12)
		b = le.AppendUint16(b, mpsActiveHigh|mpsEdge)
		b = le.AppendUint32(b, allX2APICs)
		b = append(b, nmiLINT, 0, 0, 0)
	}
	return seal(b)
}

// mcfg tells the OS where PCI Express enhanced configuration space (ECAM)
// is: segment 0, buses 0-layout.PCILastBus at layout.ECAMStart (why not
// all 256 buses the window could hold: see layout.PCILastBus).
func mcfg() []byte {
	le := binary.LittleEndian
	b := newTable("MCFG", mcfgRevision, headerLen+8) // 8 reserved bytes
	b = le.AppendUint64(b, layout.ECAMStart)
	b = le.AppendUint16(b, 0)           // PCI segment group
	b = append(b, 0, layout.PCILastBus) // start and end bus: 1 MiB each
	b = le.AppendUint32(b, 0)           // reserved
	return seal(b)
}
