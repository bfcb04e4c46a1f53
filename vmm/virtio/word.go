package virtio

import (
	"sync/atomic"
	"unsafe"
)

// The ring indices and notification fields (avail->idx, used->idx,
// used_event, avail_event, the ring flags) are shared with a driver running
// at the same time on other CPUs, and they order everything else: the
// driver fills descriptors and then publishes avail->idx; the device reads
// avail->idx and only then the descriptors; the device fills a used element
// and then publishes used->idx. Those fields are therefore accessed with
// sync/atomic, which gives the compiler-and-CPU ordering the protocol needs
// (Go's atomics are sequentially consistent: on amd64 a store is XCHG or
// LOCK CMPXCHG, a full barrier, which is also the store-then-load barrier
// the notification-suppression handshake requires), and keeps the race
// detector truthful in tests where a goroutine plays the driver.
//
// Memory exposes guest RAM as []byte views into the shared mapping (Slice);
// the queue maps each ring once when it is activated and reaches the words
// through that view. sync/atomic has no 16-bit operations, so a 16-bit field
// is accessed through the naturally aligned 32-bit word containing it: loads
// take the half they need, stores compare-and-swap only their half so a
// concurrent guest write to the other half is never lost. The ring views
// are widened to whole aligned words when mapped; this stays inside guest
// RAM because RAM ranges start and end on (page, hence 4-byte) boundaries.
// Both x86-64 and arm64 hosts are little-endian like virtio's rings, so the
// field at byte 2 of a word is its high half.

// field16 is a little-endian 16-bit field of a ring in guest memory.
type field16 struct {
	word  *uint32
	shift uint32 // 0 for the low half of word, 16 for the high half
}

// fieldAt returns the 16-bit field at byte offset off (even) of b, whose
// first byte must be 4-byte aligned in host memory and whose length must be
// a multiple of 4.
func fieldAt(b []byte, off int) field16 {
	return field16{
		word:  (*uint32)(unsafe.Pointer(&b[off&^3])),
		shift: uint32(off&2) * 8,
	}
}

func (f field16) load() uint16 {
	return uint16(atomic.LoadUint32(f.word) >> f.shift)
}

func (f field16) store(v uint16) {
	mask := uint32(0xffff) << f.shift
	for {
		old := atomic.LoadUint32(f.word)
		if atomic.CompareAndSwapUint32(f.word, old, old&^mask|uint32(v)<<f.shift) {
			return
		}
	}
}

// aligned4 reports whether b's first byte is 4-byte aligned in host memory.
func aligned4(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%4 == 0
}
