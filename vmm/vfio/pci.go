package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/pci"
)

// Regions is what PCI needs of a device: its regions and its MSI-X
// interrupts (MSI, INTx and BAR mapping are optional interfaces: msiDevice,
// intxDevice, mapper). *Device implements them all; tests fake them.
type Regions interface {
	Region(i int) Region
	ReadRegion(i int, p []byte, off uint64) error
	WriteRegion(i int, p []byte, off uint64) error
	SetMSIX(fds []int) error
}

// PCIOptions connect a passed-through device to the machine.
type PCIOptions struct {
	// Router routes the guest's MSI-X or MSI vectors (KVM GSI routes
	// and irqfds), as for the VMM's own devices.
	Router pci.MSIRouter
	// EventFD is vector v's irqfd eventfd: VFIO signals it, KVM injects.
	// Required, as Router is.
	EventFD func(v int) (int, error)
	// Errors hears of failures during guest accesses, which have no one
	// to return them to.
	Errors func(error)
	// Slots, when set, lets the guest reach the device's registers
	// without the VMM: the BAR pages VFIO lets this process map, all but
	// those of the MSI-X table and PBA (emulated), become KVM memory slots
	// wherever the guest puts the BAR. nil traps and forwards every access.
	Slots Slots
	// INTx, when set, connects the device's legacy interrupt, for guests
	// that do not enable MSI-X: VFIO signals Trigger when the device
	// raises it, KVM injects it on the slot's GSI level-triggered (an
	// irqfd with Unmask as its resample eventfd, which the machine
	// registers) and signals Unmask at the guest's end of interrupt, which
	// VFIO takes as the unmask. Used only when the device has an
	// interrupt pin; nil shows the guest none.
	INTx *INTx
}

// INTx are the eventfds of a device's legacy interrupt (PCIOptions.INTx).
type INTx struct{ Trigger, Unmask int }

// msiDevice is what a Regions offers for MSI; *Device does.
type msiDevice interface {
	MSIVectors() int
	SetMSI(fds []int) error
}

// intxDevice is what a Regions offers for INTx; *Device does.
type intxDevice interface {
	HasINTx() bool
	SetINTx(trigger, unmask int) error
}

// Slots gives a passed-through device's mapped BAR pages KVM memory slots;
// the machine implements it with its VM.
type Slots interface {
	// NewSlot returns a slot number no one else uses.
	NewSlot() uint32
	// SetUserMemoryRegion is kvm.VM's: size 0 deletes the slot.
	SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error
}

// mapper is what a Regions offers for mapping BAR pages; *Device does.
type mapper interface {
	Mappable(i int) ([]Span, error)
	Map(i int, s Span) ([]byte, error)
}

// direct is a piece of a BAR mapped into this process and given to the
// guest as a KVM memory slot.
type direct struct {
	off  uint64 // in the BAR
	mem  []byte
	slot uint32
	gpa  uint64 // where the slot maps it now; 0 for nowhere
}

// PCI is a passed-through device as the guest sees it on the VMM's PCI
// bus. Its identity (vendor, device, class, revision, subsystem) and its
// memory BARs are the device's; its registers are the device's, mapped
// into the guest where VFIO lets them be (PCIOptions.Slots) and otherwise
// reached through VFIO, each access a trip through the VMM; what the guest
// could use to reach past the device is virtualised:
//
//   - BAR addresses are the VMM's bus's (the host's would mean nothing in
//     the guest), and no I/O BARs or option ROM are shown;
//   - the capability list holds only MSI-X, emulated (pci.MSIX) at the
//     device's own table and PBA offsets so that its BAR layout holds: the
//     guest's vector programming becomes KVM routes, and the device's MSI-X
//     is enabled through VFIO with those vectors' irqfds; or, for a device
//     without MSI-X, MSI, emulated (pci.MSI) the same way. Power
//     management, PCI Express and the extended capabilities (SR-IOV among
//     them) are the host's business and not shown;
//   - INTx, when the device has a pin and the machine connects it
//     (PCIOptions.INTx), as pin INTA# of its slot: VFIO's INTx eventfd
//     into a KVM irqfd whose resample eventfd unmasks it in VFIO at the
//     guest's end of interrupt; VFIO lets only one of INTx and MSI-X be
//     enabled, so INTx is disabled while the guest has MSI-X on;
//   - of the command register only memory decoding, bus mastering and
//     (with INTx connected) INTx disable reach the device; without INTx
//     it stays disabled there.
type PCI struct {
	*pci.ConfigSpace
	dev    Regions
	addr   string
	msix   *pci.MSIX
	vecs   int
	opts   PCIOptions
	bars   [6]uint64 // sizes of the memory BARs shown, 0 for none
	direct [6][]direct
	mu     sync.Mutex
	msixOn bool       // the device's MSI-X is enabled (SetMSIX)
	msi    *pci.MSI   // the emulated MSI capability of a device without MSI-X
	msiDev msiDevice  // the device, for its MSI
	msiOn  int        // vectors of the device's MSI enabled (SetMSI)
	intx   intxDevice // nil: no INTx shown
	cmd    uint16     // what the device's command register was last given
}

// Standard capability and register values used here.
const (
	capMSIX   = 0x11
	barIO     = 1 << 0
	bar64     = 2 << 1
	barPrefet = 1 << 3
)

// NewPCI reads the device's configuration space and builds what the guest
// sees of it. addr names it in errors.
func NewPCI(dev Regions, addr string, o PCIOptions) (*PCI, error) {
	if o.Router == nil || o.EventFD == nil {
		return nil, fmt.Errorf("vfio: %s: an MSI router and the vectors' eventfds are required", addr)
	}
	var cfg [256]byte
	if err := dev.ReadRegion(configRegion, cfg[:], 0); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	id := pci.Identity{
		Vendor: le.Uint16(cfg[pci.RegVendor:]), Device: le.Uint16(cfg[pci.RegDevice:]),
		Class:    uint32(cfg[pci.RegClass]) | uint32(cfg[pci.RegClass+1])<<8 | uint32(cfg[pci.RegClass+2])<<16,
		Revision: cfg[pci.RegRevision], SubsystemVendor: le.Uint16(cfg[pci.RegSubsysVendor:]), Subsystem: le.Uint16(cfg[pci.RegSubsystem:]),
	}
	if cfg[pci.RegHeaderType]&0x7f != 0 {
		return nil, fmt.Errorf("vfio: %s: header type %#x: only a type-0 (endpoint) function can be passed through", addr, cfg[pci.RegHeaderType])
	}
	p := &PCI{dev: dev, addr: addr, opts: o}
	if d, ok := dev.(intxDevice); ok && o.INTx != nil && cfg[pci.RegIntPin] != 0 && d.HasINTx() {
		p.intx = d
		id.InterruptPin = 1
	}
	var bars []pci.BAR
	for i := 0; i < 6; i++ {
		v := le.Uint32(cfg[pci.RegBAR0+4*i:])
		size := dev.Region(i).Size
		if v&barIO != 0 || size == 0 {
			continue // an I/O BAR, or none
		}
		b := pci.BAR{Index: i, Size: size, Is64: v&6 == bar64, Prefetchable: v&barPrefet != 0}
		if size < 16 || size&(size-1) != 0 || (!b.Is64 && size > 1<<31) || (b.Is64 && i == 5) {
			return nil, fmt.Errorf("vfio: %s: BAR %d: size %#x", addr, i, size)
		}
		p.bars[i] = size
		bars = append(bars, b)
		if b.Is64 {
			i++
		}
	}
	if len(bars) == 0 {
		return nil, fmt.Errorf("vfio: %s: no memory BAR: a device of I/O ports only cannot be passed through", addr)
	}
	cs, err := pci.NewConfigSpace(id, bars...)
	if err != nil {
		return nil, fmt.Errorf("vfio: %s: %w", addr, err)
	}
	p.ConfigSpace = cs
	trapped := map[int][]Span{}
	switch off, ok := findCapability(cfg[:], capMSIX); {
	case ok:
		ctl, table, pba := le.Uint16(cfg[off+2:]), le.Uint32(cfg[off+4:]), le.Uint32(cfg[off+8:])
		p.vecs = int(ctl&0x7ff) + 1
		p.msix, err = pci.NewMSIX(pci.MSIXOptions{
			Vectors: p.vecs, TableBAR: int(table & 7), TableOffset: table &^ 7, PBABAR: int(pba & 7), PBAOffset: pba &^ 7,
			Router: o.Router, Errors: o.Errors,
		})
		if err != nil {
			return nil, fmt.Errorf("vfio: %s: %w", addr, err)
		}
		for _, b := range []int{int(table & 7), int(pba & 7)} {
			if p.bars[b] == 0 {
				return nil, fmt.Errorf("vfio: %s: MSI-X table or PBA in BAR %d, which is not a memory BAR", addr, b)
			}
		}
		if _, err := cs.AddCapability(syncedCap{p.msix, p.syncMSIX}); err != nil {
			return nil, fmt.Errorf("vfio: %s: %w", addr, err)
		}
		trapped[int(table&7)] = append(trapped[int(table&7)], Span{uint64(table &^ 7), uint64(p.vecs) * 16})
		trapped[int(pba&7)] = append(trapped[int(pba&7)], Span{uint64(pba &^ 7), uint64(p.vecs+63) / 64 * 8})
	default:
		off, ok := findCapability(cfg[:], pci.CapMSI)
		d, can := dev.(msiDevice)
		if !ok || !can || d.MSIVectors() == 0 {
			if p.intx == nil {
				return nil, fmt.Errorf("vfio: %s: no MSI-X or MSI capability and no INTx: the device cannot interrupt its guest", addr)
			}
			break // INTx alone
		}
		// As many vectors as the device asks for (Multiple Message
		// Capable) and VFIO routes, in a power of two.
		p.vecs = min(1<<((le.Uint16(cfg[off+2:])>>1)&7), 32) // 6 and 7 are reserved
		for p.vecs > max(d.MSIVectors(), 1) {
			p.vecs /= 2
		}
		p.msi, err = pci.NewMSI(pci.MSIOptions{Vectors: p.vecs, Router: o.Router, Errors: o.Errors})
		if err != nil {
			return nil, fmt.Errorf("vfio: %s: %w", addr, err)
		}
		p.msiDev = d
		if _, err := cs.AddCapability(syncedCap{p.msi, p.syncMSI}); err != nil {
			return nil, fmt.Errorf("vfio: %s: %w", addr, err)
		}
	}
	if p.intx != nil {
		if err := p.intx.SetINTx(o.INTx.Trigger, o.INTx.Unmask); err != nil {
			return nil, err
		}
	}
	if m, ok := dev.(mapper); ok && o.Slots != nil {
		if err := p.mapBARs(m, trapped); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// mapBARs maps each BAR's pages the guest may reach directly (within what
// VFIO lets map, outside trapped), each piece a slot of its own.
func (p *PCI) mapBARs(m mapper, trapped map[int][]Span) error {
	page := uint64(unix.Getpagesize())
	for i, size := range p.bars {
		if size == 0 {
			continue
		}
		areas, err := m.Mappable(i)
		if err != nil {
			return err
		}
		for _, s := range directSpans(size, areas, trapped[i], page) {
			mem, err := m.Map(i, s)
			if err != nil {
				return err
			}
			p.direct[i] = append(p.direct[i], direct{off: s.Off, mem: mem, slot: p.opts.Slots.NewSlot()})
		}
	}
	return nil
}

// Direct is how many bytes of BAR i the guest reaches without the VMM.
func (p *PCI) Direct(i int) uint64 {
	var n uint64
	if i >= 0 && i < len(p.direct) {
		for _, d := range p.direct[i] {
			n += uint64(len(d.mem))
		}
	}
	return n
}

// Close takes the mapped BAR pages from the guest and unmaps them.
func (p *PCI) Close() error {
	var first error
	for i := range p.direct {
		for _, d := range p.direct[i] {
			if d.gpa != 0 {
				if err := p.opts.Slots.SetUserMemoryRegion(d.slot, 0, d.gpa, 0, 0); err != nil {
					// Still the guest's: leave it mapped rather than
					// let the address range be reused under the slot.
					if first == nil {
						first = err
					}
					continue
				}
			}
			if err := unix.Munmap(d.mem); err != nil && first == nil {
				first = fmt.Errorf("vfio: %s: unmap BAR %d at %#x: %w", p.addr, i, d.off, err)
			}
		}
		p.direct[i] = nil
	}
	return first
}

// findCapability walks a configuration space's capability list for id,
// bounded: a device's list may loop or point anywhere.
func findCapability(cfg []byte, id byte) (int, bool) {
	if binary.LittleEndian.Uint16(cfg[pci.RegStatus:])&pci.StatusCapList == 0 {
		return 0, false
	}
	off := int(cfg[pci.RegCapabilities]) &^ 3
	for range 48 {
		if off < 0x40 || off+12 > len(cfg) {
			return 0, false
		}
		if cfg[off] == id {
			return off, true
		}
		off = int(cfg[off+1]) &^ 3
	}
	return 0, false
}

// ID is the device's vendor and device ID, as "1b36:0010".
func (p *PCI) ID() string {
	var b [4]byte
	p.ConfigSpace.ReadConfig(pci.RegVendor, b[:])
	le := binary.LittleEndian
	return fmt.Sprintf("%04x:%04x", le.Uint16(b[:]), le.Uint16(b[2:]))
}

// Vectors is how many MSI-X vectors the device has, or MSI vectors when
// it shows MSI (0 with INTx alone).
func (p *PCI) Vectors() int { return p.vecs }

// syncedCap is an emulated interrupt capability the guest sees (pci.MSIX,
// pci.MSI) with the device following each write: sync is syncMSIX or
// syncMSI.
type syncedCap struct {
	pci.Capability
	sync func()
}

func (c syncedCap) WriteCapability(off int, data []byte) {
	c.Capability.WriteCapability(off, data)
	c.sync()
}

// syncMSIX enables the device's MSI-X, every vector signalling its irqfd,
// when the guest has enabled it, and disables it when the guest has.
// Masking is the router's: a masked vector's irqfd is detached, so that
// its eventfd keeps what the device signals until the guest unmasks it.
func (p *PCI) syncMSIX() {
	on := p.msix.Enabled()
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.msixOn {
		return
	}
	var fds []int
	if on {
		var err error
		if fds, err = p.eventFDs(p.vecs, "MSI-X"); err != nil {
			p.fail(err)
			return
		}
		if err := p.intxOff(); err != nil {
			p.fail(err)
			return
		}
	}
	if err := p.dev.SetMSIX(fds); err != nil {
		p.fail(err)
		if on {
			if err := p.intxOn(); err != nil { // not left with no interrupt at all
				p.fail(err)
			}
		}
		return
	}
	p.msixOn = on
	if !on {
		if err := p.intxOn(); err != nil {
			p.fail(err)
		}
	}
}

// eventFDs are the irqfd eventfds of the first n vectors, for VFIO to
// signal (what names the interrupt kind in errors).
func (p *PCI) eventFDs(n int, what string) ([]int, error) {
	fds := make([]int, 0, n)
	for v := range n {
		fd, err := p.opts.EventFD(v)
		if err != nil {
			return nil, fmt.Errorf("vfio: %s: enable %s: vector %d eventfd: %w", p.addr, what, v, err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// intxOff and intxOn disable and enable the device's INTx in VFIO, where
// it is connected: VFIO allows one of INTx, MSI and MSI-X at a time.
func (p *PCI) intxOff() error {
	if p.intx == nil {
		return nil
	}
	return p.intx.SetINTx(-1, -1)
}

func (p *PCI) intxOn() error {
	if p.intx == nil {
		return nil
	}
	return p.intx.SetINTx(p.opts.INTx.Trigger, p.opts.INTx.Unmask)
}

// syncMSI enables the device's MSI with as many vectors as the guest
// enabled, each signalling its irqfd, and disables it when the guest has;
// VFIO changes a vector count only through disabled, and allows INTx or
// MSI, so INTx goes off while MSI is on.
func (p *PCI) syncMSI() {
	n := p.msi.Enabled()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == p.msiOn {
		return
	}
	if p.msiOn > 0 {
		if err := p.msiDev.SetMSI(nil); err != nil {
			p.fail(err)
			return
		}
		p.msiOn = 0
	}
	if n == 0 {
		if err := p.intxOn(); err != nil {
			p.fail(err)
		}
		return
	}
	fds, err := p.eventFDs(n, "MSI")
	if err != nil {
		p.fail(err)
		return
	}
	if err := p.intxOff(); err != nil {
		p.fail(err)
		return
	}
	if err := p.msiDev.SetMSI(fds); err != nil {
		p.fail(err)
		if err := p.intxOn(); err != nil { // not left with no interrupt at all
			p.fail(err)
		}
		return
	}
	p.msiOn = n
}

// MSI says whether the guest sees an MSI capability (the device has MSI
// and no MSI-X).
func (p *PCI) MSI() bool { return p.msi != nil }

// INTx says whether the guest sees the device's INTx (pin INTA#).
func (p *PCI) INTx() bool { return p.intx != nil }

func (p *PCI) fail(err error) {
	if p.opts.Errors != nil {
		p.opts.Errors(err)
	}
}

// WriteConfig writes the emulated header, then gives the device what it
// must have of the command register: memory decoding (VFIO refuses BAR
// accesses without it) and bus mastering (its DMA); INTx disabled, or as
// the guest wants it when INTx is connected (VFIO emulates the bit).
func (p *PCI) WriteConfig(reg int, data []byte) {
	p.ConfigSpace.WriteConfig(reg, data)
	if reg > pci.RegCommand+1 || reg+len(data) <= pci.RegCommand {
		return
	}
	cmd := p.ConfigSpace.Command()&(pci.CommandMemory|pci.CommandBusMaster) | pci.CommandINTxDisable
	if p.intx != nil {
		cmd = p.ConfigSpace.Command() & (pci.CommandMemory | pci.CommandBusMaster | pci.CommandINTxDisable)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cmd == p.cmd {
		return
	}
	if p.cmd&pci.CommandMemory != 0 && cmd&pci.CommandMemory == 0 {
		// The BARs' slots go first: once VFIO sees decoding off it takes
		// the device's pages from the VMM's mappings, and a vCPU reaching
		// one through a slot still there would fault the VMM (KVM_RUN's
		// EFAULT). The bus moves them nowhere again after this, which
		// finds nothing left to delete.
		for i := range p.direct {
			if err := p.MoveBAR(i, 0, 0); err != nil {
				p.fail(err)
			}
		}
	}
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], cmd)
	if err := p.dev.WriteRegion(configRegion, b[:], pci.RegCommand); err != nil {
		p.fail(err)
		return
	}
	p.cmd = cmd
}

// MoveBAR implements pci.Device: the BAR's mapped pages follow it, their
// slots deleted where it was and made where it is (none while it does not
// decode). What is not mapped is trapped and forwarded wherever it is; so
// is a piece whose slot KVM refuses (the guest made the BAR overlap
// another), which is tried again at the BAR's next move.
func (p *PCI) MoveBAR(i int, _, to uint64) error {
	if i < 0 || i >= len(p.direct) {
		return nil
	}
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	for k := range p.direct[i] {
		d := &p.direct[i][k]
		if d.gpa == 0 {
			continue
		}
		if err := p.opts.Slots.SetUserMemoryRegion(d.slot, 0, d.gpa, 0, 0); err != nil {
			keep(err)
			continue
		}
		d.gpa = 0
	}
	if to == 0 {
		return first
	}
	for k := range p.direct[i] {
		d := &p.direct[i][k]
		if d.gpa != 0 {
			continue // its old slot would not go: it stays where it was
		}
		gpa := to + d.off
		if err := p.opts.Slots.SetUserMemoryRegion(d.slot, 0, gpa, uint64(len(d.mem)), uintptr(unsafe.Pointer(&d.mem[0]))); err != nil {
			keep(err)
			continue
		}
		d.gpa = gpa
	}
	return first
}

// ReadBAR serves the MSI-X table and PBA, and reads anything else from the
// device's BAR.
func (p *PCI) ReadBAR(i int, off uint64, data []byte) {
	if p.msix != nil && p.msix.ReadBAR(i, off, data) {
		return
	}
	if err := p.access(i, off, data, false); err != nil {
		for j := range data {
			data[j] = 0xff
		}
		p.fail(err)
	}
}

// WriteBAR serves the MSI-X table, and writes anything else to the
// device's BAR.
func (p *PCI) WriteBAR(i int, off uint64, data []byte) {
	if p.msix != nil && p.msix.WriteBAR(i, off, data) {
		return
	}
	if err := p.access(i, off, data, true); err != nil {
		p.fail(err)
	}
}

var errOutside = errors.New("outside the BAR")

func (p *PCI) access(i int, off uint64, data []byte, write bool) error {
	if i < 0 || i >= len(p.bars) || p.bars[i] == 0 || off >= p.bars[i] || uint64(len(data)) > p.bars[i]-off {
		return fmt.Errorf("vfio: %s: BAR %d: %d bytes at %#x: %w", p.addr, i, len(data), off, errOutside)
	}
	if write {
		return p.dev.WriteRegion(i, data, off)
	}
	return p.dev.ReadRegion(i, data, off)
}
