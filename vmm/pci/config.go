package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// Identity is what a type-0 header says about a function.
type Identity struct {
	Vendor, Device             uint16
	Class                      uint32 // 24 bits: base class, subclass, programming interface (0x060000 = host bridge)
	Revision                   uint8
	SubsystemVendor, Subsystem uint16
	// InterruptPin is 0 for no INTx, 1-4 for INTA#-INTD#.
	InterruptPin uint8
}

// Capability is a structure in the capability list whose registers the
// device keeps itself (MSI-X, virtio's vendor capabilities). ConfigSpace
// serves the two header bytes (ID and next pointer) and passes accesses to
// the rest to the capability, with offsets relative to the capability's
// first byte (so always >= 2) and never beyond CapabilityLen.
type Capability interface {
	CapabilityID() byte
	// CapabilityLen is the length in bytes including the 2-byte header.
	CapabilityLen() int
	ReadCapability(off int, data []byte)
	WriteCapability(off int, data []byte)
}

// StaticCapability is a read-only capability: Body is everything after
// the ID and next pointer.
type StaticCapability struct {
	ID   byte
	Body []byte
}

func (c StaticCapability) CapabilityID() byte          { return c.ID }
func (c StaticCapability) CapabilityLen() int          { return 2 + len(c.Body) }
func (c StaticCapability) WriteCapability(int, []byte) {}
func (c StaticCapability) ReadCapability(off int, data []byte) {
	for i := range data {
		data[i] = 0
		if j := off - 2 + i; j >= 0 && j < len(c.Body) {
			data[i] = c.Body[j]
		}
	}
}

// ConfigSpace is a type-0 configuration header with the standard
// semantics: read-only identity registers, a command register with the
// bits this VMM implements, write-1-to-clear status bits, BARs that answer
// the sizing protocol (writing all ones reads back the size mask) and a
// capability list. Devices embed it and add capabilities.
//
// Registers are kept as bytes with a mask of guest-writable bits and a mask
// of write-1-to-clear bits, so that any access width behaves the same.
type ConfigSpace struct {
	mu    sync.Mutex
	regs  [ConfigSize]byte
	wmask [ConfigSize]byte
	w1c   [ConfigSize]byte
	bars  []BAR
	caps  []placedCap
	free  int // first byte free for the next capability
}

type placedCap struct {
	off, len int
	c        Capability
}

// firstCapability is where the capability list starts, after the header.
const firstCapability = 0x40

// NewConfigSpace returns the header of a function with identity id and
// the given memory BARs.
func NewConfigSpace(id Identity, bars ...BAR) (*ConfigSpace, error) {
	if id.InterruptPin > 4 {
		return nil, fmt.Errorf("pci: interrupt pin %d: want 0-4", id.InterruptPin)
	}
	if id.Class > 0xFFFFFF {
		return nil, fmt.Errorf("pci: class %#x is wider than 24 bits", id.Class)
	}
	c := &ConfigSpace{free: firstCapability}
	le := binary.LittleEndian
	le.PutUint16(c.regs[RegVendor:], id.Vendor)
	le.PutUint16(c.regs[RegDevice:], id.Device)
	c.regs[RegRevision] = id.Revision
	c.regs[RegClass], c.regs[RegClass+1], c.regs[RegClass+2] = byte(id.Class), byte(id.Class>>8), byte(id.Class>>16)
	le.PutUint16(c.regs[RegSubsysVendor:], id.SubsystemVendor)
	le.PutUint16(c.regs[RegSubsystem:], id.Subsystem)
	c.regs[RegIntPin] = id.InterruptPin

	// Command: I/O, memory, bus master, parity error response; SERR#,
	// INTx disable. Status: the error bits are write-1-to-clear.
	le.PutUint16(c.wmask[RegCommand:], CommandIO|CommandMemory|CommandBusMaster|1<<6|1<<8|CommandINTxDisable)
	le.PutUint16(c.w1c[RegStatus:], 1<<8|1<<11|1<<12|1<<13|1<<14|1<<15)
	c.wmask[RegCacheLine] = 0xFF
	c.wmask[RegIntLine] = 0xFF

	var used [6]bool
	for _, b := range bars {
		regs := 1
		if b.Is64 {
			regs = 2
		}
		switch {
		case b.Index < 0 || b.Index+regs > 6:
			return nil, fmt.Errorf("pci: BAR %d: index out of range", b.Index)
		case b.Size < 16 || b.Size&(b.Size-1) != 0:
			return nil, fmt.Errorf("pci: BAR %d: size %#x is not a power of two >= 16", b.Index, b.Size)
		case !b.Is64 && b.Size > 1<<31:
			return nil, fmt.Errorf("pci: BAR %d: size %#x too large for a 32-bit BAR", b.Index, b.Size)
		case used[b.Index] || regs == 2 && used[b.Index+1]:
			return nil, fmt.Errorf("pci: BAR %d: register already used", b.Index)
		}
		used[b.Index] = true
		reg := RegBAR0 + 4*b.Index
		flags := uint32(0) // memory space
		if b.Is64 {
			used[b.Index+1] = true
			flags |= 2 << 1
		}
		if b.Prefetchable {
			flags |= 1 << 3
		}
		mask := ^(b.Size - 1)
		le.PutUint32(c.regs[reg:], flags)
		le.PutUint32(c.wmask[reg:], uint32(mask)&^0xF)
		if b.Is64 {
			le.PutUint32(c.wmask[reg+4:], uint32(mask>>32))
		}
		c.bars = append(c.bars, b)
	}
	return c, nil
}

// BARs returns the BARs the header was created with.
func (c *ConfigSpace) BARs() []BAR { return append([]BAR(nil), c.bars...) }

// AddCapability links cap into the capability list and returns its offset.
// Capabilities live in the first 256 bytes, where every OS looks for them.
func (c *ConfigSpace) AddCapability(capability Capability) (int, error) {
	n := capability.CapabilityLen()
	c.mu.Lock()
	defer c.mu.Unlock()
	off := (c.free + 3) &^ 3
	if n < 2 || off+n > 256 {
		return 0, fmt.Errorf("pci: capability %#x of %d bytes does not fit at %#x", capability.CapabilityID(), n, off)
	}
	if len(c.caps) == 0 {
		c.regs[RegCapabilities] = byte(off)
		c.regs[RegStatus] |= StatusCapList
	} else {
		c.regs[c.caps[len(c.caps)-1].off+1] = byte(off)
	}
	c.regs[off], c.regs[off+1] = capability.CapabilityID(), 0
	c.caps = append(c.caps, placedCap{off, n, capability})
	c.free = off + n
	return off, nil
}

// capAt returns the capability whose body (after the 2 header bytes)
// holds register reg. The caller holds c.mu.
func (c *ConfigSpace) capAt(reg int) (placedCap, bool) {
	for _, p := range c.caps {
		if reg >= p.off+2 && reg < p.off+p.len {
			return p, true
		}
	}
	return placedCap{}, false
}

// ReadConfig reads len(data) bytes at reg. Bytes outside the 4 KiB space
// read as 0xFF.
func (c *ConfigSpace) ReadConfig(reg int, data []byte) {
	c.access(reg, data, false)
}

// WriteConfig writes the guest-writable bits of len(data) bytes at reg.
func (c *ConfigSpace) WriteConfig(reg int, data []byte) {
	c.access(reg, data, true)
}

func (c *ConfigSpace) access(reg int, data []byte, write bool) {
	for i := 0; i < len(data); {
		r := reg + i
		if r < 0 || r >= ConfigSize {
			if !write {
				data[i] = 0xFF
			}
			i++
			continue
		}
		c.mu.Lock()
		if p, ok := c.capAt(r); ok {
			c.mu.Unlock()
			// Hand the capability the run of bytes that lies in its
			// body, without holding the lock: it has its own.
			end := min(len(data), i+p.off+p.len-r)
			if write {
				p.c.WriteCapability(r-p.off, data[i:end])
			} else {
				p.c.ReadCapability(r-p.off, data[i:end])
			}
			i = end
			continue
		}
		if write {
			v := data[i]
			c.regs[r] = (c.regs[r]&^c.wmask[r] | v&c.wmask[r]) &^ (v & c.w1c[r])
		} else {
			data[i] = c.regs[r]
		}
		c.mu.Unlock()
		i++
	}
}

// Command returns the command register, e.g. for a device to check bus
// mastering before it touches guest memory.
func (c *ConfigSpace) Command() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return binary.LittleEndian.Uint16(c.regs[RegCommand:])
}

// SetInterruptStatus sets the status register's interrupt bit, which
// mirrors the device's INTx level for drivers that share the line.
func (c *ConfigSpace) SetInterruptStatus(level bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if level {
		c.regs[RegStatus] |= StatusInterrupt
	} else {
		c.regs[RegStatus] &^= StatusInterrupt
	}
}
