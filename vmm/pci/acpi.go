package pci

import (
	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// INTxGSI is the IOAPIC input that interrupt pin (1-4 for INTA#-INTD#) of
// the device in slot is wired to: the eight GSIs from layout.PCIINTxGSIBase,
// rotated by slot the way bridges swizzle pins, so that the INTA# of
// neighbouring slots do not share a line. The DSDT's _PRT says the same.
func INTxGSI(slot, pin int) uint32 {
	return layout.PCIINTxGSIBase + uint32((slot+pin-1)%layout.PCIINTxGSIs)
}

// AML returns the DSDT description of the host bridge, to place in \_SB:
// a PCI Express root (PNP0A08, compatible with PNP0A03) for segment 0,
// bus 0 only (layout.PCILastBus), with its windows in _CRS: all I/O ports but the
// configuration ports, the 32-bit BAR window and the 64-bit one, and a
// _PRT routing each slot's INTA#-INTD# to INTxGSI. Pair it with the MCFG
// table (acpi.Config.MCFG), which describes the ECAM.
func (b *Bus) AML() aml.Term {
	res := []aml.Resource{
		aml.WordBusNumber(0, layout.PCILastBus),
		// Consumed by the bridge itself; Linux drops it from the windows.
		aml.IO(layout.PCIConfAddr, layout.PCIConfAddr, 1, Conf1Size),
		aml.WordIO(0, layout.PCIConfAddr-1),
		aml.WordIO(layout.PCIConfAddr+Conf1Size, 0xFFFF),
		aml.DWordMemory(mmio32Base, mmio32End-1, aml.NonCacheable),
	}
	if b.opts.MMIO64Size != 0 {
		// Cacheable, not Prefetchable: Linux marks a Prefetchable root
		// window IORESOURCE_PREFETCH and then refuses to claim a
		// non-prefetchable 64-bit BAR inside it.
		res = append(res, aml.QWordMemory(b.opts.MMIO64Base, b.opts.MMIO64Base+b.opts.MMIO64Size-1, aml.Cacheable))
	}
	// _PRT entries: {address 0xSSSSFFFF (any function of slot S), pin
	// 0-3, source 0 (a GSI, no link device), GSI}. Linux treats such GSIs
	// as level-triggered, active low; KVM's IOAPIC takes the line level
	// as given either way.
	var prt []aml.Term
	for s := 1; s < Slots; s++ {
		for pin := 1; pin <= 4; pin++ {
			prt = append(prt, aml.Package(
				aml.Int(uint64(s)<<16|0xFFFF), aml.Int(uint64(pin-1)), aml.Int(0), aml.Int(uint64(INTxGSI(s, pin)))))
		}
	}
	return aml.Device("PCI0",
		aml.Name("_HID", aml.EISAID("PNP0A08")),
		aml.Name("_CID", aml.EISAID("PNP0A03")),
		aml.Name("_ADR", aml.Int(0)),
		aml.Name("_SEG", aml.Int(0)),
		aml.Name("_BBN", aml.Int(0)),
		aml.Name("_UID", aml.Int(0)),
		aml.Name("_CRS", aml.ResourceTemplate(res...)),
		aml.Name("_PRT", aml.Package(prt...)),
	)
}

// ECAMReserved is the guest-physical range the e820 map must mark
// reserved: Linux uses the MCFG's ECAM only where firmware reserves it.
func ECAMReserved() [2]uint64 {
	return [2]uint64{layout.ECAMStart, layout.ECAMStart + layout.ECAMSize}
}
