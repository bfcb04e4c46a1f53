package memory

import (
	"fmt"
	"unsafe"
)

// SlotSetter creates KVM memory slots; *kvm.VM implements it. Taking an
// interface keeps this package free of KVM, so devices that only need guest
// RAM never link the ioctl layer.
type SlotSetter interface {
	SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host uintptr) error
}

// Slots splits the RAM regions into pieces of at most max bytes (max must be
// a positive multiple of the page size, or 0 for MaxSlotSize), one per KVM
// memory slot.
func (g *Guest) Slots(max uint64) []Region {
	if max == 0 {
		max = MaxSlotSize
	}
	var out []Region
	for _, r := range g.regions {
		for done := uint64(0); done < r.Size; {
			n := min(r.Size-done, max)
			out = append(out, Region{GPA: r.GPA + done, Size: n, Host: r.Host + uintptr(done), Offset: r.Offset + done})
			done += n
		}
	}
	return out
}

// Register gives the guest its RAM: one KVM memory slot per piece returned
// by Slots(MaxSlotSize), numbered from firstSlot. It returns the next free
// slot number so callers can add their own slots after RAM.
func (g *Guest) Register(vm SlotSetter, firstSlot uint32) (uint32, error) {
	slot := firstSlot
	for _, r := range g.Slots(MaxSlotSize) {
		if err := vm.SetUserMemoryRegion(slot, 0, r.GPA, r.Size, r.Host); err != nil {
			return slot, fmt.Errorf("memory: register slot %d (guest %#x+%#x): %w", slot, r.GPA, r.Size, err)
		}
		slot++
	}
	return slot, nil
}

// hostAddr is the process address of mem[off].
func hostAddr(mem []byte, off uint64) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(mem))) + uintptr(off)
}
