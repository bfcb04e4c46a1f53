package vfio

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mapping a BAR into the guest: the pages of a BAR the guest may reach
// without a trip through the VMM are those VFIO lets this process mmap,
// less the pages that hold the MSI-X table and PBA, which the VMM emulates
// (pci.MSIX) and so must keep trapping. What is left becomes KVM memory
// slots at the BAR's guest address (PCI.MoveBAR): a doorbell write then
// goes to the device without an exit.

// Span is [Off, Off+Size) of a region.
type Span struct{ Off, Size uint64 }

func (s Span) end() uint64 { return s.Off + s.Size }

// Region info capabilities (linux/vfio.h).
const (
	capSparseMMAP   = 1 // VFIO_REGION_INFO_CAP_SPARSE_MMAP
	capMSIXMappable = 3 // VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
	capHeaderLen    = 8 // struct vfio_info_cap_header
	maxCaps         = 32
	maxSparseAreas  = 256
)

var errCapChain = errors.New("vfio: malformed region capability chain")

// regionCaps walks the capability chain of a VFIO_DEVICE_GET_REGION_INFO
// answer: info is the whole buffer the kernel filled, first its
// cap_offset. It returns the areas a sparse-mmap capability lists (sparse
// says there was one: without it the whole region may be mapped) and
// whether the kernel lets the MSI-X table be mapped. The kernel wrote the
// buffer, but it is still read with every offset checked: a chain that
// points outside it, backwards or around in a loop is an error, never a
// panic or a hang.
func regionCaps(info []byte, first uint32) (areas []Span, sparse, msixMappable bool, err error) {
	le := binary.LittleEndian
	off := uint64(first)
	for n := 0; off != 0; n++ {
		if n == maxCaps || off+capHeaderLen > uint64(len(info)) {
			return nil, false, false, errCapChain
		}
		id, next := le.Uint16(info[off:]), uint64(le.Uint32(info[off+4:]))
		switch id {
		case capSparseMMAP:
			if off+16 > uint64(len(info)) {
				return nil, false, false, errCapChain
			}
			nr := uint64(le.Uint32(info[off+8:]))
			if nr > maxSparseAreas || off+16+nr*16 > uint64(len(info)) {
				return nil, false, false, errCapChain
			}
			sparse = true
			for i := range nr {
				a := info[off+16+16*i:]
				areas = append(areas, Span{Off: le.Uint64(a), Size: le.Uint64(a[8:])})
			}
		case capMSIXMappable:
			msixMappable = true
		}
		if next != 0 && next <= off {
			return nil, false, false, errCapChain
		}
		off = next
	}
	return areas, sparse, msixMappable, nil
}

// directSpans are the parts of a BAR of size bytes that the guest may
// reach directly: within areas (what may be mmapped), outside trapped
// (what the VMM emulates), in whole pages (KVM maps pages; a page that
// holds any trapped byte stays trapped whole). Sorted, not overlapping.
func directSpans(size uint64, areas, trapped []Span, page uint64) []Span {
	down := func(x uint64) uint64 { return x &^ (page - 1) }
	up := func(x uint64) uint64 {
		if x > ^uint64(0)-(page-1) {
			return down(^uint64(0))
		}
		return down(x + page - 1)
	}
	var out []Span
	for _, a := range areas {
		if a.Off >= size || a.Size == 0 {
			continue
		}
		lo, hi := up(a.Off), down(min(size, satAdd(a.Off, a.Size)))
		if hi <= lo {
			continue
		}
		pieces := []Span{{lo, hi - lo}}
		for _, t := range trapped {
			if t.Size == 0 {
				continue
			}
			tlo, thi := down(t.Off), up(satAdd(t.Off, t.Size))
			var next []Span
			for _, p := range pieces {
				if thi <= p.Off || tlo >= p.end() {
					next = append(next, p)
					continue
				}
				if tlo > p.Off {
					next = append(next, Span{p.Off, tlo - p.Off})
				}
				if thi < p.end() {
					next = append(next, Span{thi, p.end() - thi})
				}
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	slices.SortFunc(out, func(a, b Span) int { return cmp.Compare(a.Off, b.Off) })
	// Areas may overlap: merge.
	var merged []Span
	for _, s := range out {
		if n := len(merged); n > 0 && s.Off <= merged[n-1].end() {
			if e := s.end(); e > merged[n-1].end() {
				merged[n-1].Size = e - merged[n-1].Off
			}
			continue
		}
		merged = append(merged, s)
	}
	return merged
}

// satAdd is a+b, or the largest uint64 if that overflows.
func satAdd(a, b uint64) uint64 {
	if a > ^uint64(0)-b {
		return ^uint64(0)
	}
	return a + b
}

// Region info flags and the most a capability chain may take.
const (
	regionMmap    = 1 << 2 // VFIO_REGION_INFO_FLAG_MMAP
	regionHasCaps = 1 << 3 // VFIO_REGION_INFO_FLAG_CAPS
	maxInfoBytes  = 64 << 10
)

// Mappable returns the areas of region i this process may mmap: none when
// VFIO maps none of it, the areas of its sparse-mmap capability when it
// has one, else the whole region.
func (d *Device) Mappable(i int) ([]Span, error) {
	r := d.Region(i)
	if r.Size == 0 || i >= configRegion {
		return nil, nil
	}
	le := binary.LittleEndian
	size := uint32(unsafe.Sizeof(regionInfo{}))
	for {
		buf := make([]byte, size)
		le.PutUint32(buf[0:], size)
		le.PutUint32(buf[8:], uint32(i))
		if _, err := ioctl(d.fd, ioDeviceRegionInfo, unsafe.Pointer(&buf[0])); err != nil {
			return nil, fmt.Errorf("vfio: %s: region %d info: %w", d.Addr, i, err)
		}
		flags, want := le.Uint32(buf[4:]), le.Uint32(buf[0:])
		if flags&regionMmap == 0 {
			return nil, nil
		}
		if flags&regionHasCaps != 0 && want > size {
			if want > maxInfoBytes {
				return nil, fmt.Errorf("vfio: %s: region %d info wants %d bytes", d.Addr, i, want)
			}
			size = want // ask again with room for the capability chain
			continue
		}
		if flags&regionHasCaps != 0 {
			areas, sparse, _, err := regionCaps(buf, le.Uint32(buf[12:]))
			if err != nil {
				return nil, fmt.Errorf("vfio: %s: region %d: %w", d.Addr, i, err)
			}
			if sparse {
				return areas, nil
			}
		}
		return []Span{{0, r.Size}}, nil
	}
}

// Map maps s of region i (page-aligned, within what Mappable said) into
// this process, shared with the device: loads and stores there reach its
// registers. Unmap with unix.Munmap.
func (d *Device) Map(i int, s Span) ([]byte, error) {
	r := d.Region(i)
	page := uint64(unix.Getpagesize())
	if i >= configRegion || s.Size == 0 || s.Off%page != 0 || s.Size%page != 0 || s.Off > r.Size || s.Size > r.Size-s.Off {
		return nil, fmt.Errorf("vfio: %s: map %#x bytes at %#x of region %d (%#x bytes)", d.Addr, s.Size, s.Off, i, r.Size)
	}
	prot := 0
	if r.Readable {
		prot |= unix.PROT_READ
	}
	if r.Writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(d.fd, int64(r.Offset+s.Off), int(s.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("vfio: %s: map %#x bytes at %#x of region %d: %w", d.Addr, s.Size, s.Off, i, err)
	}
	return b, nil
}
