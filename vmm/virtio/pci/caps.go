package virtiopci

import (
	"encoding/binary"
	"sync"

	"github.com/hyperroot/hyperroot/vmm/pci"
)

// Virtio PCI capabilities (virtio 1.2 §4.1.4): vendor-specific
// capabilities (ID 0x09) whose cfg_type says which structure of the BAR
// they locate.
const (
	capVendor = 0x09
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
	capPCICfg = 5
)

// vendorCap is struct virtio_pci_cap (plus notify_off_multiplier for the
// notify capability): read-only, it only points into the BAR.
func vendorCap(cfgType uint8, offset, length uint32) pci.StaticCapability {
	n := 16
	if cfgType == capNotify {
		n = 20
	}
	b := make([]byte, n-2) // without ID and next
	le := binary.LittleEndian
	b[0] = byte(n) // cap_len
	b[1] = cfgType
	b[2] = barIndex
	// b[3] is id, 0: there is one structure of each type; b[4:6] padding.
	le.PutUint32(b[6:], offset)
	le.PutUint32(b[10:], length)
	if cfgType == capNotify {
		le.PutUint32(b[14:], notifyMult)
	}
	return pci.StaticCapability{ID: capVendor, Body: b}
}

// pciCfgCap is the PCI configuration access capability (virtio 1.2
// §4.1.4.9): a window through which the driver reaches the BAR with
// configuration cycles only, for firmware that has not mapped BARs. The
// driver sets bar, offset and length (1, 2 or 4), then reads or writes
// pci_cfg_data.
type pciCfgCap struct {
	t *Transport

	mu     sync.Mutex
	bar    uint8
	offset uint32
	length uint32
}

// Register offsets within the capability, from its first byte.
const (
	pciCfgLen    = 20
	pciCfgBar    = 4
	pciCfgOffset = 8
	pciCfgLength = 12
	pciCfgData   = 16
)

func (c *pciCfgCap) CapabilityID() byte { return capVendor }
func (c *pciCfgCap) CapabilityLen() int { return pciCfgLen }

// render is the capability as the driver sees it, without the data.
// The caller holds c.mu.
func (c *pciCfgCap) render() [pciCfgLen]byte {
	var r [pciCfgLen]byte
	le := binary.LittleEndian
	r[0], r[2], r[3], r[pciCfgBar] = capVendor, pciCfgLen, capPCICfg, c.bar
	le.PutUint32(r[pciCfgOffset:], c.offset)
	le.PutUint32(r[pciCfgLength:], c.length)
	return r
}

// access reports the BAR access the window stands for, if the driver
// set one the device supports: BAR 0, a width of 1, 2 or 4 bytes, an
// offset aligned to it.
func (c *pciCfgCap) access() (off uint64, n int, ok bool) {
	switch {
	case c.bar != barIndex, c.length != 1 && c.length != 2 && c.length != 4, c.offset%c.length != 0:
		return 0, 0, false
	}
	return uint64(c.offset), int(c.length), true
}

func (c *pciCfgCap) ReadCapability(off int, data []byte) {
	c.mu.Lock()
	r := c.render()
	boff, n, ok := c.access()
	c.mu.Unlock()
	if ok && off < pciCfgData+n && off+len(data) > pciCfgData {
		c.t.ReadBAR(barIndex, boff, r[pciCfgData:pciCfgData+n])
	}
	for i := range data {
		data[i] = 0
		if j := off + i; j >= 0 && j < pciCfgLen {
			data[i] = r[j]
		}
	}
}

func (c *pciCfgCap) WriteCapability(off int, data []byte) {
	c.mu.Lock()
	r := c.render()
	for i, v := range data {
		if j := off + i; j >= pciCfgBar && j < pciCfgData && (j == pciCfgBar || j >= pciCfgOffset) {
			r[j] = v
		}
	}
	le := binary.LittleEndian
	c.bar, c.offset, c.length = r[pciCfgBar], le.Uint32(r[pciCfgOffset:]), le.Uint32(r[pciCfgLength:])
	boff, n, ok := c.access()
	c.mu.Unlock()
	// The BAR is written only by a write that covers the whole width the
	// driver selected, which is what pci_cfg_data accesses are.
	if ok && off <= pciCfgData && off+len(data) >= pciCfgData+n {
		c.t.WriteBAR(barIndex, boff, data[pciCfgData-off:pciCfgData-off+n])
	}
}
