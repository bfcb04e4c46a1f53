package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// MaxQueueSize is the largest split virtqueue the spec allows (virtio 1.2
// §2.7: the queue size is a power of two no larger than 32768).
const MaxQueueSize = 32768

// Flags in guest-visible ring structures (virtio 1.2 §2.7.5-2.7.8).
const (
	descFNext         = 1 // VIRTQ_DESC_F_NEXT: the chain continues at the next field
	descFWrite        = 2 // VIRTQ_DESC_F_WRITE: the buffer is device-writable
	descFIndirect     = 4 // VIRTQ_DESC_F_INDIRECT: the buffer is a table of descriptors
	availFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT: the driver wants no used buffer notifications
	usedFNoNotify     = 1 // VIRTQ_USED_F_NO_NOTIFY: the device wants no available buffer notifications

	descSize = 16 // bytes per descriptor
)

// Memory is guest RAM as a queue sees it; *memory.Guest implements it.
// Slice must fail unless [gpa, gpa+n) is non-empty and lies entirely inside
// guest RAM, and return a view into the memory the guest itself sees (not a
// copy): the queue keeps views of the rings and publishes indices through
// them. RAM ranges must start and end on 4-byte boundaries, with each view's
// host address congruent to its guest address modulo 4 (true of any
// page-aligned mapping), because ring indices are reached through aligned
// 32-bit words (see word.go).
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// MainRange is what a Memory may also implement: one range of guest RAM
// (its lowest region, all of a small guest's RAM) as a view, valid as long
// as the Memory is. A queue checks buffers inside it inline, without a
// call through the interface and a walk of the regions per descriptor,
// two of each per forwarded frame in the switch.
type MainRange interface {
	MainRange() (gpa uint64, ram []byte)
}

// ErrRing is wrapped by errors that make a whole queue unusable: bad ring
// addresses, or an available ring the driver corrupted. The device should
// then set DEVICE_NEEDS_RESET; the queue stays broken until reactivated.
var ErrRing = errors.New("virtio: malformed virtqueue")

// Queue is one split virtqueue (virtio 1.2 §2.7). The transport writes the
// exported configuration the driver programs while the queue is inactive,
// then calls Activate; after that the fields are ignored until Reset and
// the next Activate, so a driver rewriting them cannot pull the rings from
// under a running device.
//
// A Queue is not safe for concurrent use: after activation exactly one
// goroutine (the device's worker for this queue) calls its methods. The
// driver on the guest's CPUs is the other party, and is only ever reached
// through atomic accesses to the shared ring words.
type Queue struct {
	Size      uint16 // number of descriptors, a power of two up to MaxSize
	DescAddr  uint64 // guest-physical address of the descriptor table (queue_desc)
	AvailAddr uint64 // guest-physical address of the available ring (queue_driver)
	UsedAddr  uint64 // guest-physical address of the used ring (queue_device)
	Ready     bool   // the driver enabled the queue (queue_enable)

	maxSize uint16

	// Set by Activate.
	active   bool
	mem      Memory
	ram      []byte // mem's MainRange, if it has one, at guest address ramGPA
	ramGPA   uint64
	size     uint16 // Size as activated; all ring arithmetic uses this copy
	indirect bool   // FeatureRingIndirectDesc negotiated
	eventIdx bool   // FeatureRingEventIdx negotiated

	desc       []byte  // descriptor table view
	avail      []byte  // available ring view, widened to whole aligned words
	availOff   int     // offset of the available ring inside avail (0 or 2)
	used       []byte  // used ring view, including avail_event and padding to a word
	usedWord   *uint32 // used->flags (low half) and used->idx (high half)
	availFlags field16
	availIdx   field16
	usedEvent  field16 // only meaningful with eventIdx
	availEvent field16 // only meaningful with eventIdx

	lastAvail uint16 // next available ring entry the device will consume
	availSeen uint16 // avail->idx as last loaded: entries before it need no new load
	usedIdx   uint16 // the device's used->idx, including deferred pushes
	published uint16 // usedIdx as last stored in guest memory
	usedFlags uint16 // the device's used->flags
	signalled uint16 // usedIdx when NeedInterrupt last decided
	err       error  // sticky ErrRing error
}

// NewQueue returns an inactive queue accepting sizes up to maxSize, which
// must be a power of two no larger than MaxQueueSize.
func NewQueue(maxSize uint16) (*Queue, error) {
	if !validSize(maxSize) {
		return nil, fmt.Errorf("virtio: queue maximum size %d is not a power of two in [1, %d]", maxSize, MaxQueueSize)
	}
	q := &Queue{maxSize: maxSize}
	q.Reset()
	return q, nil
}

func validSize(n uint16) bool {
	return n != 0 && n&(n-1) == 0 && n <= MaxQueueSize
}

// MaxSize is the largest size the queue accepts (queue_size's reset value).
func (q *Queue) MaxSize() uint16 { return q.maxSize }

// Active reports whether Activate succeeded since the last Reset.
func (q *Queue) Active() bool { return q.active }

// Reset returns the queue to its state after a device reset: inactive, not
// ready, size at the maximum, addresses zero. It drops the views of guest
// memory.
func (q *Queue) Reset() {
	*q = Queue{Size: q.maxSize, maxSize: q.maxSize}
}

// Activate validates the configuration the driver programmed and maps the
// rings, so that the data path never looks an address up again. features
// is the negotiated feature set: it decides whether indirect descriptors
// and event-index notification suppression are in use. Errors wrap ErrRing
// (or the Memory's error) and leave the queue inactive.
func (q *Queue) Activate(mem Memory, features uint64) error {
	if err := q.activate(mem, features); err != nil {
		q.active = false
		q.mem, q.desc, q.avail, q.used, q.usedWord = nil, nil, nil, nil, nil
		return err
	}
	return nil
}

func (q *Queue) activate(mem Memory, features uint64) error {
	if !q.Ready {
		return fmt.Errorf("%w: queue not enabled by the driver", ErrRing)
	}
	n := q.Size
	if !validSize(n) || n > q.maxSize {
		return fmt.Errorf("%w: size %d is not a power of two in [1, %d]", ErrRing, n, q.maxSize)
	}
	// Alignment rules of virtio 1.2 §2.7 (table "Virtqueue Part
	// Alignment"); the atomic word accesses rely on them.
	if q.DescAddr%16 != 0 || q.AvailAddr%2 != 0 || q.UsedAddr%4 != 0 {
		return fmt.Errorf("%w: misaligned rings (desc %#x needs 16, avail %#x needs 2, used %#x needs 4)",
			ErrRing, q.DescAddr, q.AvailAddr, q.UsedAddr)
	}
	desc, err := mem.Slice(q.DescAddr, descSize*uint64(n))
	if err != nil {
		return fmt.Errorf("%w: descriptor table: %w", ErrRing, err)
	}
	// The available ring is flags, idx, ring[n], used_event: 6+2n bytes,
	// mapped from the aligned word holding its start to the end of the
	// word holding used_event.
	availStart := q.AvailAddr &^ 3
	availOff := int(q.AvailAddr & 3)
	availLen := (uint64(availOff) + 6 + 2*uint64(n) + 3) &^ 3
	avail, err := mem.Slice(availStart, availLen)
	if err != nil {
		return fmt.Errorf("%w: available ring at %#x: %w", ErrRing, q.AvailAddr, err)
	}
	// The used ring is flags, idx, ring[n] of 8 bytes, avail_event:
	// 6+8n bytes, widened to the end of avail_event's word.
	used, err := mem.Slice(q.UsedAddr, 8+8*uint64(n))
	if err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrRing, err)
	}
	if !aligned4(avail) || !aligned4(used) {
		return fmt.Errorf("%w: guest memory view of the rings is not 4-byte aligned", ErrRing)
	}

	q.active = true
	q.mem = mem
	q.ram, q.ramGPA = nil, 0
	if m, ok := mem.(MainRange); ok {
		q.ramGPA, q.ram = m.MainRange()
	}
	q.size = n
	q.indirect = features&FeatureRingIndirectDesc != 0
	q.eventIdx = features&FeatureRingEventIdx != 0
	q.desc, q.avail, q.availOff, q.used = desc, avail, availOff, used
	q.usedWord = fieldAt(used, 0).word
	q.availFlags = fieldAt(avail, availOff)
	q.availIdx = fieldAt(avail, availOff+2)
	q.usedEvent = fieldAt(avail, availOff+4+2*int(n))
	q.availEvent = fieldAt(used, 4+8*int(n))
	q.lastAvail, q.availSeen, q.usedIdx, q.published, q.usedFlags, q.signalled, q.err = 0, 0, 0, 0, 0, 0, nil
	return nil
}

var errInactive = fmt.Errorf("%w: queue is not active", ErrRing)

// Pop takes the next available descriptor chain and returns its head
// index, or ok == false when the driver has made nothing new available.
// Walk the head into a Chain, and give it back with Push even when Walk
// fails, so the driver gets its descriptors back. An error wraps ErrRing:
// the driver corrupted the available ring, and the queue stays broken.
func (q *Queue) Pop() (head uint16, ok bool, err error) {
	if !q.active {
		return 0, false, errInactive
	}
	if q.err != nil {
		return 0, false, q.err
	}
	// The atomic load orders the reads below after it: whatever the
	// driver wrote before publishing idx (ring entries, descriptors) is
	// visible. Entries up to the index loaded last time are already
	// known to be published, so a batch costs one load of the shared
	// word, not one per chain.
	if q.availSeen == q.lastAvail {
		idx := q.availIdx.load()
		pending := idx - q.lastAvail // 16-bit arithmetic: indices wrap
		if pending == 0 {
			return 0, false, nil
		}
		if pending > q.size {
			q.err = fmt.Errorf("%w: available index %d is %d entries ahead of the device's %d (queue size %d)",
				ErrRing, idx, pending, q.lastAvail, q.size)
			return 0, false, q.err
		}
		q.availSeen = idx
	}
	slot := int(q.lastAvail & (q.size - 1))
	head = fieldAt(q.avail, q.availOff+4+2*slot).load()
	if head >= q.size {
		q.err = fmt.Errorf("%w: available ring entry %d holds head %d, beyond the queue size %d",
			ErrRing, q.lastAvail, head, q.size)
		return 0, false, q.err
	}
	q.lastAvail++
	return head, true, nil
}

// Push returns the chain whose head is head to the driver, recording that
// the device wrote written bytes into its writable buffers (Chain.Written),
// and publishes it by advancing used->idx. Call NeedInterrupt afterwards (once
// per batch is enough) to decide whether to notify the driver.
func (q *Queue) Push(head uint16, written uint32) error {
	if err := q.PushDeferred(head, written); err != nil {
		return err
	}
	q.publishUsed()
	return nil
}

// PushDeferred is Push without the publication: the used element is
// written but used->idx does not move, so the driver cannot see the chain
// yet. A device returning a batch of chains pushes them this way and then
// calls PublishUsed once, paying one atomic store (a full barrier on
// amd64) per batch instead of one per chain. Push and NeedInterrupt
// publish deferred chains too, so NeedInterrupt never decides on chains
// the driver cannot see. A chain pushed but never published stays the
// device's: publish before the driver is owed it (before waiting for the
// next notification, before giving the queue up).
func (q *Queue) PushDeferred(head uint16, written uint32) error {
	if !q.active {
		return errInactive
	}
	if head >= q.size {
		return fmt.Errorf("virtio: push of head %d on a queue of size %d", head, q.size)
	}
	elem := 4 + 8*int(q.usedIdx&(q.size-1))
	// Plain stores: the driver reads the element only after it sees
	// used->idx move past it, and publishUsed's atomic store orders them.
	// One 8-byte store: id (le32) then len (le32).
	binary.LittleEndian.PutUint64(q.used[elem:elem+8], uint64(head)|uint64(written)<<32)
	q.usedIdx++
	return nil
}

// PublishUsed makes every chain pushed with PushDeferred visible to the
// driver by storing used->idx. It does nothing when nothing is pending.
func (q *Queue) PublishUsed() {
	if q.active && q.published != q.usedIdx {
		q.publishUsed()
	}
}

// publishUsed stores used->flags and used->idx, which the device alone
// writes, as one aligned word: a release for the element writes before it,
// and a full barrier before any later load of the driver's fields.
func (q *Queue) publishUsed() {
	atomic.StoreUint32(q.usedWord, uint32(q.usedIdx)<<16|uint32(q.usedFlags))
	q.published = q.usedIdx
}

// NeedInterrupt reports whether the driver wants a used buffer notification
// for what was pushed since the previous call (virtio 1.2 §2.7.10): with
// EVENT_IDX, when used->idx moved past used_event since then (the
// vring_need_event test, in wrapping 16-bit arithmetic); without it, unless
// the driver set VIRTQ_AVAIL_F_NO_INTERRUPT. Nothing pushed means no
// notification. Chains pushed with PushDeferred are published first. The
// caller sends the notification (Interrupt.Used) when true.
func (q *Queue) NeedInterrupt() bool {
	if !q.active {
		return false
	}
	if q.published != q.usedIdx {
		// Deferred pushes: the driver must see them before we decide,
		// or it could sleep on an index we are not signalling.
		q.publishUsed()
	}
	old, cur := q.signalled, q.usedIdx
	q.signalled = cur
	if q.eventIdx {
		// publishUsed's atomic store is a full barrier: used_event is
		// read after the driver can see the new used->idx, so a driver
		// that moves used_event concurrently either sees our index or
		// we see its event.
		return needEvent(q.usedEvent.load(), cur, old)
	}
	if cur == old {
		return false
	}
	return q.availFlags.load()&availFNoInterrupt == 0
}

// needEvent is vring_need_event: whether moving an index from old to cur
// crossed event, i.e. event lies in [old, cur) modulo 2^16.
func needEvent(event, cur, old uint16) bool {
	return cur-event-1 < cur-old
}

// DisableNotifications tells the driver it need not notify the device of
// new buffers, because the device is busy processing and will look at the
// ring again anyway. With EVENT_IDX this is implicit (avail_event is simply
// left behind), so it only sets VIRTQ_USED_F_NO_NOTIFY otherwise. It is
// only a hint: drivers may notify anyway.
func (q *Queue) DisableNotifications() {
	if !q.active || q.eventIdx || q.usedFlags&usedFNoNotify != 0 {
		return
	}
	q.usedFlags |= usedFNoNotify
	q.publishUsed()
}

// EnableNotifications asks the driver to notify the device of the next
// buffer it makes available, then reports whether buffers are already
// available. When it returns true the caller must keep popping: a buffer
// added just before the request was visible to the driver will not be
// notified. The device's loop is therefore:
//
//	for {
//		q.DisableNotifications()
//		for { head, ok, err := q.Pop(); if !ok { break }; ... }
//		if !q.EnableNotifications() { break } // wait for the next notification
//	}
func (q *Queue) EnableNotifications() bool {
	if !q.active {
		return false
	}
	if q.eventIdx {
		q.availEvent.store(q.lastAvail)
	} else {
		q.usedFlags &^= usedFNoNotify
		q.publishUsed()
	}
	// Both stores above are full barriers (see word.go), so this load
	// cannot be satisfied before the driver can see our request: either
	// the driver sees it and notifies, or we see its new index here.
	return q.availIdx.load() != q.lastAvail
}

// Pending reports whether the driver has made chains available that Pop
// has not taken yet: one atomic load of avail->idx. A device that waits
// for the driver's notification without draining it asks this first: a
// notification for buffers added before the wait began may have been
// consumed, but the buffers are there.
func (q *Queue) Pending() bool {
	return q.active && q.availIdx.load() != q.lastAvail
}

// Err is the error that broke the queue, or nil.
func (q *Queue) Err() error { return q.err }

// Describe says where the queue stands, for a dump of a stalled machine:
// the driver's and the device's indices, the notification fields on both
// sides, and the error that broke it. The guest's fields are loaded
// atomically; the device's are read plainly, so the caller holds whatever
// serialises the device's use of the queue.
//
// Read together they place a stall: avail.idx ahead of next is work the
// device has not taken (was it kicked? are notifications off?); used ahead
// of the used.idx the guest sees is work not published; used.idx past
// used_event with no interrupt since is an interrupt the driver waits for.
func (q *Queue) Describe() string {
	if !q.active {
		return fmt.Sprintf("inactive (ready=%v size=%d)", q.Ready, q.Size)
	}
	word := atomic.LoadUint32(q.usedWord)
	s := fmt.Sprintf("size=%d avail.idx=%d next=%d used=%d used.idx=%d signalled=%d avail.flags=%#x used.flags=%#x",
		q.size, q.availIdx.load(), q.lastAvail, q.usedIdx, uint16(word>>16), q.signalled, q.availFlags.load(), uint16(word))
	if q.eventIdx {
		s += fmt.Sprintf(" used_event=%d avail_event=%d", q.usedEvent.load(), q.availEvent.load())
	}
	if q.err != nil {
		s += fmt.Sprintf(" broken: %v", q.err)
	}
	return s
}

// Resume makes an activated queue continue where another device left off
// instead of at index 0: the next available entry it consumes is avail, and
// its used index is whatever used->idx holds in guest memory. A vhost-user
// backend calls it for VHOST_USER_SET_VRING_BASE, and after a reconnect,
// when the frontend passes the used index as the base because the buffers
// the previous backend had taken but not returned are lost (harmless for a
// NIC: the frames are dropped).
func (q *Queue) Resume(avail uint16) {
	if !q.active {
		return
	}
	word := atomic.LoadUint32(q.usedWord)
	q.lastAvail, q.availSeen = avail, avail
	q.usedIdx = uint16(word >> 16)
	q.usedFlags = uint16(word)
	q.signalled = q.usedIdx
	q.published = q.usedIdx
}

// NextAvail is the index of the next available entry the queue will
// consume: the vring base VHOST_USER_GET_VRING_BASE reports when a backend
// stops.
func (q *Queue) NextAvail() uint16 { return q.lastAvail }

// UsedIndex is the device's used->idx, counting chains pushed with
// PushDeferred and not published yet.
func (q *Queue) UsedIndex() uint16 { return q.usedIdx }
