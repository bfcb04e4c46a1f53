package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Table entry bits.
const (
	entryCopied     = 1 << 63 // refcount is exactly 1: writable in place
	entryCompressed = 1 << 62
	entryZero       = 1 << 0                      // v3: the cluster reads as zeros
	offsetMask      = 0x00fffffffffffe00          // bits 9-55: a cluster's host offset
	l1Reserved      = ^uint64(0x80fffffffffffe00) // bits an L1 entry must not set
	l2Reserved      = 0x3f000000000001fe          // bits a standard L2 entry must not set
)

// Backing is what an image reads where it has no cluster of its own: a
// raw file (RawBacking) or another image.
type Backing interface {
	// ReadAt fills p from off; past the end of the backing disk it reads
	// zeros.
	ReadAt(p []byte, off int64) (int, error)
	Size() int64
}

// Options configures Open.
type Options struct {
	ReadOnly bool
	// Backing opens the image's backing file, given its name and format
	// as the header says ("" when the header does not name one). The
	// jailed VMM cannot open paths: its caller hands over descriptors
	// the supervisor opened, and Backing returns the next of them.
	Backing func(name, format string) (Backing, error)
	// L2CacheBytes bounds the L2 tables kept in memory; default 32 MiB
	// (enough to map 256 GiB with 64 KiB clusters).
	L2CacheBytes int64
}

// Image is an open qcow2 image. Its methods are safe for concurrent use:
// reads run in parallel, writes that change the image's tables are
// serialised.
type Image struct {
	f       *os.File
	fd      int
	h       *Header
	ro      bool
	backing Backing
	cs      int64  // cluster size
	bits    uint32 // cluster bits

	wmu sync.Mutex // serialises everything that changes tables or allocates
	// scratch is a cluster-sized buffer for copy-on-write; wmu guards it.
	scratch []byte
	zeros   []byte // a cluster of zeros; wmu guards it

	mu       sync.Mutex // guards the fields below
	l1       []uint64
	l2       map[int64][]uint64 // L2 tables by host offset
	l2Max    int
	refTable []uint64
	end      int64 // where the next cluster is allocated
	// Reclaimed is how many leaked clusters a writable Open gave back
	// (reclaimTail).
	Reclaimed int
	// The last decompressed cluster, for sequential reads of one.
	zHost int64
	zData []byte
}

// Open reads f's header and tables. The image is read-only if o.ReadOnly
// is set or f was opened read-only.
func Open(f *os.File, o Options) (*Image, error) {
	im := &Image{f: f, fd: int(f.Fd()), ro: o.ReadOnly, zHost: -1}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	if fl&unix.O_ACCMODE == unix.O_RDONLY {
		im.ro = true
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	first := make([]byte, min(st.Size(), 1<<maxClusterBits))
	if _, err := readFull(im.fd, first, 0); err != nil {
		return nil, fmt.Errorf("qcow2: reading the header: %w", err)
	}
	h, err := ParseHeader(first)
	if err != nil {
		return nil, err
	}
	im.h, im.cs, im.bits = h, h.ClusterSize(), h.ClusterBits
	if !im.ro {
		switch {
		case h.Incompatible&IncompatCorrupt != 0:
			return nil, errors.New("qcow2: image is marked corrupt; repair it with qemu-img check -r all, or open it read-only")
		case h.Incompatible&IncompatDirty != 0:
			return nil, errors.New("qcow2: image is dirty (lazy refcounts left stale); repair it with qemu-img check -r all")
		case h.NbSnapshots != 0:
			return nil, fmt.Errorf("qcow2: image has %d internal snapshots; writing it is not supported (open it read-only or qemu-img snapshot -d them)", h.NbSnapshots)
		}
	}
	size := st.Size()
	im.end = (size + im.cs - 1) &^ (im.cs - 1)
	if im.l1, err = im.readTable(h.L1TableOffset, int64(h.L1Size), size, "L1 table"); err != nil {
		return nil, err
	}
	if im.refTable, err = im.readTable(h.RefTableOffset, int64(h.RefTableClusters)*im.cs/8, size, "refcount table"); err != nil {
		return nil, err
	}
	cache := o.L2CacheBytes
	if cache <= 0 {
		cache = 32 << 20
	}
	im.l2Max = int(max(cache/im.cs, 4))
	im.l2 = make(map[int64][]uint64, min(im.l2Max, len(im.l1)))
	// Every cluster the tables point to is visited once: a table past the
	// end of the file, or for a read-only image any cluster there, is an
	// image cut short (a copy or download that stopped), refused here
	// rather than read as zeros. A writable image may hold data clusters
	// past its end: a writer that crashed before the file system made
	// their data durable, on a cluster the guest was never told was
	// flushed; they read as zeros.
	ref, err := im.findEnd(size)
	if err != nil {
		return nil, err
	}
	if !im.ro {
		// Allocation appends: past the file, and past every cluster the
		// tables point to, so nothing is handed out twice.
		// Not with autoclear features (QEMU's bitmaps): their tables'
		// clusters are counted but not among those findEnd follows.
		if h.Autoclear == 0 {
			if im.Reclaimed, err = im.reclaimTail(ref); err != nil {
				return nil, fmt.Errorf("qcow2: giving back leaked clusters: %w", err)
			}
		}
	}
	if h.BackingFile != "" {
		if o.Backing == nil {
			return nil, fmt.Errorf("qcow2: image has backing file %q but none was given", h.BackingFile)
		}
		if im.backing, err = o.Backing(h.BackingFile, h.BackingFormat); err != nil {
			return nil, fmt.Errorf("qcow2: backing file %q: %w", h.BackingFile, err)
		}
	}
	if !im.ro && h.Autoclear != 0 {
		// Bits the package does not maintain (bitmaps, raw external
		// data) must be cleared by a writer that does not know them.
		var b [8]byte
		if err := pwriteFull(im.fd, b[:], 88); err != nil {
			return nil, fmt.Errorf("qcow2: clearing autoclear features: %w", err)
		}
		h.Autoclear = 0
	}
	return im, nil
}

// findEnd moves im.end past every cluster the refcount table, the L1
// table and the L2 tables point to, and returns the end of the last
// cluster anything points to (the header, tables and data). It reads
// every L2 table once: about 1/8192 of the allocated disk with 64 KiB
// clusters.
func (im *Image) findEnd(fileSize int64) (int64, error) {
	span := func(off uint64, n int64) int64 { return (int64(off) + n + im.cs - 1) &^ (im.cs - 1) }
	ref := max(im.cs, span(im.h.L1TableOffset, int64(im.h.L1Size)*8), span(im.h.RefTableOffset, int64(im.h.RefTableClusters)*im.cs))
	past := func(off uint64) {
		if c := int64(off&offsetMask) + im.cs; off&offsetMask != 0 && c > ref {
			ref = c
		}
	}
	// cut says whether a data cluster at host offset off (0: none)
	// starts past the end of the file; cutTable whether a table's
	// cluster (written whole, always) does not end within it.
	cut := func(off uint64) bool { return off&offsetMask != 0 && int64(off&offsetMask) >= fileSize }
	cutTable := func(off uint64) bool { return off&offsetMask != 0 && int64(off&offsetMask)+im.cs > fileSize }
	truncated := func(what string, off uint64) error {
		return fmt.Errorf("qcow2: image truncated: %s at %#x does not lie within the file (%d bytes): was it copied or downloaded whole?", what, off&offsetMask, fileSize)
	}
	for _, e := range im.refTable {
		if cutTable(e) {
			return 0, truncated("a refcount block", e)
		}
		past(e)
	}
	// Only the L1 entries that map the disk are followed, each distinct
	// table once: a crafted L1 table pointing thousands of entries at a
	// few tables must not make Open walk them thousands of times.
	need := (int64(im.h.Size) + im.cs*im.h.l2Entries() - 1) / (im.cs * im.h.l2Entries())
	seen := map[uint64]bool{}
	for i, e := range im.l1 {
		if e&offsetMask == 0 {
			continue
		}
		if cutTable(e) {
			return 0, truncated("an L2 table", e)
		}
		past(e)
		if int64(i) >= need || seen[e&offsetMask] {
			continue
		}
		seen[e&offsetMask] = true
		t, _, err := im.table(int64(i) * im.h.l2Entries() << im.bits)
		if err != nil {
			return 0, err
		}
		for _, e := range t {
			if e&entryCompressed != 0 {
				start, stop := im.compressedSpan(e)
				if im.ro && start >= fileSize && start < maxHostOffset {
					return 0, truncated("a compressed cluster", uint64(start))
				}
				if c := (stop + im.cs - 1) &^ (im.cs - 1); c > ref && start < maxHostOffset {
					ref = c
				}
				continue
			}
			if im.ro && cut(e) {
				return 0, truncated("a data cluster", e)
			}
			past(e)
		}
	}
	im.end = max(im.end, ref)
	return ref, nil
}

// reclaimTail gives back the clusters past ref, the end of the last
// cluster any table points to, that still have a refcount: what a writer
// killed between counting a new cluster and linking it left behind
// (allocation appends, so such leaks are at the end of the file). Their
// refcounts are zeroed, made durable, and the file is cut at ref. It
// returns how many it gave back.
func (im *Image) reclaimTail(ref int64) (int, error) {
	n := 0
	for c := ref; c < im.end; c += im.cs {
		if _, _, i, _ := im.refSlot(c); i >= int64(len(im.refTable)) {
			break
		}
		rc, err := im.refcount(c)
		if err != nil {
			return n, err
		}
		if rc != 0 {
			if err := im.setRefcount(c, 0); err != nil {
				return n, err
			}
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := unix.Fdatasync(im.fd); err != nil {
		return n, err
	}
	if err := unix.Ftruncate(im.fd, ref); err != nil {
		return n, err
	}
	im.end = ref
	return n, nil
}

// readTable reads n big-endian entries at off, which must lie in the file.
func (im *Image) readTable(off uint64, n, fileSize int64, what string) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	if off > uint64(fileSize) || uint64(n*8) > uint64(fileSize)-off {
		return nil, fmt.Errorf("qcow2: %s (%d bytes at %#x) beyond the end of the file (%d bytes)", what, n*8, off, fileSize)
	}
	raw := make([]byte, n*8)
	if _, err := readFull(im.fd, raw, int64(off)); err != nil {
		return nil, fmt.Errorf("qcow2: reading the %s: %w", what, err)
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	return t, nil
}

// Header returns the image's header.
func (im *Image) Header() *Header { return im.h }

// Size is the virtual disk size.
func (im *Image) Size() int64 { return int64(im.h.Size) }

// ReadOnly says whether writes are refused.
func (im *Image) ReadOnly() bool { return im.ro }

// ClusterSize is the image's cluster size.
func (im *Image) ClusterSize() int64 { return im.cs }

// extent kinds.
type kind uint8

const (
	kUnallocated kind = iota // the backing file's data, or zeros
	kZero                    // zeros
	kData                    // at host in the image file
	kCompressed              // a compressed cluster; host is its L2 entry
)

// extent is a run of the virtual disk of one kind.
type extent struct {
	kind   kind
	copied bool  // kData: every cluster's refcount is 1 (writable in place)
	host   int64 // kData: the host offset of the extent's first byte
	n      int64
	l2e    uint64 // kCompressed: the entry
}

// CorruptError reports a table entry the package refuses to follow.
type CorruptError struct{ What string }

func (e *CorruptError) Error() string { return "qcow2: corrupt image: " + e.What }

// lookup returns the extent at virtual offset off, at most n bytes, not
// crossing an L2 table; im.mu must be held.
func (im *Image) lookup(off, n int64) (extent, error) {
	e, err := im.entry(off)
	if err != nil {
		return extent{}, err
	}
	inCluster := off & (im.cs - 1)
	x := extent{n: min(n, im.cs-inCluster)}
	k, host, err := im.classify(e)
	if err != nil {
		return extent{}, err
	}
	x.kind, x.l2e = k, e
	if k == kData {
		x.host = host + inCluster
		x.copied = e&entryCopied != 0
	}
	if k == kCompressed {
		return x, nil
	}
	// Extend over following clusters of the same kind (host-contiguous
	// data) within the same L2 table: a sequential read of a freshly
	// written image is one host read.
	for x.n < n {
		next := off + x.n
		if next&(im.cs*im.h.l2Entries()-1) == 0 {
			break
		}
		e2, err := im.entry(next)
		if err != nil {
			break
		}
		k2, host2, err := im.classify(e2)
		if err != nil || k2 != k || (k == kData && (host2 != x.host+x.n || x.copied != (e2&entryCopied != 0))) {
			break
		}
		x.n = min(n, x.n+im.cs)
	}
	return x, nil
}

// classify decodes a standard or compressed L2 entry.
func (im *Image) classify(e uint64) (kind, int64, error) {
	if e&entryCompressed != 0 {
		return kCompressed, 0, nil
	}
	if e&l2Reserved != 0 {
		return 0, 0, &CorruptError{fmt.Sprintf("L2 entry %#x sets reserved bits", e)}
	}
	host := int64(e & offsetMask)
	if host&(im.cs-1) != 0 {
		return 0, 0, &CorruptError{fmt.Sprintf("data cluster offset %#x not aligned", host)}
	}
	if e&entryZero != 0 {
		// A zero cluster may keep its host cluster (preallocated):
		// host is then where a write may put its data in place. (A
		// version 2 image has no zero clusters; QEMU reads the bit
		// as one there too.)
		return kZero, host, nil
	}
	if host == 0 {
		return kUnallocated, 0, nil
	}
	return kData, host, nil
}

// entry returns the L2 entry of the cluster holding off (0 where no L2
// table exists); im.mu must be held.
func (im *Image) entry(off int64) (uint64, error) {
	t, _, err := im.table(off)
	if err != nil || t == nil {
		return 0, err
	}
	return t[(off>>im.bits)&(im.h.l2Entries()-1)], nil
}

// table returns the L2 table covering off and its host offset, or nil if
// the L1 entry is empty; im.mu must be held.
func (im *Image) table(off int64) ([]uint64, int64, error) {
	i := off >> im.bits / im.h.l2Entries()
	if i >= int64(len(im.l1)) {
		return nil, 0, &CorruptError{fmt.Sprintf("offset %d beyond the L1 table", off)}
	}
	e := im.l1[i]
	if e&l1Reserved != 0 {
		return nil, 0, &CorruptError{fmt.Sprintf("L1 entry %d (%#x) sets reserved bits", i, e)}
	}
	host := int64(e & offsetMask)
	if host == 0 {
		return nil, 0, nil
	}
	if t, ok := im.l2[host]; ok {
		return t, host, nil
	}
	if host&(im.cs-1) != 0 || host+im.cs > im.end {
		return nil, 0, &CorruptError{fmt.Sprintf("L2 table offset %#x invalid (file ends at %#x)", host, im.end)}
	}
	t, err := im.readTable(uint64(host), im.cs/8, im.end, "L2 table")
	if err != nil {
		return nil, 0, err
	}
	im.cacheL2(host, t)
	return t, host, nil
}

// cacheL2 keeps L2 table t, at host, dropping one table at random when the
// cache is full; im.mu is held.
func (im *Image) cacheL2(host int64, t []uint64) {
	if len(im.l2) >= im.l2Max {
		for k := range im.l2 {
			delete(im.l2, k)
			break
		}
	}
	im.l2[host] = t
}

// compressedSpan decodes a compressed L2 entry: where its data starts in
// the file, and where the 512-byte sectors the entry counts end.
func (im *Image) compressedSpan(e uint64) (start, end int64) {
	x := 62 - (im.bits - 8)
	start = int64(e & (1<<x - 1))
	sectors := int64(e>>x) & (1<<(62-x) - 1)
	return start, start&^511 + (sectors+1)*512
}

// ReadAt reads len(p) bytes of the virtual disk at off.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: read at negative offset %d", off)
	}
	if int64(len(p)) > im.Size() || off > im.Size()-int64(len(p)) {
		// Backing reads of a larger overlay may run past a smaller
		// base: what lies beyond reads as zeros.
		if off >= im.Size() {
			clear(p)
			return len(p), nil
		}
		n := im.Size() - off
		clear(p[n:])
		if _, err := im.ReadAt(p[:n], off); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	done := 0
	for done < len(p) {
		im.mu.Lock()
		x, err := im.lookup(off+int64(done), int64(len(p)-done))
		im.mu.Unlock()
		if err != nil {
			return done, err
		}
		if err := im.readExtent(x, p[done:done+int(x.n)], off+int64(done)); err != nil {
			return done, err
		}
		done += int(x.n)
	}
	return done, nil
}

// readExtent fills p (x.n bytes) with extent x at virtual offset off.
func (im *Image) readExtent(x extent, p []byte, off int64) error {
	switch x.kind {
	case kData:
		_, err := readFull(im.fd, p, x.host)
		return err
	case kZero:
		clear(p)
	case kUnallocated:
		if im.backing == nil {
			clear(p)
			return nil
		}
		if off >= im.backing.Size() {
			clear(p)
			return nil
		}
		_, err := im.backing.ReadAt(p, off)
		return err
	case kCompressed:
		data, err := im.decompress(x.l2e)
		if err != nil {
			return err
		}
		copy(p, data[off&(im.cs-1):])
	}
	return nil
}

// decompress returns the cluster that compressed entry e holds.
func (im *Image) decompress(e uint64) ([]byte, error) {
	host, end := im.compressedSpan(e)
	im.mu.Lock()
	if im.zHost == host && im.zData != nil {
		d := im.zData
		im.mu.Unlock()
		return d, nil
	}
	im.mu.Unlock()
	n := end - host
	if host <= 0 || n <= 0 || n > 2*im.cs+512 || host > maxHostOffset {
		return nil, &CorruptError{fmt.Sprintf("compressed cluster entry %#x invalid", e)}
	}
	in := make([]byte, n)
	got, err := readFull(im.fd, in, host)
	if err != nil {
		return nil, err
	}
	out := make([]byte, im.cs)
	r := flate.NewReader(bytes.NewReader(in[:got]))
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, &CorruptError{fmt.Sprintf("compressed cluster at %#x: %v", host, err)}
	}
	im.mu.Lock()
	im.zHost, im.zData = host, out
	im.mu.Unlock()
	return out, nil
}

// readFull preads len(p) bytes at off; bytes past the end of the file read
// as zeros (a cluster allocated at the end may be shorter in the file).
// It and pwriteFull use preadv and pwritev, which the jailed VMM's seccomp
// filter allows for the block backends, rather than pread64 and pwrite64.
func readFull(fd int, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Preadv(fd, [][]byte{p[done:]}, off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			clear(p[done:])
			return len(p), nil
		}
		done += n
	}
	return done, nil
}

func pwriteFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwritev(fd, [][]byte{p}, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// RawBacking serves a raw file as a backing file.
type RawBacking struct {
	F    *os.File
	size int64
}

// NewRawBacking measures f.
func NewRawBacking(f *os.File) (*RawBacking, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &RawBacking{F: f, size: st.Size()}, nil
}

// ReadAt implements Backing.
func (r *RawBacking) ReadAt(p []byte, off int64) (int, error) {
	return readFull(int(r.F.Fd()), p, off)
}

// Size implements Backing.
func (r *RawBacking) Size() int64 { return r.size }
