// Package pci is the VMM's PCI bus: a host bridge, configuration access
// through port 0xCF8/0xCFC (mechanism #1) and ECAM, BAR allocation and MMIO
// routing, the type-0 configuration header and MSI-X, so that a device such
// as a virtio transport only describes its BARs and capabilities.
//
// Only bus 0 exists; each device is a single-function device in one of 32
// slots, and slot 0 is the host bridge. The bus plays firmware: it assigns
// every BAR an address in one of its windows and enables memory decoding
// before the guest boots, so that Linux claims the assignment instead of
// redoing it. The guest may move BARs later; routing follows the BAR
// registers and the command register's memory-enable bit.
package pci

// Device is a PCI function as the bus sees it. The bus decodes addresses:
// config accesses reach the device as an offset in its own 4 KiB
// configuration space, at most 4 bytes wide and never crossing a 4-byte
// boundary; BAR accesses as an offset inside the BAR. Methods may be
// called concurrently from several vCPUs.
//
// Embedding a *ConfigSpace provides ReadConfig, WriteConfig and BARs.
type Device interface {
	ReadConfig(reg int, data []byte)
	WriteConfig(reg int, data []byte)
	// BARs lists the memory BARs the device implements; it must not change.
	BARs() []BAR
	// MoveBAR tells the device that BAR index now decodes guest-physical
	// addresses from `to` instead of `from`, so that it can move what it
	// registered outside the bus (ioeventfds, memory slots). 0 stands for
	// "not decoding": memory decoding is off or the BAR lies outside the
	// bus's windows. It is called with the bus's config lock held, so it
	// must not make config accesses through the bus.
	MoveBAR(index int, from, to uint64) error
	ReadBAR(index int, offset uint64, data []byte)
	WriteBAR(index int, offset uint64, data []byte)
}

// BAR describes one memory base address register. Size is a power of two
// of at least 16 bytes; a 64-bit BAR occupies registers Index and Index+1.
type BAR struct {
	Index        int // 0-5
	Size         uint64
	Is64         bool
	Prefetchable bool
}

// Configuration header registers (PCI Local Bus 3.0, 6.1) the package uses.
const (
	RegVendor       = 0x00
	RegDevice       = 0x02
	RegCommand      = 0x04
	RegStatus       = 0x06
	RegRevision     = 0x08
	RegClass        = 0x09 // 3 bytes: programming interface, subclass, base class
	RegCacheLine    = 0x0C
	RegHeaderType   = 0x0E
	RegBAR0         = 0x10
	RegSubsysVendor = 0x2C
	RegSubsystem    = 0x2E
	RegROM          = 0x30
	RegCapabilities = 0x34
	RegIntLine      = 0x3C
	RegIntPin       = 0x3D
)

// Command and status register bits.
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandINTxDisable = 1 << 10
	StatusInterrupt    = 1 << 3
	StatusCapList      = 1 << 4
)

// ConfigSize is the configuration space of one function reachable through
// ECAM; mechanism #1 reaches its first 256 bytes.
const ConfigSize = 4096

// Slots is the number of devices on bus 0.
const Slots = 32

// Host bridge identity. 8086:0d57 is the id Cloud Hypervisor and
// Firecracker give their host bridges: Linux has no quirk keyed on it, and
// together with class 0x060000 it passes the x86 conf1 sanity check
// (a host bridge or an Intel device on bus 0).
const (
	HostBridgeVendor = 0x8086
	HostBridgeDevice = 0x0d57
	HostBridgeClass  = 0x060000
)

// allOnes fills data with 0xFF: what a read of an absent function or an
// undecoded address returns on PCI.
func allOnes(data []byte) {
	for i := range data {
		data[i] = 0xFF
	}
}

// chunks splits an access of n bytes at reg into naturally aligned pieces
// of 4, 2 or 1 bytes, none crossing a 4-byte boundary, and calls f for each
// with its register and its start in the access.
func chunks(reg, n int, f func(reg, start, width int)) {
	for i := 0; i < n; {
		w := 4
		for w > 1 && ((reg+i)%w != 0 || w > n-i) {
			w /= 2
		}
		f(reg+i, i, w)
		i += w
	}
}
