// Package layout is the guest-physical and I/O-port map of the x86-64
// machine hyperroot's VMM builds. Every package that places something in
// the guest takes its address from here, so the map can be read in one place.
//
//	0x0000_0000 - 0x0009_FFFF  low RAM (boot structures below 1 MiB)
//	0x000A_0000 - 0x000F_FFFF  legacy hole (not RAM in e820; ACPI tables live at 0xE0000)
//	0x0010_0000 - MMIO32Start  RAM (kernel at 1 MiB)
//	MMIO32Start - 4 GiB        32-bit MMIO: PCI BARs, ECAM, IOAPIC, LAPIC, GED
//	4 GiB       - ...          RAM above the hole, then the 64-bit PCI window
package layout

const (
	// Boot structures in low memory, used by the Linux loader.
	GDTAddr       = 0x500  // global descriptor table (4 entries)
	IDTAddr       = 0x520  // empty IDT
	BootParams    = 0x7000 // struct boot_params ("zero page")
	PML4Addr      = 0x9000 // identity-mapped page tables: PML4, PDPT, PDs follow
	PageTableEnd  = 0x1F000
	CmdlineAddr   = 0x20000
	CmdlineMax    = 0x10000 // bytes, including the trailing NUL
	StackTop      = 0x8FF0  // initial RSP for the boot CPU
	EBDAStart     = 0x9FC00 // first byte not reported as usable low RAM
	LegacyHole    = 0xA0000
	HighRAMStart  = 0x100000 // 1 MiB
	KernelLoad    = 0x100000 // protected-mode kernel (bzImage payload)
	ACPIStart     = 0xE0000  // RSDP and ACPI tables (inside the legacy BIOS area)
	ACPIEnd       = 0x100000 //
	ResetVector   = 0xFFFF0  // F000:FFF0, where a CPU starts after reset; the VMM's reset stub lives here
	MMIO32Start   = 0xC000_0000
	MMIO32End     = 0x1_0000_0000
	ECAMStart     = 0xE000_0000 // PCI Express config space, 256 buses x 1 MiB
	ECAMSize      = 0x1000_0000
	IOAPICAddr    = 0xFEC0_0000
	GEDAddr       = 0xFED0_0000 // ACPI generic event device registers (power button)
	GEDSize       = 0x10
	LAPICAddr     = 0xFEE0_0000
	PCIMMIO32Base = 0xC000_0000 // 32-bit BAR window: [PCIMMIO32Base, ECAMStart)
	RAM64Start    = 0x1_0000_0000
)

// PCILastBus is the last PCI bus number the firmware tables (MCFG and the
// host bridge's _CRS) announce: only bus 0 exists, every device sits on it
// and there are no bridges. Announcing 0-255 made Linux's x86 "peer bridge
// fixup" (pcibios_fixup_peer_bridges, which runs up to the MCFG's end bus)
// probe the vendor ID of every 8th function on buses 1-255 through
// configuration mechanism 1: 8160 reads, two port exits to the VMM each
// with interrupts off. Under nested TCG, with two guests doing it at once,
// that took minutes (issue 9: the default demo "hung"). The ECAM window
// keeps its 256 MiB in the memory map; accesses beyond bus 0 read all ones.
const PCILastBus = 0

// Legacy I/O ports.
const (
	COM1Port      = 0x3F8
	COM1IRQ       = 4
	I8042Port     = 0x60 // data; command/status at 0x64
	I8042CmdPort  = 0x64
	RTCPort       = 0x70 // index; data at 0x71
	RTCIRQ        = 8
	PCIConfAddr   = 0xCF8
	PCIConfData   = 0xCFC
	ResetPort     = 0xCF9 // FADT reset register: write 0x06 to reset
	SleepCtlPort  = 0x600 // FADT hardware-reduced sleep control register (1 byte)
	SleepStsPort  = 0x601 // FADT hardware-reduced sleep status register (1 byte)
	GEDIRQ        = 9     // GSI of the ACPI generic event device
	PowerOffSlpTy = 5     // SLP_TYP written with SLP_EN for S5 (\_S5 package)
)

// RAMRanges splits size bytes of guest RAM around the 32-bit MMIO hole and
// returns the guest-physical [start, end) ranges that hold it.
func RAMRanges(size uint64) [][2]uint64 {
	if size <= MMIO32Start {
		return [][2]uint64{{0, size}}
	}
	return [][2]uint64{{0, MMIO32Start}, {RAM64Start, RAM64Start + size - MMIO32Start}}
}

// i8042 interrupts (added for vmm/devices/i8042): the ISA IRQs of the PS/2
// controller's keyboard and AUX ports, which Linux's i8042 driver requests
// by number.
const (
	I8042KbdIRQ = 1
	I8042AuxIRQ = 12
)

// PCI (added for vmm/pci): legacy INTx wiring and the 64-bit BAR window.
// INTx pins go to IOAPIC inputs 16-23, above the ISA IRQs, as on PC
// chipsets; the 64-bit window starts on a PCIMMIO64Align boundary above
// RAM and is PCIMMIO64Size long, which fits any guest CPU with at least
// 37 physical address bits for up to 32 GiB of RAM.
const (
	PCIINTxGSIBase = 16
	PCIINTxGSIs    = 8
	PCIMMIO64Align = 1 << 30
	PCIMMIO64Size  = 32 << 30
)
