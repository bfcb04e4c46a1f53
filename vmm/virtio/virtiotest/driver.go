package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Descriptor flags (virtio 1.2 §2.7.5).
const (
	DescNext     = 1 // VIRTQ_DESC_F_NEXT: the chain continues at the next field
	DescWrite    = 2 // VIRTQ_DESC_F_WRITE: the buffer is device-writable
	DescIndirect = 4 // VIRTQ_DESC_F_INDIRECT: the buffer is a table of descriptors
)

// DescSize is the size of a descriptor in bytes.
const DescSize = 16

// Layout is where a split ring's three parts lie in guest memory. A
// virtio.Queue is programmed from it field by field (DescAddr = Desc, ...).
type Layout struct {
	Size              uint16 // number of descriptors
	Desc, Avail, Used uint64 // guest-physical addresses
}

// Contiguous lays a ring out from base as Linux does: the descriptor table,
// the available ring right after it, the used ring at the next 16 bytes.
func Contiguous(base uint64, size uint16) Layout {
	avail := base + DescSize*uint64(size)
	return Layout{Size: size, Desc: base, Avail: avail, Used: (avail + 6 + 2*uint64(size) + 15) &^ 15}
}

// End is the first byte after the used ring (avail_event included).
func (l Layout) End() uint64 { return l.Used + 6 + 8*uint64(l.Size) }

// Buf is one buffer of a chain a Driver posts.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Used is an entry of the used ring: the chain's head and the number of
// bytes the device wrote.
type Used struct {
	Head uint16
	Len  uint32
}

// Driver plays the guest's virtio driver on one split ring. The low-level
// methods (SetDesc, Add, SetAvailIdx, ...) write exactly what a test says,
// broken rings included; Post and Reap manage descriptors as a real driver
// does (a free list, chains in flight). A Driver is used by one goroutine;
// the device under test runs on others.
type Driver struct {
	Layout
	mem Memory

	desc     []byte // descriptor table view, nil if the table is not in RAM
	avail    []byte // available ring, widened to aligned words
	availOff int    // offset of the ring in avail (0 or 2)
	used     []byte // used ring, widened to aligned words
	usedOff  int
	availIdx uint16 // the next avail->idx the driver publishes
	nextUsed uint16 // the next used entry Reap reads
	free     []uint16
	next     []uint16 // per descriptor: the next one in its posted chain
	count    []uint16 // per head: descriptors in its chain, 0 if not in flight
	inFlight int
	descBuf  [DescSize]byte
	mask     uint16 // Size-1 when Size is a power of two (as the spec wants), else 0
	// held is an entry PostDeferred wrote into the low half of a ring
	// word and has not stored yet, at byte heldOff of avail (-1: none):
	// the next entry fills the word's high half, and the two go in with
	// one plain store (see deferAvailEntry).
	held    uint16
	heldOff int
}

// wrap is ring index i's slot. A division would cost the driver as much
// as the rest of a ring entry's store; a ring a test sized against the
// spec still wraps at its size.
func (d *Driver) wrap(i uint16) uint16 {
	if d.mask != 0 {
		return i & d.mask
	}
	return i % d.Size
}

// NewDriver returns a driver for the ring at l in mem. The available and
// used rings must lie in RAM; the descriptor table may not (a test of a
// bad table address), and then SetDesc panics.
func NewDriver(mem Memory, l Layout) (*Driver, error) {
	if l.Size == 0 {
		return nil, errors.New("virtiotest: ring size 0")
	}
	d := &Driver{Layout: l, mem: mem, next: make([]uint16, l.Size), count: make([]uint16, l.Size), heldOff: -1}
	var err error
	d.availOff = int(l.Avail & 3)
	if d.avail, err = mem.Slice(l.Avail&^3, roundUp4(uint64(d.availOff)+6+2*uint64(l.Size))); err != nil {
		return nil, fmt.Errorf("virtiotest: available ring: %w", err)
	}
	d.usedOff = int(l.Used & 3)
	if d.used, err = mem.Slice(l.Used&^3, roundUp4(uint64(d.usedOff)+6+8*uint64(l.Size))); err != nil {
		return nil, fmt.Errorf("virtiotest: used ring: %w", err)
	}
	if !aligned4(d.avail) || !aligned4(d.used) {
		return nil, errors.New("virtiotest: ring memory not 4-byte aligned in host memory")
	}
	d.desc, _ = mem.Slice(l.Desc, DescSize*uint64(l.Size)) // nil if not RAM
	if l.Size&(l.Size-1) == 0 {
		d.mask = l.Size - 1
	}
	for i := int(l.Size) - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	return d, nil
}

func roundUp4(n uint64) uint64 { return (n + 3) &^ 3 }

func aligned4(b []byte) bool { return uintptr(unsafe.Pointer(&b[0]))%4 == 0 }

// WriteDesc writes a descriptor at gpa: an entry of an indirect table, or
// of a descriptor table no Driver covers.
func WriteDesc(mem Memory, gpa, addr uint64, length uint32, flags, next uint16) error {
	b, err := mem.Slice(gpa, DescSize)
	if err != nil {
		return fmt.Errorf("virtiotest: descriptor at %#x: %w", gpa, err)
	}
	putDesc(b, addr, length, flags, next)
	return nil
}

func putDesc(b []byte, addr uint64, length uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// SetDesc writes descriptor i of the ring's table.
func (d *Driver) SetDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	if d.desc != nil && i < d.Size {
		putDesc(d.desc[DescSize*int(i):], addr, length, flags, next)
		return
	}
	if err := WriteDesc(d.mem, d.Desc+DescSize*uint64(i), addr, length, flags, next); err != nil {
		panic(err)
	}
}

// Add makes the chains with the given heads available: one ring entry
// each, then one store of avail->idx.
func (d *Driver) Add(heads ...uint16) {
	for _, h := range heads {
		d.setAvailEntry(d.availIdx, h)
		d.availIdx++
	}
	d.SetAvailIdx(d.availIdx)
}

// SetAvailEntry writes available ring entry i (wrapped by the ring size)
// without publishing it, for a driver that keeps its entries fixed and
// publishes with SetAvailIdx alone (DPDK's simple paths: entry i always
// names descriptor i).
func (d *Driver) SetAvailEntry(i, head uint16) { d.setAvailEntry(i, head) }

// setAvailEntry stores through the aligned word, as every access to the
// rings here: a device reads an entry with an atomic load of its word,
// which holds the neighbouring entry too, so a plain store to that one
// while the device reads would be a data race in Go's memory model.
func (d *Driver) setAvailEntry(i, head uint16) {
	d.storeHeld()
	store16(d.avail, d.availOff+4+2*int(d.wrap(i)), head)
}

// deferAvailEntry writes ring entry i of a chain PostDeferred posts. A
// ring word holds two entries, and the device may load the word for its
// other half at any time, hence store16's compare-and-swap, a locked
// instruction costing as much as the rest of a post. But when both
// halves are entries of chains not yet published, nobody else reads the
// word: the device loads entries only below avail->idx, and the chains
// that held those two slots one lap earlier were used (the driver had
// their descriptors back, so the device had popped them; a ring of Size
// descriptors cannot have Size+1 chains in flight). Such a pair is
// stored with one plain store, published by PublishAvail's atomic store
// of avail->idx; a low half waits in held for its partner.
func (d *Driver) deferAvailEntry(i, head uint16) {
	off := d.availOff + 4 + 2*int(d.wrap(i))
	switch {
	case off&2 == 0:
		d.storeHeld()
		d.held, d.heldOff = head, off
	case d.heldOff == off-2:
		binary.LittleEndian.PutUint32(d.avail[off-2:off+2], uint32(d.held)|uint32(head)<<16)
		d.heldOff = -1
	default:
		store16(d.avail, off, head)
	}
}

// storeHeld stores the entry deferAvailEntry held back, if any.
func (d *Driver) storeHeld() {
	if d.heldOff >= 0 {
		store16(d.avail, d.heldOff, d.held)
		d.heldOff = -1
	}
}

// SetAvailIdx publishes avail->idx = idx without adding entries (to fake a
// driver's bugs, or to replay), and continues from it.
func (d *Driver) SetAvailIdx(idx uint16) {
	d.storeHeld()
	d.availIdx = idx
	store16(d.avail, d.availOff+2, idx)
}

// AvailIdx is the avail->idx the driver published last, or publishes next
// when chains were posted with PostDeferred.
func (d *Driver) AvailIdx() uint16 { return d.availIdx }

// AvailEntry reads available ring entry i (wrapped by the ring size).
func (d *Driver) AvailEntry(i uint16) uint16 {
	d.storeHeld()
	return load16(d.avail, d.availOff+4+2*int(d.wrap(i)))
}

// SetAvailFlags writes avail->flags (VIRTQ_AVAIL_F_NO_INTERRUPT is 1).
func (d *Driver) SetAvailFlags(f uint16) { store16(d.avail, d.availOff, f) }

// SetUsedEvent writes used_event (with VIRTIO_F_EVENT_IDX: interrupt me
// once the device has used entry v).
func (d *Driver) SetUsedEvent(v uint16) { store16(d.avail, d.availOff+4+2*int(d.Size), v) }

// UsedIdx reads used->idx.
func (d *Driver) UsedIdx() uint16 { return load16(d.used, d.usedOff+2) }

// UsedFlags reads used->flags (VIRTQ_USED_F_NO_NOTIFY is 1).
func (d *Driver) UsedFlags() uint16 { return load16(d.used, d.usedOff) }

// AvailEvent reads avail_event (with VIRTIO_F_EVENT_IDX: the device wants
// a notification once the driver has made entry AvailEvent available).
func (d *Driver) AvailEvent() uint16 { return load16(d.used, d.usedOff+4+8*int(d.Size)) }

// UsedElem reads used ring element i (wrapped by the ring size). Read it
// only after UsedIdx showed it: that load orders the two.
func (d *Driver) UsedElem(i uint16) (id, length uint32) {
	off := d.usedOff + 4 + 8*int(d.wrap(i))
	return binary.LittleEndian.Uint32(d.used[off:]), binary.LittleEndian.Uint32(d.used[off+4:])
}

// SetUsedElem and SetUsedIdx are the device's side of the used ring, for
// tests that play the device as well (a benchmark of a driver's own cost).
func (d *Driver) SetUsedElem(i uint16, id, length uint32) {
	off := d.usedOff + 4 + 8*int(d.wrap(i))
	binary.LittleEndian.PutUint32(d.used[off:], id)
	binary.LittleEndian.PutUint32(d.used[off+4:], length)
}

// SetUsedIdx publishes used->idx, as a device does after SetUsedElem.
func (d *Driver) SetUsedIdx(idx uint16) { store16(d.used, d.usedOff+2, idx) }

// Post makes a chain of bufs available, taking its descriptors from the
// free list, and returns its head; ok is false when too few descriptors
// are free.
func (d *Driver) Post(bufs ...Buf) (head uint16, ok bool) {
	head, ok = d.PostDeferred(bufs...)
	if ok {
		d.PublishAvail()
	}
	return head, ok
}

// PostDeferred is Post without the publication: the chain's ring entry is
// written but avail->idx does not move, so the device cannot see it yet.
// A driver adding a burst of chains posts them this way and publishes
// them with one PublishAvail, one atomic store per burst (as a DPDK
// virtio driver does), instead of one per chain.
func (d *Driver) PostDeferred(bufs ...Buf) (head uint16, ok bool) {
	n := len(bufs)
	if n == 0 || n > len(d.free) {
		return 0, false
	}
	ids := d.free[len(d.free)-n:]
	// The chain takes the top of the stack in reverse, so a fresh ring
	// posts 0, 1, 2, ...
	for i := 0; i < n; i++ {
		id := ids[n-1-i]
		var fl, next uint16
		if bufs[i].Write {
			fl |= DescWrite
		}
		if i < n-1 {
			fl |= DescNext
			next = ids[n-2-i]
		}
		d.next[id] = next
		d.SetDesc(id, bufs[i].Addr, bufs[i].Len, fl, next)
	}
	head = ids[n-1]
	d.free = d.free[:len(d.free)-n]
	d.count[head] = uint16(n)
	d.inFlight++
	d.deferAvailEntry(d.availIdx, head)
	d.availIdx++
	return head, true
}

// PublishAvail makes the chains posted with PostDeferred visible to the
// device: one store of avail->idx.
func (d *Driver) PublishAvail() { d.SetAvailIdx(d.availIdx) }

// PostIndirect makes bufs available as an indirect table written at gpa
// table, behind one descriptor of the ring.
func (d *Driver) PostIndirect(table uint64, bufs ...Buf) (head uint16, ok bool, err error) {
	if len(d.free) == 0 {
		return 0, false, nil
	}
	for i, b := range bufs {
		var fl uint16
		if b.Write {
			fl |= DescWrite
		}
		if i < len(bufs)-1 {
			fl |= DescNext
		}
		if err := WriteDesc(d.mem, table+DescSize*uint64(i), b.Addr, b.Len, fl, uint16(i+1)); err != nil {
			return 0, false, err
		}
	}
	head = d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	d.SetDesc(head, table, uint32(DescSize*len(bufs)), DescIndirect, 0)
	d.count[head] = 1
	d.inFlight++
	d.Add(head)
	return head, true, nil
}

// NextHead is the descriptor the next Post or PostIndirect takes as its
// head, for a test that places per-request data (an indirect table) by
// head; ok is false when none is free.
func (d *Driver) NextHead() (head uint16, ok bool) {
	if len(d.free) == 0 {
		return 0, false
	}
	return d.free[len(d.free)-1], true
}

// ErrNotInFlight is returned by Reap for a used entry whose head no Post
// made available (or that was used twice).
var ErrNotInFlight = errors.New("virtiotest: used entry for a chain not in flight")

// Reap appends to dst the used entries published since the last call and
// gives their descriptors back to the free list. It allocates nothing when
// dst has room.
func (d *Driver) Reap(dst []Used) ([]Used, error) {
	idx := d.UsedIdx()
	for ; d.nextUsed != idx; d.nextUsed++ {
		id, n := d.UsedElem(d.nextUsed)
		if id >= uint32(d.Size) || d.count[id] == 0 {
			return dst, fmt.Errorf("%w: head %d", ErrNotInFlight, id)
		}
		head := uint16(id)
		for i, desc := uint16(0), head; i < d.count[head]; i++ {
			d.free = append(d.free, desc)
			desc = d.next[desc]
		}
		d.count[head] = 0
		d.inFlight--
		dst = append(dst, Used{Head: head, Len: n})
	}
	return dst, nil
}

// NextUsed is the used ring index Reap reads next; SetUsedEvent(NextUsed())
// asks for an interrupt at the next used entry.
func (d *Driver) NextUsed() uint16 { return d.nextUsed }

// InFlight is the number of chains Post made available and Reap has not
// taken back.
func (d *Driver) InFlight() int { return d.inFlight }

// load16 and store16 access the 16-bit field at byte off of b (whose first
// byte is 4-byte aligned) through the aligned 32-bit word holding it, as
// the device does; store16 changes only its half of the word, so a
// concurrent device store to the other half is never lost.
func load16(b []byte, off int) uint16 {
	w := (*uint32)(unsafe.Pointer(&b[off&^3]))
	return uint16(atomic.LoadUint32(w) >> (uint(off&2) * 8))
}

func store16(b []byte, off int, v uint16) {
	w := (*uint32)(unsafe.Pointer(&b[off&^3]))
	shift := uint(off&2) * 8
	mask := uint32(0xffff) << shift
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<shift) {
			return
		}
	}
}
