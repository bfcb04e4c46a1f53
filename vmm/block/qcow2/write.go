package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrReadOnly is returned by writes to a read-only image.
var ErrReadOnly = errors.New("qcow2: image is read-only")

// WriteAt writes p at virtual offset off. Clusters the image does not own
// yet (unallocated, zero, compressed, or shared) are copied on write into a
// new cluster at the end of the file.
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	if im.ro {
		return 0, ErrReadOnly
	}
	if off < 0 || int64(len(p)) > im.Size() || off > im.Size()-int64(len(p)) {
		return 0, fmt.Errorf("qcow2: write of %d bytes at %d beyond the %d-byte disk", len(p), off, im.Size())
	}
	im.wmu.Lock()
	defer im.wmu.Unlock()
	done := 0
	for done < len(p) {
		at := off + int64(done)
		n := int(min(int64(len(p)-done), im.cs-at&(im.cs-1)))
		if err := im.writeCluster(p[done:done+n], at); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// writeCluster writes p, which lies within one cluster, at off; im.wmu is
// held.
func (im *Image) writeCluster(p []byte, off int64) error {
	im.mu.Lock()
	e, err := im.entry(off)
	im.mu.Unlock()
	if err != nil {
		return err
	}
	k, host, err := im.classify(e)
	if err != nil {
		return err
	}
	if k == kData && e&entryCopied != 0 {
		return pwriteFull(im.fd, p, host+off&(im.cs-1))
	}
	if k == kZero && host != 0 && e&entryCopied != 0 {
		// A zero cluster that kept its own host cluster (a discard
		// of ours, or preallocated) is written in place: zeroed,
		// the data, then the entry without its zero flag. The file
		// never grows for a guest that discards and writes again.
		if err := im.zeroHost(host); err != nil {
			return err
		}
		if err := pwriteFull(im.fd, p, host+off&(im.cs-1)); err != nil {
			return err
		}
		im.mu.Lock()
		defer im.mu.Unlock()
		return im.setEntry(off&^(im.cs-1), uint64(host)|entryCopied)
	}
	// Copy on write: the cluster's current content, then p over it, into
	// a new cluster.
	base := off &^ (im.cs - 1)
	if im.scratch == nil {
		im.scratch = make([]byte, im.cs)
	}
	buf := im.scratch
	if int64(len(p)) < im.cs {
		x := extent{kind: k, host: host, n: im.cs, l2e: e}
		if err := im.readExtent(x, buf, base); err != nil {
			return err
		}
	}
	copy(buf[off-base:], p)
	return im.replace(base, buf, e)
}

// replace points the cluster at virtual offset base to a new cluster
// holding data (a whole cluster), and drops the reference old held. In
// order: the data, its refcount, the L2 entry (creating the L2 table if
// needed), the old cluster's refcount.
func (im *Image) replace(base int64, data []byte, old uint64) error {
	im.mu.Lock()
	host := im.alloc()
	im.mu.Unlock()
	// Readers may look tables up meanwhile; nothing points here yet.
	if err := pwriteFull(im.fd, data, host); err != nil {
		return err
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	if err := im.setRefcount(host, 1); err != nil {
		return err
	}
	if err := im.setEntry(base, uint64(host)|entryCopied); err != nil {
		return err
	}
	return im.unref(old)
}

// alloc takes the next cluster at the end of the file; im.mu is held.
func (im *Image) alloc() int64 {
	host := im.end
	im.end += im.cs
	return host
}

// setEntry writes the L2 entry of the cluster at virtual offset base,
// making an L2 table first if the L1 entry is empty; im.mu is held.
func (im *Image) setEntry(base int64, e uint64) error {
	t, host, err := im.table(base)
	if err != nil {
		return err
	}
	i := (base >> im.bits) & (im.h.l2Entries() - 1)
	l1i := base >> im.bits / im.h.l2Entries()
	if t != nil && im.l1[l1i]&entryCopied == 0 {
		rc, err := im.refcount(host)
		if err != nil {
			return err
		}
		if rc != 1 {
			return fmt.Errorf("qcow2: L2 table at %#x is shared (refcount %d): writing it is not supported", host, rc)
		}
	}
	if t == nil {
		// A new table: written whole with its one entry, counted, then
		// linked from L1.
		host = im.alloc()
		t = make([]uint64, im.cs/8)
		t[i] = e
		raw := make([]byte, im.cs)
		binary.BigEndian.PutUint64(raw[i*8:], e)
		if err := pwriteFull(im.fd, raw, host); err != nil {
			return err
		}
		if err := im.setRefcount(host, 1); err != nil {
			return err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(host)|entryCopied)
		if err := pwriteFull(im.fd, b[:], int64(im.h.L1TableOffset)+l1i*8); err != nil {
			return err
		}
		im.l1[l1i] = uint64(host) | entryCopied
		im.cacheL2(host, t)
		return nil
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], e)
	if err := pwriteFull(im.fd, b[:], host+i*8); err != nil {
		return err
	}
	t[i] = e
	return nil
}

// unref drops the reference an old L2 entry held, if any; im.mu is held.
func (im *Image) unref(e uint64) error {
	var host int64
	switch {
	case e&entryCompressed != 0:
		// A compressed cluster's bytes may span two host clusters; each
		// counts one reference per compressed cluster starting in or
		// running into it.
		start, end := im.compressedSpan(e)
		last := (end - 1) &^ (im.cs - 1)
		for c := start &^ (im.cs - 1); c <= last; c += im.cs {
			if err := im.decRefcount(c); err != nil {
				return err
			}
		}
		return nil
	default:
		host = int64(e & offsetMask)
	}
	if host == 0 {
		return nil
	}
	// Its space is not punched out: a read translated to it before the
	// entry changed may still be in flight, and must get the data that
	// was there. (The cluster is never handed out again: allocation only
	// appends.)
	return im.decRefcount(host)
}

func (im *Image) decRefcount(host int64) error {
	rc, err := im.refcount(host)
	if err != nil || rc == 0 {
		return err
	}
	return im.setRefcount(host, rc-1)
}

// refWidth is the refcount width in bytes.
func (im *Image) refWidth() int64 { return 1 << im.h.RefcountOrder / 8 }

// refSlot locates host's refcount: the refcount block's offset (0 if none)
// and the entry's byte offset in it; im.mu is held.
func (im *Image) refSlot(host int64) (block, at int64, i int64, err error) {
	perBlock := im.cs / im.refWidth()
	c := host >> im.bits
	i = c / perBlock
	if i >= int64(len(im.refTable)) {
		return 0, 0, i, fmt.Errorf("qcow2: cluster %#x lies beyond what the refcount table covers (growing it is not supported)", host)
	}
	block = int64(im.refTable[i] & offsetMask)
	if im.refTable[i]&^offsetMask != 0 || (block != 0 && block+im.cs > im.end) {
		return 0, 0, i, &CorruptError{fmt.Sprintf("refcount table entry %d (%#x) invalid", i, im.refTable[i])}
	}
	return block, (c % perBlock) * im.refWidth(), i, nil
}

// refcount reads host's refcount; im.mu is held.
func (im *Image) refcount(host int64) (uint64, error) {
	block, at, _, err := im.refSlot(host)
	if err != nil || block == 0 {
		return 0, err
	}
	var b [8]byte
	w := im.refWidth()
	if _, err := readFull(im.fd, b[8-w:], block+at); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

// setRefcount writes host's refcount, making a refcount block first when
// none covers it; im.mu is held.
func (im *Image) setRefcount(host int64, v uint64) error {
	block, at, i, err := im.refSlot(host)
	if err != nil {
		return err
	}
	if block == 0 {
		// A new block: counted (in itself, or in the block that covers
		// it), written, then linked from the table.
		block = im.alloc()
		raw := make([]byte, im.cs)
		if err := pwriteFull(im.fd, raw, block); err != nil {
			return err
		}
		_, ownAt, own, err := im.refSlot(block)
		if err != nil {
			return err
		}
		if own == i {
			putRef(raw[ownAt:], im.refWidth(), 1)
			if err := pwriteFull(im.fd, raw, block); err != nil {
				return err
			}
		} else if err := im.setRefcount(block, 1); err != nil {
			// The new block lies in the next block's range (it is
			// the first cluster there): that block counts it.
			return err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(block))
		if err := pwriteFull(im.fd, b[:], int64(im.h.RefTableOffset)+i*8); err != nil {
			return err
		}
		im.refTable[i] = uint64(block)
	}
	var b [8]byte
	w := im.refWidth()
	putRef(b[:], w, v)
	return pwriteFull(im.fd, b[:w], block+at)
}

func putRef(b []byte, w int64, v uint64) {
	switch w {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.BigEndian.PutUint16(b, uint16(v))
	case 4:
		binary.BigEndian.PutUint32(b, uint32(v))
	default:
		binary.BigEndian.PutUint64(b, v)
	}
}

// Zero makes n bytes at off read as zeros. Whole clusters become zero
// clusters (their space is given back); partial ones are written. With
// mayDiscard (a discard, which does not promise zeros) a version 2 image
// drops whole clusters to its backing file's content.
func (im *Image) Zero(off, n int64, mayDiscard bool) error {
	if im.ro {
		return ErrReadOnly
	}
	if off < 0 || n < 0 || n > im.Size() || off > im.Size()-n {
		return fmt.Errorf("qcow2: zeroing %d bytes at %d beyond the %d-byte disk", n, off, im.Size())
	}
	im.wmu.Lock()
	defer im.wmu.Unlock()
	for n > 0 {
		in := off & (im.cs - 1)
		step := min(n, im.cs-in)
		if in != 0 || step < im.cs {
			if !mayDiscard && !im.readsZero(off) {
				if err := im.writeCluster(im.zeroBuf()[:step], off); err != nil {
					return err
				}
			}
		} else if err := im.zeroCluster(off, mayDiscard); err != nil {
			return err
		}
		off, n = off+step, n-step
	}
	return nil
}

// readsZero says whether the cluster at off reads as zeros without
// looking at its data: a zero cluster, or unallocated with no backing file.
// Zeroing part of it then needs no copy.
func (im *Image) readsZero(off int64) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	e, err := im.entry(off)
	if err != nil {
		return false
	}
	k, _, err := im.classify(e)
	return err == nil && (k == kZero || k == kUnallocated && im.backing == nil)
}

// zeroHost makes the host cluster at host read as zeros: a hole where
// the file system can punch one, else written zeros; im.wmu is held.
func (im *Image) zeroHost(host int64) error {
	if unix.Fallocate(im.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, host, im.cs) == nil {
		return nil
	}
	return pwriteFull(im.fd, im.zeroBuf(), host)
}

// zeroBuf is a cluster of zeros (never written: writeCluster's scratch
// buffer is another); im.wmu is held.
func (im *Image) zeroBuf() []byte {
	if im.zeros == nil {
		im.zeros = make([]byte, im.cs)
	}
	return im.zeros
}

// zeroCluster turns the cluster at off into a zero cluster; im.wmu held.
func (im *Image) zeroCluster(off int64, mayDiscard bool) error {
	im.mu.Lock()
	defer im.mu.Unlock()
	e, err := im.entry(off)
	if err != nil {
		return err
	}
	k, _, err := im.classify(e)
	if err != nil {
		return err
	}
	switch {
	case k == kZero, k == kUnallocated && im.backing == nil:
		return nil
	case im.h.Version < 3 && k == kData && e&entryCopied != 0 && !(mayDiscard && im.backing != nil):
		// No zero clusters in version 2: the cluster stays the
		// image's, a hole (or written zeros).
		im.mu.Unlock()
		err := im.zeroHost(int64(e & offsetMask))
		im.mu.Lock()
		return err
	case im.h.Version >= 3 && k == kData && e&entryCopied != 0:
		// Its own cluster stays allocated to it as a zero cluster; the
		// space goes back to the file system.
		if err := im.setEntry(off, e|entryZero); err != nil {
			return err
		}
		unix.Fallocate(im.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(e&offsetMask), im.cs)
		return nil
	case im.h.Version >= 3:
		if err := im.setEntry(off, entryZero); err != nil {
			return err
		}
	case mayDiscard || im.backing == nil:
		if err := im.setEntry(off, 0); err != nil {
			return err
		}
	default:
		im.mu.Unlock()
		err := im.writeCluster(im.zeroBuf(), off)
		im.mu.Lock()
		return err
	}
	return im.unref(e)
}

// Flush makes every completed write durable.
func (im *Image) Flush() error { return unix.Fdatasync(im.fd) }

// CreateOptions configures Create.
type CreateOptions struct {
	ClusterBits   uint32 // default 16 (64 KiB)
	BackingFile   string // name written in the header, as given
	BackingFormat string // "raw" or "qcow2"; written when set
}

// Create writes an empty version 3 image of size bytes (a multiple of 512)
// to f, which must be empty: with a backing file it is an overlay reading
// everything from it.
func Create(f *os.File, size int64, o CreateOptions) error {
	bits := o.ClusterBits
	if bits == 0 {
		bits = 16
	}
	if bits < minClusterBits || bits > maxClusterBits {
		return fmt.Errorf("qcow2: cluster bits %d out of range %d-%d", bits, minClusterBits, maxClusterBits)
	}
	if size <= 0 || size > MaxSize || size%512 != 0 {
		// QEMU reads the size in 512-byte sectors, rounding down.
		return fmt.Errorf("qcow2: size %d is not a multiple of 512 in the range 512-%d", size, int64(MaxSize))
	}
	if len(o.BackingFile) > MaxBackingName || len(o.BackingFormat) > 16 {
		return fmt.Errorf("qcow2: backing file name too long")
	}
	if st, err := f.Stat(); err != nil || st.Size() != 0 {
		return fmt.Errorf("qcow2: create needs an empty file (%v)", err)
	}
	cs := int64(1) << bits
	perL2 := cs / 8
	l1Size := (size + cs*perL2 - 1) / (cs * perL2)
	l1Clusters := (l1Size*8 + cs - 1) / cs
	// The refcount table covers twice the virtual size and the tables,
	// which a fully written image needs; it cannot grow later.
	perBlock := cs / 2
	coverClusters := (2*size+cs-1)/cs + 16 + l1Clusters*2
	blocks := (coverClusters + perBlock - 1) / perBlock
	refClusters := max((blocks*8+cs-1)/cs, 1)
	if refClusters*cs > maxRefTableBytes {
		return fmt.Errorf("qcow2: %d bytes with %d-byte clusters needs a refcount table larger than %d bytes: use larger clusters", size, cs, maxRefTableBytes)
	}
	h := &Header{
		ClusterBits: bits, Size: uint64(size), L1Size: uint32(l1Size),
		RefTableOffset: uint64(cs), RefTableClusters: uint32(refClusters),
		RefcountOrder: 4,
	}
	blockOff := cs * (1 + refClusters)
	h.L1TableOffset = uint64(blockOff + cs)
	used := 1 + refClusters + 1 + l1Clusters
	if used > perBlock {
		return fmt.Errorf("qcow2: image tables too large for one refcount block")
	}
	// Tables first, header last: a file cut short is not a qcow2 image.
	table := make([]byte, refClusters*cs)
	binary.BigEndian.PutUint64(table, uint64(blockOff))
	block := make([]byte, cs)
	for c := range used {
		binary.BigEndian.PutUint16(block[c*2:], 1)
	}
	if err := f.Truncate(cs * (used)); err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	fd := int(f.Fd())
	if err := pwriteFull(fd, table, int64(h.RefTableOffset)); err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	if err := pwriteFull(fd, block, blockOff); err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	hdr := h.marshal()
	if o.BackingFormat != "" {
		hdr = appendExt(hdr, extBackingFormat, []byte(o.BackingFormat))
	}
	hdr = appendExt(hdr, extEnd, nil)
	if o.BackingFile != "" {
		binary.BigEndian.PutUint64(hdr[8:], uint64(len(hdr)))
		binary.BigEndian.PutUint32(hdr[16:], uint32(len(o.BackingFile)))
		hdr = append(hdr, o.BackingFile...)
	}
	if int64(len(hdr)) > cs {
		return fmt.Errorf("qcow2: header does not fit in a %d-byte cluster", cs)
	}
	if err := pwriteFull(fd, hdr, 0); err != nil {
		return fmt.Errorf("qcow2: %w", err)
	}
	return f.Sync()
}

func appendExt(b []byte, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}
