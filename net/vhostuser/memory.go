package vhostuser

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/internal/peerfd"
)

// ErrAddress is wrapped by errors about addresses that lie outside guest RAM.
var ErrAddress = errors.New("vhost-user: address outside guest memory")

// Memory is the frontend's guest RAM as the backend maps it from a
// SET_MEM_TABLE: up to MaxRegions shared mappings of the frontend's memory
// files. It implements virtio.Memory for the backend's virtqueues, and
// translates the frontend's virtual addresses, in which SET_VRING_ADDR
// gives the rings, to guest-physical ones.
//
// A Memory is read-only after Map, so any number of queue workers may use
// it at once; Close must wait until none does (the backend stops every ring
// first).
type Memory struct {
	regions []mapping // sorted by GuestAddr
}

type mapping struct {
	Region
	data []byte // the region: len(data) == Size
	mmap []byte // what to munmap (data plus the page-alignment head)
}

// Map validates regions and maps each one MAP_SHARED from its descriptor.
// It checks what a hostile frontend controls: 1 to MaxRegions regions, no
// empty region, no address arithmetic that wraps, no two regions
// overlapping in guest-physical or in frontend-virtual space, guest
// addresses and sizes on 4-byte boundaries (virtio.Memory's contract), and
// each region inside its file: a region beyond the end of its file would
// map, but touching it would raise SIGBUS and kill the process (every
// port of the switch with it). So only memfds sealed against shrinking
// (F_SEAL_SHRINK, see net/internal/peerfd) of sufficient size are
// accepted: a file that could be truncated after the check would bring
// the SIGBUS back. hyperroot's VMM (vmm/memory) and QEMU's
// memory-backend-memfd (its "seal" property defaults to on: GROW, SHRINK
// and SEAL) pass such memfds; file-backed memory (memory-backend-file,
// hugetlbfs paths) is refused.
//
// Map does not take ownership of the descriptors: the mappings hold their
// own references, and the caller closes the descriptors when it likes.
func Map(regions []Region) (*Memory, error) {
	if len(regions) == 0 || len(regions) > MaxRegions {
		return nil, fmt.Errorf("vhost-user: memory table with %d regions (want 1 to %d)", len(regions), MaxRegions)
	}
	if err := checkRegions(regions); err != nil {
		return nil, err
	}
	m := &Memory{regions: make([]mapping, 0, len(regions))}
	for _, r := range regions {
		mp, err := mapRegion(r)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.regions = append(m.regions, mp)
	}
	slices.SortFunc(m.regions, func(a, b mapping) int {
		if a.GuestAddr < b.GuestAddr {
			return -1
		}
		return 1
	})
	return m, nil
}

func checkRegions(regions []Region) error {
	for i, r := range regions {
		switch {
		case r.Size == 0:
			return fmt.Errorf("vhost-user: region %d is empty", i)
		case r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr || r.Offset+r.Size < r.Offset:
			return fmt.Errorf("vhost-user: region %d (guest %#x, user %#x, offset %#x, size %#x) wraps around",
				i, r.GuestAddr, r.UserAddr, r.Offset, r.Size)
		case r.GuestAddr%4 != 0 || r.Size%4 != 0:
			return fmt.Errorf("vhost-user: region %d (guest %#x, size %#x) is not 4-byte aligned", i, r.GuestAddr, r.Size)
		case uint64(int(r.Size)) != r.Size || r.Size > 1<<46:
			return fmt.Errorf("vhost-user: region %d of %#x bytes is too large", i, r.Size)
		}
		for j := range i {
			o := regions[j]
			if overlap(r.GuestAddr, o.GuestAddr, r.Size, o.Size) {
				return fmt.Errorf("vhost-user: regions %d and %d overlap in guest memory (%#x+%#x, %#x+%#x)",
					j, i, o.GuestAddr, o.Size, r.GuestAddr, r.Size)
			}
			if overlap(r.UserAddr, o.UserAddr, r.Size, o.Size) {
				return fmt.Errorf("vhost-user: regions %d and %d overlap in frontend addresses (%#x+%#x, %#x+%#x)",
					j, i, o.UserAddr, o.Size, r.UserAddr, r.Size)
			}
		}
	}
	return nil
}

// overlap reports whether [a, a+an) and [b, b+bn) intersect; neither wraps.
func overlap(a, b, an, bn uint64) bool { return a < b+bn && b < a+an }

func mapRegion(r Region) (mapping, error) {
	size, err := peerfd.SealedMemory(r.Fd)
	if err != nil {
		return mapping{}, fmt.Errorf("vhost-user: region at guest %#x: %w", r.GuestAddr, err)
	}
	if size < 0 || r.Offset+r.Size > uint64(size) {
		return mapping{}, fmt.Errorf("vhost-user: region at guest %#x: offset %#x + size %#x exceeds the file's %d bytes",
			r.GuestAddr, r.Offset, r.Size, size)
	}
	// mmap's offset must be page aligned; map from the page holding
	// Offset and skip the head.
	page := uint64(unix.Getpagesize())
	head := r.Offset % page
	b, err := unix.Mmap(r.Fd, int64(r.Offset-head), int(head+r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return mapping{}, fmt.Errorf("vhost-user: map region at guest %#x (%#x bytes): %w", r.GuestAddr, r.Size, err)
	}
	// Guest RAM in transparent huge pages where the host allows them,
	// as the VMM asks for its own mapping (vmm/memory): a page the switch
	// touches first (a receive buffer the guest never wrote) would
	// otherwise be a 4 KiB page in the memfd for good, and the VMM's
	// mapping of it too. A host that refuses leaves 4 KiB pages.
	unix.Madvise(b, unix.MADV_HUGEPAGE)
	data := b[head : head+r.Size : head+r.Size]
	// The queue reaches ring indices through aligned 32-bit words, so the
	// host address must agree with the guest address modulo 4.
	if uint64(uintptr(unsafe.Pointer(&data[0])))%4 != r.GuestAddr%4 {
		unix.Munmap(b)
		return mapping{}, fmt.Errorf("vhost-user: region at guest %#x: file offset %#x is misaligned", r.GuestAddr, r.Offset)
	}
	reg := r
	reg.Fd = -1
	return mapping{Region: reg, data: data, mmap: b}, nil
}

// Slice returns the n bytes of guest RAM at guest-physical gpa, a view into
// the shared mapping. The range must be non-empty and lie inside one region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa < r.GuestAddr || gpa-r.GuestAddr >= r.Size {
			continue
		}
		off := gpa - r.GuestAddr
		if n == 0 || n > r.Size-off {
			break
		}
		return r.data[off : off+n : off+n], nil
	}
	return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrAddress, gpa, n)
}

// MainRange returns the largest region as one view (it implements
// virtio.MainRange, for queues to check buffers inside it inline).
func (m *Memory) MainRange() (gpa uint64, ram []byte) {
	if len(m.regions) == 0 {
		return 0, nil
	}
	r := slices.MaxFunc(m.regions, func(a, b mapping) int { return cmp.Compare(a.Size, b.Size) })
	return r.GuestAddr, r.data
}

// Translate turns an address in the frontend's virtual address space into
// the guest-physical address of the same byte.
func (m *Memory) Translate(userAddr uint64) (uint64, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if userAddr >= r.UserAddr && userAddr-r.UserAddr < r.Size {
			return r.GuestAddr + (userAddr - r.UserAddr), nil
		}
	}
	return 0, fmt.Errorf("%w: frontend address %#x is in no region", ErrAddress, userAddr)
}

// Regions returns the table the memory was mapped from (without descriptors),
// in guest address order.
func (m *Memory) Regions() []Region {
	out := make([]Region, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.Region
	}
	return out
}

// Close unmaps every region. Nothing may use views from Slice afterwards.
func (m *Memory) Close() error {
	var errs []error
	for _, r := range m.regions {
		if err := unix.Munmap(r.mmap); err != nil {
			errs = append(errs, fmt.Errorf("vhost-user: unmap region at guest %#x: %w", r.GuestAddr, err))
		}
	}
	m.regions = nil
	return errors.Join(errs...)
}
