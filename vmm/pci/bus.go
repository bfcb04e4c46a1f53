package pci

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hyperroot/hyperroot/vmm/bus"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Options configure a Bus. The zero value is a bus with only the 32-bit
// BAR window and nothing behind port 0xCF9.
type Options struct {
	// MMIO64Base and MMIO64Size are the 64-bit BAR window, above RAM and
	// below the guest's physical address limit. Size 0 means no window:
	// 64-bit BARs then go below 4 GiB.
	MMIO64Base, MMIO64Size uint64
	// Reset receives the 1-byte accesses to port 0xCF9 (layout.ResetPort,
	// the ACPI reset register), which lies inside CONFIG_ADDRESS; it sees
	// them at offset 0.
	Reset bus.Device
	// Errors is told of errors nobody else can be: a device failing to
	// follow its BAR (MoveBAR). nil drops them.
	Errors func(error)
}

// MMIO64Window returns the 64-bit BAR window for a guest with ramSize
// bytes of RAM: layout.PCIMMIO64Size bytes from the first
// layout.PCIMMIO64Align boundary above RAM (and above 4 GiB).
func MMIO64Window(ramSize uint64) (base, size uint64) {
	end := uint64(layout.RAM64Start)
	for _, r := range layout.RAMRanges(ramSize) {
		end = max(end, r[1])
	}
	return (end + layout.PCIMMIO64Align - 1) &^ (layout.PCIMMIO64Align - 1), layout.PCIMMIO64Size
}

// Window is a range of guest-physical addresses the bus decodes, with the
// bus.Device to insert there on the VMM's MMIO bus.
type Window struct {
	Base, Size uint64
	Device     bus.Device
}

// Bus is PCI bus 0 with its host bridge. Config accesses are serialised
// by one lock (they are rare); BAR accesses, the hot path, read an
// immutable routing table without locking.
type Bus struct {
	opts Options

	mu     sync.Mutex
	addr   uint32 // mechanism #1 CONFIG_ADDRESS
	slots  [Slots]*slot
	next32 uint64 // allocation cursors
	next64 uint64

	routes atomic.Pointer[[]route] // sorted by start, non-overlapping
}

type slot struct {
	dev    Device
	bars   []BAR
	mapped [6]uint64 // address each BAR decodes at, 0 when it does not
}

type route struct {
	start, end uint64 // [start, end)
	dev        Device
	bar        int
}

// The 32-bit BAR window.
const (
	mmio32Base = layout.PCIMMIO32Base
	mmio32End  = layout.ECAMStart
)

// New returns bus 0 with the host bridge in slot 0.
func New(opts Options) (*Bus, error) {
	if opts.MMIO64Size != 0 {
		end := opts.MMIO64Base + opts.MMIO64Size
		if opts.MMIO64Base < layout.MMIO32End || end < opts.MMIO64Base {
			return nil, fmt.Errorf("pci: 64-bit window %#x+%#x must lie above 4 GiB", opts.MMIO64Base, opts.MMIO64Size)
		}
	}
	b := &Bus{opts: opts, next32: mmio32Base, next64: opts.MMIO64Base}
	b.routes.Store(&[]route{})
	hb, err := NewConfigSpace(Identity{Vendor: HostBridgeVendor, Device: HostBridgeDevice, Class: HostBridgeClass})
	if err != nil {
		return nil, err
	}
	b.slots[0] = &slot{dev: hostBridge{hb}}
	return b, nil
}

// hostBridge is the device at 00:00.0: a header and nothing else.
type hostBridge struct{ *ConfigSpace }

func (hostBridge) MoveBAR(int, uint64, uint64) error    { return nil }
func (hostBridge) ReadBAR(_ int, _ uint64, data []byte) { allOnes(data) }
func (hostBridge) WriteBAR(int, uint64, []byte)         {}

// Add puts d in the first free slot, assigns its BARs addresses in the
// bus's windows (naturally aligned; 64-bit BARs above 4 GiB when there is
// a 64-bit window), routes interrupt pin INTx to its GSI (INTxGSI) in the
// interrupt line register and enables memory decoding, as firmware would.
func (b *Bus) Add(d Device) (slotNo int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := slices.Index(b.slots[:], nil)
	if n < 0 {
		return 0, fmt.Errorf("pci: all %d slots are taken", Slots)
	}
	bars := d.BARs()
	addrs := make([]uint64, len(bars))
	next32, next64 := b.next32, b.next64
	for i, bar := range bars {
		if bar.Size == 0 || bar.Size&(bar.Size-1) != 0 {
			return 0, fmt.Errorf("pci: slot %d BAR %d: size %#x is not a power of two", n, bar.Index, bar.Size)
		}
		if bar.Is64 && b.opts.MMIO64Size != 0 {
			if a, ok := place(&next64, bar.Size, b.opts.MMIO64Base+b.opts.MMIO64Size); ok {
				addrs[i] = a
				continue
			}
		}
		a, ok := place(&next32, bar.Size, mmio32End)
		if !ok {
			return 0, fmt.Errorf("pci: slot %d BAR %d: no room for %#x bytes in the BAR windows", n, bar.Index, bar.Size)
		}
		addrs[i] = a
	}
	b.next32, b.next64 = next32, next64
	b.slots[n] = &slot{dev: d, bars: bars}

	var buf [4]byte
	le := binary.LittleEndian
	for i, bar := range bars {
		reg := RegBAR0 + 4*bar.Index
		d.WriteConfig(reg, le.AppendUint32(buf[:0], uint32(addrs[i])))
		if bar.Is64 {
			d.WriteConfig(reg+4, le.AppendUint32(buf[:0], uint32(addrs[i]>>32)))
		}
	}
	d.ReadConfig(RegIntPin, buf[:1])
	if pin := buf[0]; pin >= 1 && pin <= 4 {
		d.WriteConfig(RegIntLine, []byte{byte(INTxGSI(n, int(pin)))})
	}
	d.ReadConfig(RegCommand, buf[:2])
	d.WriteConfig(RegCommand, le.AppendUint16(buf[:0], le.Uint16(buf[:2])|CommandMemory))
	b.update(n)
	return n, nil
}

// place takes size bytes, aligned to size, from the cursor *next of a
// window that ends at end.
func place(next *uint64, size, end uint64) (uint64, bool) {
	a := (*next + size - 1) &^ (size - 1)
	if a < *next || a+size < a || a+size > end {
		return 0, false
	}
	*next = a + size
	return a, true
}

// Windows returns the BAR windows to insert on the VMM's MMIO bus.
func (b *Bus) Windows() []Window {
	w := []Window{{mmio32Base, mmio32End - mmio32Base, window{b, mmio32Base}}}
	if b.opts.MMIO64Size != 0 {
		w = append(w, Window{b.opts.MMIO64Base, b.opts.MMIO64Size, window{b, b.opts.MMIO64Base}})
	}
	return w
}

func (b *Bus) inWindow(addr, size uint64) bool {
	end := addr + size
	if end < addr {
		return false
	}
	if addr >= mmio32Base && end <= mmio32End {
		return true
	}
	return b.opts.MMIO64Size != 0 && addr >= b.opts.MMIO64Base && end <= b.opts.MMIO64Base+b.opts.MMIO64Size
}

// config performs a config access to bus/dev/fn at reg, splitting it into
// aligned pieces. Absent functions read all ones and ignore writes. After
// a write to the command register or a BAR the routing is brought up to
// date. The caller holds b.mu.
func (b *Bus) config(busNo, devNo, fn, reg int, data []byte, write bool) {
	var s *slot
	if busNo == 0 && fn == 0 && devNo >= 0 && devNo < Slots {
		s = b.slots[devNo]
	}
	if s == nil || reg < 0 || reg+len(data) > ConfigSize {
		if !write {
			allOnes(data)
		}
		return
	}
	chunks(reg, len(data), func(r, start, w int) {
		if write {
			s.dev.WriteConfig(r, data[start:start+w])
		} else {
			s.dev.ReadConfig(r, data[start:start+w])
		}
	})
	if write && reg < RegBAR0+24 && reg+len(data) > RegCommand {
		b.update(devNo)
	}
}

// update reads slot n's BARs and command register back and, where the
// address a BAR decodes at changed, tells the device and reroutes. The
// caller holds b.mu.
func (b *Bus) update(n int) {
	s := b.slots[n]
	var buf [4]byte
	le := binary.LittleEndian
	s.dev.ReadConfig(RegCommand, buf[:2])
	decode := le.Uint16(buf[:2])&CommandMemory != 0
	changed := false
	for _, bar := range s.bars {
		reg := RegBAR0 + 4*bar.Index
		s.dev.ReadConfig(reg, buf[:])
		addr := uint64(le.Uint32(buf[:]) &^ 0xF)
		if bar.Is64 {
			s.dev.ReadConfig(reg+4, buf[:])
			addr |= uint64(le.Uint32(buf[:])) << 32
		}
		if !decode || addr == 0 || !b.inWindow(addr, bar.Size) {
			addr = 0
		}
		if old := s.mapped[bar.Index]; old != addr {
			s.mapped[bar.Index] = addr
			changed = true
			if err := s.dev.MoveBAR(bar.Index, old, addr); err != nil && b.opts.Errors != nil {
				b.opts.Errors(fmt.Errorf("pci: slot %d BAR %d: move %#x -> %#x: %w", n, bar.Index, old, addr, err))
			}
		}
	}
	if changed {
		b.reroute()
	}
}

// reroute rebuilds the routing table from every slot's decoded BARs. Where
// the guest made BARs overlap, the one starting lower (on a tie, the one
// in the lower slot) wins and the other is not reachable until it moves
// (PCI leaves that case undefined).
func (b *Bus) reroute() {
	var rs []route
	for _, s := range b.slots {
		if s == nil {
			continue
		}
		for _, bar := range s.bars {
			if a := s.mapped[bar.Index]; a != 0 {
				rs = append(rs, route{a, a + bar.Size, s.dev, bar.Index})
			}
		}
	}
	slices.SortStableFunc(rs, func(x, y route) int { return cmp.Compare(x.start, y.start) })
	kept := rs[:0]
	for _, r := range rs {
		if len(kept) > 0 && r.start < kept[len(kept)-1].end {
			continue
		}
		kept = append(kept, r)
	}
	b.routes.Store(&kept)
}

// lookup finds the BAR holding [addr, addr+n).
func (b *Bus) lookup(addr uint64, n int) (route, bool) {
	rs := *b.routes.Load()
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs[m].start <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return route{}, false
	}
	r := rs[lo-1]
	if addr >= r.end || uint64(n) > r.end-addr {
		return route{}, false
	}
	return r, true
}

// window is one BAR window on the VMM's MMIO bus.
type window struct {
	b    *Bus
	base uint64
}

func (w window) Read(off uint64, data []byte) {
	if r, ok := w.b.lookup(w.base+off, len(data)); ok {
		r.dev.ReadBAR(r.bar, w.base+off-r.start, data)
		return
	}
	allOnes(data)
}

func (w window) Write(off uint64, data []byte) {
	if r, ok := w.b.lookup(w.base+off, len(data)); ok {
		r.dev.WriteBAR(r.bar, w.base+off-r.start, data)
	}
}
