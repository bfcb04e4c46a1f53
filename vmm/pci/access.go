package pci

import (
	"encoding/binary"

	"github.com/hyperroot/hyperroot/vmm/bus"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Conf1Size is the port range of configuration mechanism #1:
// CONFIG_ADDRESS at 0xCF8-0xCFB, CONFIG_DATA at 0xCFC-0xCFF.
const Conf1Size = 8

// resetOffset is port 0xCF9 inside the mechanism #1 range.
const resetOffset = layout.ResetPort - layout.PCIConfAddr

// CONFIG_ADDRESS fields.
const (
	confEnable  = 1 << 31
	confRegMask = 0xFC
)

// Conf1 returns the bus.Device for ports [layout.PCIConfAddr, +Conf1Size).
//
// Only 4-byte accesses at 0xCF8 reach CONFIG_ADDRESS; 1-byte accesses at
// 0xCF9 go to Options.Reset, as on PC chipsets where the reset control
// register shares the address. CONFIG_DATA takes 1-, 2- and 4-byte
// accesses at any offset that stays within it (Linux reads a 2-byte
// register at 0xCFC + (reg & 2)). Other accesses read all ones and do
// nothing.
func (b *Bus) Conf1() bus.Device {
	return conf1{b}
}

type conf1 struct{ b *Bus }

func (c conf1) Read(off uint64, data []byte)  { c.access(off, data, false) }
func (c conf1) Write(off uint64, data []byte) { c.access(off, data, true) }

func (c conf1) access(off uint64, data []byte, write bool) {
	b := c.b
	switch {
	case off == 0 && len(data) == 4:
		b.mu.Lock()
		if write {
			// Bits 1:0 are reserved and read as 0.
			b.addr = binary.LittleEndian.Uint32(data) &^ 3
		} else {
			binary.LittleEndian.PutUint32(data, b.addr)
		}
		b.mu.Unlock()
		return
	case off == resetOffset && len(data) == 1 && b.opts.Reset != nil:
		if write {
			b.opts.Reset.Write(0, data)
		} else {
			b.opts.Reset.Read(0, data)
		}
		return
	case off >= 4 && off < Conf1Size && len(data) > 0 && uint64(len(data)) <= Conf1Size-off:
		b.mu.Lock()
		defer b.mu.Unlock()
		a := b.addr
		if a&confEnable != 0 {
			reg := int(a&confRegMask) + int(off-4)
			b.config(int(a>>16&0xFF), int(a>>11&0x1F), int(a>>8&7), reg, data, write)
			return
		}
	}
	if !write {
		allOnes(data)
	}
}

// ECAM returns the bus.Device for the PCI Express enhanced configuration
// window [layout.ECAMStart, +layout.ECAMSize): 1 MiB per bus, 32 KiB per
// device, 4 KiB per function. Accesses that cross a function's 4 KiB read
// all ones and do nothing.
func (b *Bus) ECAM() bus.Device {
	return ecam{b}
}

type ecam struct{ b *Bus }

func (e ecam) Read(off uint64, data []byte)  { e.access(off, data, false) }
func (e ecam) Write(off uint64, data []byte) { e.access(off, data, true) }

func (e ecam) access(off uint64, data []byte, write bool) {
	n := uint64(len(data))
	if n == 0 || off >= layout.ECAMSize || n > ConfigSize-off%ConfigSize {
		if !write {
			allOnes(data)
		}
		return
	}
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	e.b.config(int(off>>20), int(off>>15&0x1F), int(off>>12&7), int(off&0xFFF), data, write)
}
