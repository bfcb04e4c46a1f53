// Package bus routes the guest's port I/O and MMIO accesses to the device that
// owns the address, so that devices never see KVM and the run loop never sees
// device internals.
package bus

import (
	"fmt"
	"sort"
	"sync"
)

// Device is anything that answers guest accesses in an address range.
// Offsets are relative to the start of the range the device was inserted at;
// len(data) is the access width (1, 2, 4 or 8 bytes, or larger for MMIO
// string operations). A device must tolerate any offset and width inside its
// range: the guest chooses them.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type entry struct {
	base, size uint64
	dev        Device
}

// Bus is a set of non-overlapping address ranges, each owned by one Device.
// It is safe for concurrent use by several vCPUs; devices do their own
// locking.
type Bus struct {
	mu      sync.RWMutex
	entries []entry // sorted by base

	// Miss, if set, is told of every access no device claimed (a debugging
	// aid: a guest probing for absent hardware is normal and not an error).
	Miss func(addr uint64, write bool, data []byte)
}

// Insert gives dev the range [base, base+size).
func (b *Bus) Insert(dev Device, base, size uint64) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus: bad range %#x+%#x", base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base >= base })
	if i > 0 {
		if p := b.entries[i-1]; p.base+p.size > base {
			return fmt.Errorf("bus: range %#x+%#x overlaps %#x+%#x", base, size, p.base, p.size)
		}
	}
	if i < len(b.entries) && base+size > b.entries[i].base {
		n := b.entries[i]
		return fmt.Errorf("bus: range %#x+%#x overlaps %#x+%#x", base, size, n.base, n.size)
	}
	b.entries = append(b.entries, entry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = entry{base: base, size: size, dev: dev}
	return nil
}

// Remove takes back the range that starts at base.
func (b *Bus) Remove(base uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			return
		}
	}
}

func (b *Bus) find(addr uint64, n int) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base > addr }) - 1
	if i < 0 {
		return nil, 0, false
	}
	e := b.entries[i]
	off := addr - e.base
	if off >= e.size || uint64(n) > e.size-off {
		return nil, 0, false
	}
	return e.dev, off, true
}

// Read dispatches a guest read. It reports false, leaving data untouched,
// when no device owns the whole access; the caller decides what an
// unclaimed read returns (all ones on x86).
func (b *Bus) Read(addr uint64, data []byte) bool {
	d, off, ok := b.find(addr, len(data))
	if ok {
		d.Read(off, data)
	} else if b.Miss != nil {
		b.Miss(addr, false, data)
	}
	return ok
}

// Write dispatches a guest write and reports whether a device took it.
func (b *Bus) Write(addr uint64, data []byte) bool {
	d, off, ok := b.find(addr, len(data))
	if ok {
		d.Write(off, data)
	} else if b.Miss != nil {
		b.Miss(addr, true, data)
	}
	return ok
}
