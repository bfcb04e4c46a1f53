// Package memory owns guest RAM: one shared memfd mapped into the VMM, laid
// out around the 32-bit MMIO hole, and the single bounds-checked accessor
// through which devices read and write it.
package memory

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

// PageSize selects the pages backing guest RAM.
type PageSize uint64

// Page sizes for Options.HugePages. The zero value means normal 4 KiB pages.
const (
	Huge2M PageSize = 2 << 20
	Huge1G PageSize = 1 << 30
)

// smallPage is the host's normal page size on x86-64; KVM memslots are
// built from these.
const smallPage = 4 << 10

// MaxSlotSize is the largest KVM memory slot Register creates. KVM refuses
// slots of 2^31 pages or more (KVM_MEM_MAX_NR_PAGES); 4 TiB stays below that
// and is a multiple of every huge page size, so split slots stay aligned.
const MaxSlotSize = 1 << 42

// ErrBounds is wrapped by every error about a guest-physical range that is
// not entirely inside one RAM range.
var ErrBounds = errors.New("not guest RAM")

// Options configures New. The zero value is normal 4 KiB pages.
type Options struct {
	// HugePages backs RAM with hugetlbfs pages of this size (Huge2M or
	// Huge1G) so the guest's TLB reach grows and the memory cannot be
	// swapped. The host must have enough free huge pages reserved.
	HugePages PageSize
	// Nodes, when given, splits guest RAM into NUMA nodes, in order: the
	// first Nodes[0].Size bytes of the memfd are the first node's, and
	// so on; their sizes add up to the RAM's and are multiples of the
	// page size. Each node's pages are allocated on its host node when
	// it names one.
	Nodes []Node
}

// Node is one NUMA node's share of guest RAM.
type Node struct {
	Size uint64
	// HostNode is the host NUMA node its pages must come from (mbind
	// MPOL_BIND before any is touched); -1: wherever the kernel likes.
	HostNode int
}

// maxHostNodes bounds a host node number: the kernel's own limit
// (CONFIG_NODES_SHIFT of 10 on x86-64).
const maxHostNodes = 1024

// Region is one contiguous piece of guest RAM.
type Region struct {
	GPA    uint64  // guest-physical address of the first byte
	Size   uint64  // bytes
	Host   uintptr // address of the first byte in this process
	Offset uint64  // offset of the first byte in the memfd (for vhost-user)
}

// Guest is the guest's RAM. Its methods are safe for concurrent use, except
// Close, which must not race with anything else.
type Guest struct {
	fd      int
	mem     []byte
	size    uint64
	regions []Region
}

// New creates size bytes of guest RAM in a memfd and maps it shared, so the
// same pages can later be handed to another process (a vhost-user backend)
// by passing Fd. size must be a non-zero multiple of the page size.
func New(size uint64, opts Options) (*Guest, error) {
	page := uint64(smallPage)
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	switch opts.HugePages {
	case 0:
	case Huge2M:
		page, flags = uint64(Huge2M), flags|unix.MFD_HUGETLB|unix.MFD_HUGE_2MB
	case Huge1G:
		page, flags = uint64(Huge1G), flags|unix.MFD_HUGETLB|unix.MFD_HUGE_1GB
	default:
		return nil, fmt.Errorf("memory: unsupported huge page size %#x (want 2 MiB or 1 GiB)", uint64(opts.HugePages))
	}
	if size == 0 || size%page != 0 {
		return nil, fmt.Errorf("memory: size %#x is not a non-zero multiple of the %d KiB page size", size, page>>10)
	}
	if size > 1<<46 {
		// Far beyond any host we run on; also keeps every sum below
		// overflow-free and the length representable as an int.
		return nil, fmt.Errorf("memory: size %#x is too large", size)
	}
	fd, err := unix.MemfdCreate("hyperroot-guest-ram", flags)
	if err != nil {
		if opts.HugePages != 0 {
			return nil, fmt.Errorf("memory: memfd_create with %d MiB huge pages (is hugetlbfs supported by this kernel?): %w", page>>20, err)
		}
		return nil, fmt.Errorf("memory: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memory: size memfd to %#x bytes: %w", size, err)
	}
	// Sealed at its size: a process the memfd is handed to (a vhost-user
	// backend) maps it trusting its size, and a shrink would turn its
	// accesses into SIGBUS. Nobody, this process included, can resize it
	// now, nor unseal it.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memory: seal memfd: %w", err)
	}
	// MAP_SHARED: the memfd, not this mapping, is the guest's RAM, so a
	// second mapping (vhost-user backend) sees the same bytes. For
	// hugetlbfs, mmap reserves the pages now, so a host without enough
	// huge pages fails here rather than with SIGBUS when the guest runs.
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		if opts.HugePages != 0 {
			return nil, fmt.Errorf("memory: map %d MiB of %d MiB huge pages: not enough free huge pages on the host "+
				"(see HugePages_Free in /proc/meminfo; reserve them with /sys/kernel/mm/hugepages/hugepages-%dkB/nr_hugepages): %w",
				size>>20, page>>20, page>>10, err)
		}
		return nil, fmt.Errorf("memory: map %#x bytes of guest RAM: %w", size, err)
	}
	if err := bindNodes(mem, size, page, opts.Nodes); err != nil {
		unix.Munmap(mem)
		unix.Close(fd)
		return nil, err
	}
	if opts.HugePages == 0 {
		// Transparent huge pages for guest RAM where the host allows them
		// for shmem (shmem_enabled advise, as PID 1 sets it): each first
		// touch of a guest page is a nested page fault into KVM, and 2 MiB
		// pages make 512 times fewer of them (the test guest started in
		// 0.60 of the time with 2 MiB pages under the TCG test bed). A
		// host that refuses (no THP) leaves 4 KiB pages: not an error.
		unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
	if opts.HugePages != 0 {
		// Huge pages are taken from the pool now, all of them, so that
		// the pool's count says what this guest holds and a pool
		// emptied by another process meanwhile fails the start here.
		if err := unix.Madvise(mem, unix.MADV_POPULATE_WRITE); err != nil {
			unix.Munmap(mem)
			unix.Close(fd)
			return nil, fmt.Errorf("memory: take %d MiB of %d MiB huge pages from the host's pool: %w", size>>20, page>>20, err)
		}
	}
	g := &Guest{fd: fd, mem: mem, size: size}
	var off uint64
	for _, r := range layout.RAMRanges(size) {
		n := r[1] - r[0]
		g.regions = append(g.regions, Region{GPA: r[0], Size: n, Host: hostAddr(mem, off), Offset: off})
		off += n
	}
	return g, nil
}

// bindNodes binds each node's part of mem (a mapping of size bytes, in
// pages of page bytes) to its host node, before anything touches it: the
// memfd's shared policy then places every page where its node says,
// whichever thread faults it in (a vCPU, or a vhost-user backend's
// mapping).
func bindNodes(mem []byte, size, page uint64, nodes []Node) error {
	if len(nodes) == 0 {
		return nil
	}
	var off uint64
	for i, n := range nodes {
		if n.Size == 0 || n.Size%page != 0 {
			return fmt.Errorf("memory: NUMA node %d: %#x bytes is not a non-zero multiple of the %d KiB page size", i, n.Size, page>>10)
		}
		if n.Size > size-off {
			return fmt.Errorf("memory: NUMA nodes hold more than the guest's %#x bytes of RAM", size)
		}
		if n.HostNode >= maxHostNodes {
			return fmt.Errorf("memory: NUMA node %d: host node %d (the kernel has at most %d)", i, n.HostNode, maxHostNodes)
		}
		if n.HostNode >= 0 {
			if err := mbind(mem[off:off+n.Size], n.HostNode); err != nil {
				return fmt.Errorf("memory: bind NUMA node %d's %d MiB to host node %d: %w", i, n.Size>>20, n.HostNode, err)
			}
		}
		off += n.Size
	}
	if off != size {
		return fmt.Errorf("memory: NUMA nodes hold %#x bytes of the guest's %#x", off, size)
	}
	return nil
}

// mbind sets the policy of the pages of b to come from host node only.
func mbind(b []byte, node int) error {
	const mpolBind = 2
	var mask [maxHostNodes / 64]uint64
	mask[node/64] |= 1 << (node % 64)
	// maxnode counts one more bit than the mask holds: the kernel has
	// always read one fewer than it is given.
	_, _, e := unix.Syscall6(unix.SYS_MBIND, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), mpolBind,
		uintptr(unsafe.Pointer(&mask[0])), uintptr(len(mask)*64+1), 0)
	if e != 0 {
		return e
	}
	return nil
}

// NodeRanges are the guest-physical ranges ([start, end)) of each node's
// RAM in a guest of size bytes (nodes as in Options.Nodes, assumed to add
// up to size): a node whose share of the memfd spans the hole below 4 GiB
// has a range on each side of it.
func NodeRanges(size uint64, nodes []Node) [][][2]uint64 {
	out := make([][][2]uint64, len(nodes))
	ram := layout.RAMRanges(size)
	var off, base uint64 // node's first memfd byte; memfd offset of ram[0]
	for i, n := range nodes {
		lo, hi := off, off+n.Size
		base = 0
		for _, r := range ram {
			rlo, rhi := base, base+(r[1]-r[0])
			if a, b := max(lo, rlo), min(hi, rhi); a < b {
				out[i] = append(out[i], [2]uint64{r[0] + a - rlo, r[0] + b - rlo})
			}
			base = rhi
		}
		off = hi
	}
	return out
}

// Fd is the memfd holding guest RAM. It stays owned by the Guest.
func (g *Guest) Fd() int { return g.fd }

// Size is the amount of guest RAM in bytes.
func (g *Guest) Size() uint64 { return g.size }

// Regions lists the RAM ranges in ascending guest-physical order.
func (g *Guest) Regions() []Region { return append([]Region(nil), g.regions...) }

// Close unmaps guest RAM and closes the memfd. Views returned by Slice must
// not be used afterwards.
func (g *Guest) Close() error {
	if g.mem == nil {
		return nil
	}
	err := unix.Munmap(g.mem)
	g.mem, g.regions = nil, nil
	if cerr := unix.Close(g.fd); err == nil {
		err = cerr
	}
	g.fd = -1
	if err != nil {
		return fmt.Errorf("memory: close: %w", err)
	}
	return nil
}

// Slice returns the n bytes of guest RAM at gpa as a view into the mapping
// (writes through it reach the guest). It fails unless [gpa, gpa+n) is
// non-empty and lies entirely inside one RAM range: an access that touches
// the MMIO hole or runs past the end is the guest lying about an address.
// The view's capacity is clipped to n so append cannot reach beyond it.
func (g *Guest) Slice(gpa, n uint64) ([]byte, error) {
	for i := range g.regions {
		r := &g.regions[i]
		if gpa < r.GPA || gpa-r.GPA >= r.Size {
			continue
		}
		off := gpa - r.GPA
		// n > r.Size-off, written without computing gpa+n, which may wrap.
		if n == 0 || n > r.Size-off {
			break
		}
		o := r.Offset + off
		return g.mem[o : o+n : o+n], nil
	}
	return nil, fmt.Errorf("memory: guest range %#x+%#x: %w", gpa, n, ErrBounds)
}

// MainRange returns guest RAM's largest region as one view (it implements
// virtio.MainRange, for queues to check buffers inside it inline): all of
// a guest's RAM when it fits below the PCI hole.
func (g *Guest) MainRange() (gpa uint64, ram []byte) {
	if len(g.regions) == 0 {
		return 0, nil
	}
	r := slices.MaxFunc(g.regions, func(a, b Region) int { return cmp.Compare(a.Size, b.Size) })
	return r.GPA, g.mem[r.Offset : r.Offset+r.Size : r.Offset+r.Size]
}

// ReadAt copies len(p) bytes of guest RAM at gpa into p. Reading nothing
// always succeeds.
func (g *Guest) ReadAt(p []byte, gpa uint64) error {
	if len(p) == 0 {
		return nil
	}
	s, err := g.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest RAM at gpa. Writing nothing always succeeds.
func (g *Guest) WriteAt(p []byte, gpa uint64) error {
	if len(p) == 0 {
		return nil
	}
	s, err := g.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Uint16 reads a little-endian uint16 at gpa.
func (g *Guest) Uint16(gpa uint64) (uint16, error) {
	s, err := g.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian uint32 at gpa.
func (g *Guest) Uint32(gpa uint64) (uint32, error) {
	s, err := g.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian uint64 at gpa.
func (g *Guest) Uint64(gpa uint64) (uint64, error) {
	s, err := g.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes v little-endian at gpa.
func (g *Guest) PutUint16(gpa uint64, v uint16) error {
	s, err := g.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// PutUint32 writes v little-endian at gpa.
func (g *Guest) PutUint32(gpa uint64, v uint32) error {
	s, err := g.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// PutUint64 writes v little-endian at gpa.
func (g *Guest) PutUint64(gpa uint64, v uint64) error {
	s, err := g.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}
