package pci

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
)

// MSIRouter is where MSI-X vectors leave the PCI layer: the machine
// implements it with KVM GSI routes and irqfds (or KVM_SIGNAL_MSI), so
// that this package does not import kvm. Its methods are called with the
// MSIX's lock held and must not call back into that MSIX.
type MSIRouter interface {
	// Route reports vector's message (address and data as the guest
	// programmed them) and whether it is masked: by its vector control
	// bit, by the function mask, or because MSI-X is disabled. It is
	// called when any of the three changes; every vector starts masked.
	// A router whose interrupts come from irqfds detaches a masked
	// vector's irqfd, so that the eventfd keeps the event until KVM
	// re-attaches it on unmask and injects it then.
	Route(vector int, addr uint64, data uint32, masked bool) error
	// Signal delivers vector now, with the message last given to Route.
	// It is called for an unmasked vector only.
	Signal(vector int) error
}

// MSIXOptions describe an MSI-X capability.
type MSIXOptions struct {
	Vectors     int // 1-2048
	TableBAR    int // BAR holding the vector table (16 bytes per vector)
	TableOffset uint32
	PBABAR      int // BAR holding the pending bit array (8 bytes per 64 vectors)
	PBAOffset   uint32
	Router      MSIRouter
	// Errors is told of Route and Signal failures that happen during a
	// guest access, which has no one to return them to. nil drops them.
	Errors func(error)
}

// MSIX is an MSI-X capability with its vector table and pending bit array
// (PCI Local Bus 3.0, 6.8.2). A device adds it to its ConfigSpace with
// AddCapability, passes its BAR accesses to ReadBAR and WriteBAR first,
// and calls Notify to raise a vector.
type MSIX struct {
	opts MSIXOptions

	mu       sync.Mutex
	control  uint16 // message control: only the enable and function mask bits
	table    []byte
	pending  []uint64
	reported []msiState // what Route last said for each vector
}

type msiState struct {
	addr   uint64
	data   uint32
	masked bool
}

// MSI-X register layout.
const (
	CapMSIX        = 0x11
	msixCapLen     = 12
	msixEnable     = 1 << 15
	msixFuncMask   = 1 << 14
	msixEntrySize  = 16
	msixCtrlMasked = 1 << 0
	msixMaxVectors = 2048
)

// NewMSIX returns the capability with every vector masked and MSI-X
// disabled, as after reset.
func NewMSIX(o MSIXOptions) (*MSIX, error) {
	switch {
	case o.Vectors < 1 || o.Vectors > msixMaxVectors:
		return nil, fmt.Errorf("pci: MSI-X with %d vectors: want 1-%d", o.Vectors, msixMaxVectors)
	case o.TableBAR < 0 || o.TableBAR > 5 || o.PBABAR < 0 || o.PBABAR > 5:
		return nil, fmt.Errorf("pci: MSI-X table BAR %d, PBA BAR %d: want 0-5", o.TableBAR, o.PBABAR)
	case o.TableOffset%8 != 0 || o.PBAOffset%8 != 0:
		return nil, fmt.Errorf("pci: MSI-X table offset %#x, PBA offset %#x: want 8-byte aligned", o.TableOffset, o.PBAOffset)
	case o.Router == nil:
		return nil, fmt.Errorf("pci: MSI-X without a router")
	}
	m := &MSIX{
		opts:     o,
		table:    make([]byte, o.Vectors*msixEntrySize),
		pending:  make([]uint64, (o.Vectors+63)/64),
		reported: make([]msiState, o.Vectors),
	}
	for v := range o.Vectors {
		m.table[v*msixEntrySize+12] = msixCtrlMasked
		m.reported[v].masked = true
	}
	tEnd, pEnd := uint64(o.TableOffset)+m.TableSize(), uint64(o.PBAOffset)+m.PBASize()
	if o.TableBAR == o.PBABAR && uint64(o.TableOffset) < pEnd && uint64(o.PBAOffset) < tEnd {
		return nil, fmt.Errorf("pci: MSI-X table and PBA overlap")
	}
	return m, nil
}

// TableSize and PBASize are the bytes the table and the PBA take in their
// BARs.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.table)) }
func (m *MSIX) PBASize() uint64   { return uint64(len(m.pending) * 8) }

func (m *MSIX) CapabilityID() byte { return CapMSIX }
func (m *MSIX) CapabilityLen() int { return msixCapLen }

func (m *MSIX) ReadCapability(off int, data []byte) {
	var c [msixCapLen]byte
	le := binary.LittleEndian
	m.mu.Lock()
	le.PutUint16(c[2:], m.control|uint16(m.opts.Vectors-1))
	m.mu.Unlock()
	le.PutUint32(c[4:], m.opts.TableOffset|uint32(m.opts.TableBAR))
	le.PutUint32(c[8:], m.opts.PBAOffset|uint32(m.opts.PBABAR))
	for i := range data {
		data[i] = 0
		if j := off + i; j >= 0 && j < msixCapLen {
			data[i] = c[j]
		}
	}
}

// WriteCapability takes the enable and function mask bits (message
// control bits 15 and 14, in byte 3); everything else is read-only.
func (m *MSIX) WriteCapability(off int, data []byte) {
	if i := 3 - off; i >= 0 && i < len(data) {
		m.mu.Lock()
		defer m.mu.Unlock()
		c := uint16(data[i]) << 8 & (msixEnable | msixFuncMask)
		if c != m.control {
			m.control = c
			for v := range m.opts.Vectors {
				m.sync(v)
			}
		}
	}
}

// ReadBAR serves a read of BAR bar at off if it falls in the table or the
// PBA and reports whether it did. An access must lie wholly inside one of
// them; a straddling one reads as zeros.
func (m *MSIX) ReadBAR(bar int, off uint64, data []byte) bool {
	if t, ok := m.inTable(bar, off, len(data)); ok {
		m.mu.Lock()
		defer m.mu.Unlock()
		if t < 0 {
			clear(data)
		} else {
			copy(data, m.table[t:])
		}
		return true
	}
	if p, ok := m.inPBA(bar, off, len(data)); ok {
		m.mu.Lock()
		defer m.mu.Unlock()
		for i := range data {
			data[i] = 0
			if p >= 0 {
				q := p + i
				data[i] = byte(m.pending[q/8] >> (8 * (q % 8)))
			}
		}
		return true
	}
	return false
}

// WriteBAR serves a write of BAR bar at off if it falls in the table or
// the PBA (which is read-only) and reports whether it did.
func (m *MSIX) WriteBAR(bar int, off uint64, data []byte) bool {
	if t, ok := m.inTable(bar, off, len(data)); ok {
		if t < 0 {
			return true
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		copy(m.table[t:], data)
		first, last := t/msixEntrySize, (t+len(data)-1)/msixEntrySize
		for v := first; v <= last; v++ {
			m.table[v*msixEntrySize+12] &= msixCtrlMasked // the rest of vector control is reserved
			m.table[v*msixEntrySize+13] = 0
			m.table[v*msixEntrySize+14] = 0
			m.table[v*msixEntrySize+15] = 0
			m.sync(v)
		}
		return true
	}
	_, ok := m.inPBA(bar, off, len(data))
	return ok
}

// inTable reports whether an access of n bytes at off of BAR bar touches
// the table and, if it lies wholly inside, its offset in it (else -1).
func (m *MSIX) inTable(bar int, off uint64, n int) (int, bool) {
	return within(bar == m.opts.TableBAR, off, n, uint64(m.opts.TableOffset), m.TableSize())
}

func (m *MSIX) inPBA(bar int, off uint64, n int) (int, bool) {
	return within(bar == m.opts.PBABAR, off, n, uint64(m.opts.PBAOffset), m.PBASize())
}

func within(sameBAR bool, off uint64, n int, start, size uint64) (int, bool) {
	if !sameBAR || n <= 0 || off >= start+size || off+uint64(n) <= start || off+uint64(n) < off {
		return 0, false
	}
	if off < start || off+uint64(n) > start+size {
		return -1, true
	}
	return int(off - start), true
}

// Notify raises vector: it is delivered now if unmasked, or left pending
// in the PBA until the guest unmasks it. With MSI-X disabled nothing
// happens (the device should be using INTx).
func (m *MSIX) Notify(vector int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= m.opts.Vectors {
		return fmt.Errorf("pci: MSI-X vector %d out of range (%d vectors)", vector, m.opts.Vectors)
	}
	if m.control&msixEnable == 0 {
		return nil
	}
	if m.state(vector).masked {
		m.pending[vector/64] |= 1 << (vector % 64)
		return nil
	}
	return m.opts.Router.Signal(vector)
}

// Enabled reports whether the guest enabled MSI-X.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.control&msixEnable != 0
}

// Describe says what holds vector v back, for a dump of a stalled machine:
// "off" (MSI-X disabled), "masked" (by its entry or the function mask),
// with "pending" when a notification waits in the PBA for the unmask; ""
// when v is delivered at once.
func (m *MSIX) Describe(v int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= m.opts.Vectors {
		return "no such vector"
	}
	var s []string
	switch {
	case m.control&msixEnable == 0:
		s = append(s, "off")
	case m.state(v).masked:
		s = append(s, "masked")
	}
	if m.pending[v/64]&(1<<(v%64)) != 0 {
		s = append(s, "pending")
	}
	return strings.Join(s, " ")
}

// state is vector v's message and effective mask. The caller holds m.mu.
func (m *MSIX) state(v int) msiState {
	e := m.table[v*msixEntrySize:]
	le := binary.LittleEndian
	return msiState{
		addr:   le.Uint64(e),
		data:   le.Uint32(e[8:]),
		masked: m.control&msixEnable == 0 || m.control&msixFuncMask != 0 || e[12]&msixCtrlMasked != 0,
	}
}

// sync tells the router about vector v if its state changed, and delivers
// a pending vector that became unmasked. The caller holds m.mu.
func (m *MSIX) sync(v int) {
	s := m.state(v)
	if s == m.reported[v] {
		return
	}
	m.reported[v] = s
	if err := m.opts.Router.Route(v, s.addr, s.data, s.masked); err != nil {
		m.fail(fmt.Errorf("pci: MSI-X vector %d route: %w", v, err))
	}
	if bit := uint64(1) << (v % 64); !s.masked && m.pending[v/64]&bit != 0 {
		m.pending[v/64] &^= bit
		if err := m.opts.Router.Signal(v); err != nil {
			m.fail(fmt.Errorf("pci: MSI-X vector %d: %w", v, err))
		}
	}
}

func (m *MSIX) fail(err error) {
	if m.opts.Errors != nil {
		m.opts.Errors(err)
	}
}
