package pci

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
)

// CapMSI is the MSI capability's ID.
const CapMSI = 0x05

// MSI is an emulated MSI capability, 64-bit, without per-vector masking:
// what a passed-through device that has MSI and no MSI-X shows its guest
// (vmm/vfio). Its vectors leave through the same MSIRouter as MSI-X's.
//
// The guest programs one message address and one data value and enables
// 2^k of the vectors the function asks for (Multiple Message Enable);
// vector v's message is the data with its low k bits replaced by v. A
// vector is masked while MSI is off or beyond the enabled count: MSI has
// no other mask here.
type MSI struct {
	opts MSIOptions

	mu       sync.Mutex
	control  uint16 // enable (bit 0) and Multiple Message Enable (bits 4-6)
	addr     uint64
	data     uint16
	reported []msiState // what Route last said for each vector
}

// MSI message control bits and the capability's layout (64-bit, no
// masking): control at 2, address at 4 and 8, data at 12.
const (
	msiEnable    = 1 << 0
	msiMMEShift  = 4
	msiMMEMask   = 7 << msiMMEShift
	msi64Bit     = 1 << 7
	msiCapLen    = 14
	msiMaxVector = 32
)

// MSIOptions configure an MSI capability.
type MSIOptions struct {
	// Vectors the function asks for: a power of two, 1-32.
	Vectors int
	// Router routes the vectors, as MSI-X's.
	Router MSIRouter
	// Errors hears of routing failures, which have no one to return to.
	Errors func(error)
}

// NewMSI returns the capability disabled, every vector masked, as after
// reset.
func NewMSI(o MSIOptions) (*MSI, error) {
	if o.Vectors < 1 || o.Vectors > msiMaxVector || o.Vectors&(o.Vectors-1) != 0 {
		return nil, fmt.Errorf("pci: MSI with %d vectors: want a power of two, 1-%d", o.Vectors, msiMaxVector)
	}
	if o.Router == nil {
		return nil, fmt.Errorf("pci: MSI without a router")
	}
	m := &MSI{opts: o, reported: make([]msiState, o.Vectors)}
	for v := range m.reported {
		m.reported[v].masked = true
	}
	return m, nil
}

func (m *MSI) CapabilityID() byte { return CapMSI }
func (m *MSI) CapabilityLen() int { return msiCapLen }

// Enabled is how many vectors the guest has enabled: 0 while MSI is off.
func (m *MSI) Enabled() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enabled()
}

func (m *MSI) enabled() int {
	if m.control&msiEnable == 0 {
		return 0
	}
	return min(1<<((m.control&msiMMEMask)>>msiMMEShift), m.opts.Vectors)
}

func (m *MSI) ReadCapability(off int, data []byte) {
	var c [msiCapLen]byte
	le := binary.LittleEndian
	m.mu.Lock()
	mmc := uint16(bits.TrailingZeros(uint(m.opts.Vectors))) << 1
	le.PutUint16(c[2:], m.control|mmc|msi64Bit)
	le.PutUint64(c[4:], m.addr)
	le.PutUint16(c[12:], m.data)
	m.mu.Unlock()
	for i := range data {
		data[i] = 0
		if j := off + i; j >= 0 && j < msiCapLen {
			data[i] = c[j]
		}
	}
}

// WriteCapability takes the enable bit, Multiple Message Enable (up to
// what the function asks for), the address (dword-aligned) and the data;
// the rest is read-only. Each vector whose message or mask changed is
// routed again.
func (m *MSI) WriteCapability(off int, data []byte) {
	var c [msiCapLen]byte
	le := binary.LittleEndian
	m.mu.Lock()
	defer m.mu.Unlock()
	le.PutUint16(c[2:], m.control)
	le.PutUint64(c[4:], m.addr)
	le.PutUint16(c[12:], m.data)
	for i, b := range data {
		if j := off + i; j >= 2 && j < msiCapLen {
			c[j] = b
		}
	}
	ctl := le.Uint16(c[2:]) & (msiEnable | msiMMEMask)
	if mme := (ctl & msiMMEMask) >> msiMMEShift; 1<<mme > m.opts.Vectors {
		ctl = ctl&^msiMMEMask | uint16(bits.TrailingZeros(uint(m.opts.Vectors)))<<msiMMEShift
	}
	m.control, m.addr, m.data = ctl, le.Uint64(c[4:])&^3, le.Uint16(c[12:])
	n := m.enabled()
	k := uint(bits.TrailingZeros(uint(max(n, 1))))
	for v := range m.opts.Vectors {
		s := msiState{masked: true} // a masked vector's message is nobody's business
		if v < n {
			s = msiState{addr: m.addr, data: uint32(m.data)&^(1<<k-1) | uint32(v)}
		}
		if s == m.reported[v] {
			continue
		}
		m.reported[v] = s
		if err := m.opts.Router.Route(v, s.addr, s.data, s.masked); err != nil && m.opts.Errors != nil {
			m.opts.Errors(fmt.Errorf("pci: MSI vector %d route: %w", v, err))
		}
	}
}
