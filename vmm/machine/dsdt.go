package machine

import "github.com/hyperroot/hyperroot/vmm/acpi/aml"

// platformDevices are the DSDT objects of devices the ACPI package does
// not describe itself.
func platformDevices() []aml.Term {
	return []aml.Term{
		// pvpanic: Linux's pvpanic driver binds to QEMU0001 and writes 1 to
		// its port when the kernel panics.
		aml.Device("PEVT",
			aml.Name("_HID", aml.String("QEMU0001")),
			aml.Name("_STA", aml.Int(0xF)),
			aml.Name("_CRS", aml.ResourceTemplate(aml.IO(pvpanicPort, pvpanicPort, 1, 1))),
		),
	}
}
