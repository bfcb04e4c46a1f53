// Package qcow2 serves QEMU's copy-on-write disk image format (versions 2
// and 3) as a block.Backend: thin images that grow as the guest writes,
// backing files shared read-only by many clones, zero clusters, and
// compressed clusters for reading.
//
// The image file is untrusted: a guest may have written it, or it came
// from the network. Table entries are checked for alignment and reserved
// bits before use, every structure's size is capped, and all I/O stays in
// the image's own file and its read-only backing files (a crafted image
// can still point a guest cluster at its own tables and corrupt itself:
// there is no overlap check yet). Anything the package does not implement
// (encryption, external data files, extended L2 entries, zstd compression,
// unknown incompatible features) is refused at Open with an error naming
// it, leaving the file untouched.
//
// Allocation is append-only: a new cluster is always taken at the end of
// the file and no cluster is ever freed for reuse, so a table entry that
// some crash left stale can never make two guest offsets share data.
// Metadata is written in the order that keeps the image consistent if the
// process dies between any two writes: a cluster's data, then its
// refcount, then the L2 entry (or L1 entry) that points to it. A kill can
// at worst leak the one cluster being allocated, which `qemu-img check`
// reports as harmless.
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic is the first four bytes of every qcow2 image: "QFI\xfb".
const Magic = 0x514649fb

// Incompatible feature bits (header version 3).
const (
	IncompatDirty        = 1 << 0 // refcounts may be stale (lazy refcounts)
	IncompatCorrupt      = 1 << 1 // QEMU found corruption: read-only
	IncompatExternalData = 1 << 2 // guest data lives in another file
	IncompatCompression  = 1 << 3 // the compression type field is set
	IncompatExtendedL2   = 1 << 4 // subclusters
)

// CompatLazyRefcounts is the compatible feature bit of lazy refcounts.
const CompatLazyRefcounts = 1 << 0

// Header extension types.
const (
	extEnd           = 0
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extExternalData  = 0x44415441
)

// Limits on what an image may ask the package to hold in memory or read.
const (
	minClusterBits = 9
	maxClusterBits = 21 // 2 MiB, as QEMU
	// MaxSize bounds the virtual size: 64 TiB.
	MaxSize = 64 << 40
	// maxL1Bytes and maxRefTableBytes bound the tables read at Open.
	maxL1Bytes       = 32 << 20
	maxRefTableBytes = 8 << 20
	// maxHostOffset bounds every offset a table may hold (bits 9-55).
	maxHostOffset = 1 << 56
	// MaxBackingName bounds the backing file's name, as QEMU.
	MaxBackingName = 1023
	v2HeaderLen    = 72
	v3HeaderLen    = 104
)

// Header is an image's header and the extensions the package reads.
type Header struct {
	Version            uint32
	BackingFileOffset  uint64
	BackingFileSize    uint32
	ClusterBits        uint32
	Size               uint64 // virtual disk size in bytes
	CryptMethod        uint32
	L1Size             uint32 // entries
	L1TableOffset      uint64
	RefTableOffset     uint64
	RefTableClusters   uint32
	NbSnapshots        uint32
	SnapshotsOffset    uint64
	Incompatible       uint64
	Compatible         uint64
	Autoclear          uint64
	RefcountOrder      uint32 // refcount width is 1<<RefcountOrder bits
	HeaderLength       uint32
	CompressionType    uint8
	BackingFile        string // "" without a backing file
	BackingFormat      string // from the backing format extension; may be ""
	HasExternalDataExt bool
}

// ErrNotQcow2 is returned when the file does not start with the magic.
var ErrNotQcow2 = errors.New("qcow2: not a qcow2 image (bad magic)")

// ClusterSize is the cluster size in bytes.
func (h *Header) ClusterSize() int64 { return 1 << h.ClusterBits }

// l2Entries is the number of entries of one L2 table.
func (h *Header) l2Entries() int64 { return h.ClusterSize() / 8 }

// ParseHeader decodes and validates the header at the start of an image;
// first is the image's first cluster (or as much of the file as there is,
// up to one cluster; 2 MiB is always enough). The checks are those that
// need nothing but the header: sizes, alignment, and features.
func ParseHeader(first []byte) (*Header, error) {
	if len(first) < v2HeaderLen {
		return nil, fmt.Errorf("qcow2: header truncated (%d bytes)", len(first))
	}
	be := binary.BigEndian
	if be.Uint32(first) != Magic {
		return nil, ErrNotQcow2
	}
	h := &Header{
		Version:           be.Uint32(first[4:]),
		BackingFileOffset: be.Uint64(first[8:]),
		BackingFileSize:   be.Uint32(first[16:]),
		ClusterBits:       be.Uint32(first[20:]),
		Size:              be.Uint64(first[24:]),
		CryptMethod:       be.Uint32(first[32:]),
		L1Size:            be.Uint32(first[36:]),
		L1TableOffset:     be.Uint64(first[40:]),
		RefTableOffset:    be.Uint64(first[48:]),
		RefTableClusters:  be.Uint32(first[56:]),
		NbSnapshots:       be.Uint32(first[60:]),
		SnapshotsOffset:   be.Uint64(first[64:]),
		RefcountOrder:     4,
		HeaderLength:      v2HeaderLen,
	}
	switch h.Version {
	case 2:
	case 3:
		if len(first) < v3HeaderLen {
			return nil, fmt.Errorf("qcow2: version 3 header truncated (%d bytes)", len(first))
		}
		h.Incompatible = be.Uint64(first[72:])
		h.Compatible = be.Uint64(first[80:])
		h.Autoclear = be.Uint64(first[88:])
		h.RefcountOrder = be.Uint32(first[96:])
		h.HeaderLength = be.Uint32(first[100:])
		if h.HeaderLength < v3HeaderLen || h.HeaderLength%8 != 0 || int(h.HeaderLength) > len(first) {
			return nil, fmt.Errorf("qcow2: header length %d invalid", h.HeaderLength)
		}
		if h.HeaderLength > v3HeaderLen {
			h.CompressionType = first[104]
		}
	default:
		return nil, fmt.Errorf("qcow2: version %d not supported (want 2 or 3)", h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, fmt.Errorf("qcow2: cluster bits %d out of range %d-%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	if h.CryptMethod != 0 {
		return nil, fmt.Errorf("qcow2: encrypted images are not supported (crypt method %d)", h.CryptMethod)
	}
	if h.Size > MaxSize {
		return nil, fmt.Errorf("qcow2: virtual size %d exceeds the %d-byte limit", h.Size, uint64(MaxSize))
	}
	if h.RefcountOrder < 3 || h.RefcountOrder > 6 {
		return nil, fmt.Errorf("qcow2: %d-bit refcounts are not supported (8 to 64)", 1<<min(h.RefcountOrder, 63))
	}
	if unknown := h.Incompatible &^ (IncompatDirty | IncompatCorrupt | IncompatCompression); unknown != 0 {
		return nil, fmt.Errorf("qcow2: unsupported incompatible features %#x (%s)", unknown, incompatNames(unknown))
	}
	if h.Incompatible&IncompatCompression != 0 && h.CompressionType != 0 {
		return nil, fmt.Errorf("qcow2: compression type %d (zstd) is not supported, only deflate", h.CompressionType)
	}
	cs := uint64(h.ClusterSize())
	need := (h.Size + cs*uint64(h.l2Entries()) - 1) / (cs * uint64(h.l2Entries()))
	if uint64(h.L1Size) < need {
		return nil, fmt.Errorf("qcow2: L1 table of %d entries cannot map %d bytes (need %d)", h.L1Size, h.Size, need)
	}
	if uint64(h.L1Size)*8 > maxL1Bytes {
		return nil, fmt.Errorf("qcow2: L1 table of %d entries is too large", h.L1Size)
	}
	if h.L1Size > 0 && !aligned(h.L1TableOffset, cs) {
		return nil, fmt.Errorf("qcow2: L1 table offset %#x invalid", h.L1TableOffset)
	}
	if h.RefTableClusters == 0 || uint64(h.RefTableClusters)*cs > maxRefTableBytes || !aligned(h.RefTableOffset, cs) {
		return nil, fmt.Errorf("qcow2: refcount table (%d clusters at %#x) invalid", h.RefTableClusters, h.RefTableOffset)
	}
	if h.BackingFileOffset != 0 {
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if h.BackingFileSize == 0 || h.BackingFileSize > MaxBackingName || h.BackingFileOffset > cs || end > cs || end > uint64(len(first)) {
			return nil, fmt.Errorf("qcow2: backing file name (%d bytes at %d) outside the first cluster", h.BackingFileSize, h.BackingFileOffset)
		}
		h.BackingFile = string(first[h.BackingFileOffset:end])
		if bytes.IndexByte([]byte(h.BackingFile), 0) >= 0 {
			return nil, fmt.Errorf("qcow2: backing file name holds a NUL byte")
		}
	}
	if err := h.parseExtensions(first); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions reads the header extensions that follow the header.
func (h *Header) parseExtensions(first []byte) error {
	be := binary.BigEndian
	off := uint64(h.HeaderLength)
	limit := min(uint64(len(first)), uint64(h.ClusterSize()))
	if h.BackingFileOffset != 0 {
		limit = min(limit, h.BackingFileOffset)
	}
	for {
		if off+8 > limit {
			// Images without extensions may end right after the header.
			return nil
		}
		typ, n := be.Uint32(first[off:]), uint64(be.Uint32(first[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if n > limit-off {
			return fmt.Errorf("qcow2: header extension %#x of %d bytes runs past the first cluster", typ, n)
		}
		data := first[off : off+n]
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(data)
		case extExternalData:
			h.HasExternalDataExt = true
		}
		off += (n + 7) &^ 7
	}
}

func incompatNames(bits uint64) string {
	var out []string
	for i, name := range []string{"dirty", "corrupt", "external data file", "compression type", "extended L2 entries"} {
		if bits&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	if bits>>5 != 0 {
		out = append(out, fmt.Sprintf("unknown bits %#x", bits>>5<<5))
	}
	return fmt.Sprint(out)
}

func aligned(off, cs uint64) bool { return off != 0 && off%cs == 0 && off < maxHostOffset }

// marshal encodes a version 3 header (104 bytes and a compression type
// byte padded to 112) for Create.
func (h *Header) marshal() []byte {
	b := make([]byte, 112)
	be := binary.BigEndian
	be.PutUint32(b, Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint64(b[8:], h.BackingFileOffset)
	be.PutUint32(b[16:], h.BackingFileSize)
	be.PutUint32(b[20:], h.ClusterBits)
	be.PutUint64(b[24:], h.Size)
	be.PutUint32(b[36:], h.L1Size)
	be.PutUint64(b[40:], h.L1TableOffset)
	be.PutUint64(b[48:], h.RefTableOffset)
	be.PutUint32(b[56:], h.RefTableClusters)
	be.PutUint64(b[72:], h.Incompatible)
	be.PutUint64(b[80:], h.Compatible)
	be.PutUint64(b[88:], h.Autoclear)
	be.PutUint32(b[96:], h.RefcountOrder)
	be.PutUint32(b[100:], 112)
	return b
}
