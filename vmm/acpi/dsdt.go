package acpi

import (
	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// GED register contract. The generic event device is how a hardware-reduced
// platform raises ACPI events (there are no GPE or PM1 blocks). The VMM's GED
// device, mapped at layout.GEDAddr (layout.GEDSize bytes of MMIO), must
// implement exactly this, because the DSDT below is the only driver:
//
//   - Offset 0, 32-bit read: the pending event bits (GEDEventPowerButton =
//     bit 0; other bits reserved, read as 0). The read returns the pending
//     bits and clears them (read-to-clear), atomically with respect to new
//     events.
//   - The device drives GSI layout.GEDIRQ as a level-triggered, active-high
//     line: asserted while any event bit is pending, deasserted by the
//     clearing read. Level (not edge) because an event raised while the
//     guest is still running _EVT keeps the line up and is not lost, and
//     Linux's GED driver requests the IRQ as a oneshot threaded handler,
//     which masks a level line until _EVT has read the register.
//   - Writes, other offsets and other widths have no effect; reads of other
//     offsets return 0. (ACPICA reads the field with one aligned 4-byte
//     access because it is declared DWordAcc.)
//
// A power button press (e.g. a host "shutdown" request) is: set bit 0, raise
// the line. The guest's _EVT reads the register and notifies \_SB.PWRB with
// 0x80, which Linux turns into KEY_POWER and an orderly poweroff that ends
// with a byte write of SLP_TYP<<2 | SLP_EN(0x20) to layout.SleepCtlPort,
// i.e. 0x34 for layout.PowerOffSlpTy = 5.
const (
	GEDEventPowerButton = 1 << 0
)

// Object names in the DSDT; tests and later SSDTs refer to them.
const (
	pathPowerButton = `\_SB_.PWRB`
)

// dsdt builds the differentiated system description table: the sleep state
// package and the fixed legacy devices, plus extra objects the caller puts
// in \_SB (e.g. a PCI host bridge).
func dsdt(cfg Config) ([]byte, error) {
	sb := []aml.Term{
		aml.Device("COM1",
			aml.Name("_HID", aml.EISAID("PNP0501")), // 16550A-compatible UART
			aml.Name("_UID", aml.Int(0)),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.IO(layout.COM1Port, layout.COM1Port, 8, 8),
				aml.IRQNoFlags(layout.COM1IRQ),
			)),
		),
		// The i8042 is emulated mainly for the reset line and so that
		// Linux's i8042 driver finds the controller it expects; it has a
		// keyboard port only (no PNP0F13 mouse).
		aml.Device("PS2K",
			aml.Name("_HID", aml.EISAID("PNP0303")),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.IO(layout.I8042Port, layout.I8042Port, 1, 1),
				aml.IO(layout.I8042CmdPort, layout.I8042CmdPort, 1, 1),
				aml.IRQNoFlags(layout.I8042KbdIRQ),
			)),
		),
		aml.Device("RTC_",
			aml.Name("_HID", aml.EISAID("PNP0B00")), // AT-compatible CMOS RTC
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.IO(layout.RTCPort, layout.RTCPort, 1, 2),
				aml.IRQNoFlags(layout.RTCIRQ),
			)),
		),
		aml.Device("PWRB",
			aml.Name("_HID", aml.EISAID("PNP0C0C")), // control-method power button
			aml.Name("_UID", aml.Int(0)),
		),
		// The GED's _CRS must hold interrupts only: Linux's driver fails
		// probe on any other resource type, so its registers are reached
		// through the OperationRegion rather than a Memory32Fixed.
		aml.Device("GED_",
			aml.Name("_HID", aml.String("ACPI0013")),
			aml.Name("_UID", aml.Int(0)),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.Interrupt(aml.InterruptFlags{}, layout.GEDIRQ), // consumer, level, active-high, exclusive
			)),
			aml.OperationRegion("GDST", aml.SystemMemory, layout.GEDAddr, layout.GEDSize),
			aml.Field("GDST", aml.DWordAcc, aml.WriteAsZeros, aml.FieldUnit{Name: "GDAT", Bits: 32}),
			aml.Method("_EVT", 1, true,
				aml.Store(aml.Path("GDAT"), aml.Local(0)),
				aml.If(aml.And(aml.Local(0), aml.Int(GEDEventPowerButton), nil),
					aml.Notify(aml.Path(pathPowerButton), aml.Int(0x80)),
				),
			),
		),
	}
	if cfg.MCFG {
		// Linux only trusts an MCFG range that firmware also reserves as a
		// motherboard resource; otherwise it logs a firmware bug and falls
		// back to port 0xCF8 config access.
		sb = append(sb, aml.Device("MRES",
			aml.Name("_HID", aml.EISAID("PNP0C02")),
			aml.Name("_UID", aml.Int(0)),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.Memory32Fixed(true, layout.ECAMStart, layout.ECAMSize),
			)),
		))
	}
	sb = append(sb, cfg.Devices...)

	return DefinitionBlock("DSDT",
		// \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved. In hardware-reduced
		// mode only SLP_TYPa is used, written to the sleep control register.
		aml.Name(`\_S5_`, aml.Package(
			aml.Int(layout.PowerOffSlpTy), aml.Int(layout.PowerOffSlpTy), aml.Int(0), aml.Int(0))),
		aml.Scope(`\_SB_`, sb...),
	)
}
