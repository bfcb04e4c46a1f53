package blk

import (
	"encoding/binary"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Request types (virtio 1.2 §5.2.6).
const (
	typeIn          = 0  // VIRTIO_BLK_T_IN: read
	typeOut         = 1  // VIRTIO_BLK_T_OUT: write
	typeFlush       = 4  // VIRTIO_BLK_T_FLUSH
	typeGetID       = 8  // VIRTIO_BLK_T_GET_ID: the serial, 20 bytes
	typeGetLifetime = 10 // VIRTIO_BLK_T_GET_LIFETIME (not supported)
	typeDiscard     = 11 // VIRTIO_BLK_T_DISCARD
	typeWriteZeroes = 13 // VIRTIO_BLK_T_WRITE_ZEROES
	typeSecureErase = 14 // VIRTIO_BLK_T_SECURE_ERASE (not supported)
)

// Status byte values.
const (
	statusOK     = 0 // VIRTIO_BLK_S_OK
	statusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	statusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP
)

const (
	sectorSize = 512
	headerSize = 16 // struct virtio_blk_req's type, reserved, sector
	segSize    = 16 // struct virtio_blk_discard_write_zeroes
	flagUnmap  = 1  // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
)

// slot is one request a queue can have in flight. Its storage (the chain's
// buffer list, the iovec slice) is reused by every request that takes it.
type slot struct {
	chain  virtio.Chain
	hdr    [headerSize]byte
	seg    [segSize]byte
	iov    [][]byte // data buffers handed to the Backend: views into chain's
	status []byte   // the status byte in guest memory, or nil when there is none
	state  slotState

	op      block.Op
	offset  int64
	length  int64  // Discard/WriteZeroes range
	dataLen uint32 // bytes of data an IN request fills
	cost    uint64 // bytes charged to the limiter
	charged bool   // the limiter was charged already (retry after ErrBusy)
	why     uint8  // why prepare refused the request (refused*), or notRefused
	written uint32 // bytes written into the chain, without the status byte
	start   int64  // when the request was popped (now()), for its latency
}

type slotState uint8

const (
	slotFree slotState = iota
	slotPending
	slotInFlight
)

// prepare validates the walked request in s against the disk and either
// fills s for the Backend (submit true) or decides its status at once
// (GET_ID, errors, empty transfers). Nothing in the chain is trusted: each
// length is checked before use and the header is copied out once.
//
// Only submitted requests are charged to the limiter (one operation, and
// s.cost bytes: the bytes of disk they read, write or zero). The others
// never reach the disk: GET_ID copies 20 bytes from memory, and a rejected
// or empty request costs the VMM no more than walking its chain, which
// Walk bounds.
func (d *Device) prepare(s *slot) (status uint8, submit bool) {
	c := &s.chain
	s.iov, s.status, s.written, s.charged, s.cost = s.iov[:0], nil, 0, false, 0
	s.length, s.offset, s.dataLen, s.why = 0, 0, 0, notRefused
	wl, rl := c.WriteLen(), c.ReadLen()
	if wl == 0 {
		return s.refuse(refusedNoStatus) // pushed with length 0
	}
	wb := c.Writable()
	last := wb[len(wb)-1]
	s.status = last[len(last)-1:]
	if rl < headerSize {
		return s.refuse(refusedShortHeader)
	}
	if n, _ := c.Read(s.hdr[:]); n != headerSize {
		return s.refuse(refusedHeader)
	}
	typ := binary.LittleEndian.Uint32(s.hdr[0:])
	sector := binary.LittleEndian.Uint64(s.hdr[8:])
	// The class a refused request counts in (Stats), refined below.
	switch typ {
	case typeIn:
		s.op = block.Read
	case typeOut:
		s.op = block.Write
	case typeFlush:
		s.op = block.Flush
	case typeDiscard, typeWriteZeroes:
		s.op = block.WriteZeroes
	}
	switch typ {
	case typeIn, typeOut:
		var n uint32
		if typ == typeIn {
			if rl != headerSize {
				return s.refuse(refusedReadBuffers)
			}
			n = wl - 1
			s.iov = appendRange(s.iov, wb, 0, uint64(n))
			s.op = block.Read
		} else {
			if wl != 1 {
				return s.refuse(refusedWriteBuffers)
			}
			if d.readOnly {
				return s.refuse(refusedReadOnly)
			}
			n = rl - headerSize
			s.iov = appendRange(s.iov, c.Readable(), headerSize, uint64(rl))
			s.op = block.Write
		}
		if n%sectorSize != 0 || !d.inRange(sector, uint64(n)/sectorSize) {
			return s.refuse(refusedRange)
		}
		if n == 0 {
			return statusOK, false
		}
		s.offset = int64(sector * sectorSize)
		s.cost = uint64(n)
		if typ == typeIn {
			s.dataLen = n
		}
		return statusOK, true
	case typeFlush:
		if rl != headerSize || wl != 1 {
			return s.refuse(refusedFlush)
		}
		// One operation and no bytes: the bytes it makes durable were
		// charged when they were written.
		s.op = block.Flush
		return statusOK, true
	case typeGetID:
		if rl != headerSize {
			return s.refuse(refusedGetID)
		}
		n := min(wl-1, MaxIDLen)
		w, _ := c.Write(d.id[:n])
		s.written = uint32(w)
		return statusOK, false
	case typeDiscard, typeWriteZeroes:
		if wl != 1 || (rl-headerSize)%segSize != 0 || rl == headerSize {
			return s.refuse(refusedZeroSegments)
		}
		if (rl-headerSize)/segSize > maxZeroSegs {
			return s.refuse(refusedZeroCount)
		}
		if n, _ := c.Read(s.seg[:]); n != segSize {
			return s.refuse(refusedZeroSegment)
		}
		start := binary.LittleEndian.Uint64(s.seg[0:])
		count := binary.LittleEndian.Uint32(s.seg[8:])
		flags := binary.LittleEndian.Uint32(s.seg[12:])
		// §5.2.6.2: reserved flag bits, and unmap on a discard, are
		// UNSUPP.
		if flags&^flagUnmap != 0 || (typ == typeDiscard && flags != 0) {
			return statusUnsupp, false
		}
		if d.readOnly || count > maxZeroSectors || !d.inRange(start, uint64(count)) {
			return s.refuse(refusedZeroRange)
		}
		if count == 0 {
			return statusOK, false
		}
		s.op = block.WriteZeroes
		if typ == typeDiscard || flags&flagUnmap != 0 {
			// A punched hole reads as zeros, and the driver allowed
			// deallocation.
			s.op = block.Discard
		}
		s.offset = int64(start * sectorSize)
		s.length = int64(count) * sectorSize
		// Charged the whole range, uncapped: on a block device
		// ZERO_RANGE falls back to writing the zeros and PUNCH_HOLE is
		// the device's write-zeroes offload, so up to 1 GiB of real
		// storage changes per request. Any cap below the range would
		// let a guest zero that many times its bandwidth limit. An
		// oversized charge is allowed on a full bucket and leaves it in
		// debt (vmm/ratelimit), so a 1 GiB request waits out its cost
		// afterwards instead of never fitting. The price: a guest's
		// fstrim runs at the disk's bandwidth limit.
		s.cost = uint64(s.length)
		return statusOK, true
	}
	return statusUnsupp, false
}

// Why prepare refuses a request (slot.why), said by Options.Errors: an
// index, so that a slot stays small (TestIdleDeviceHeap).
const (
	notRefused uint8 = iota
	refusedNoStatus
	refusedShortHeader
	refusedHeader
	refusedReadBuffers
	refusedWriteBuffers
	refusedReadOnly
	refusedRange
	refusedFlush
	refusedGetID
	refusedZeroSegments
	refusedZeroCount
	refusedZeroSegment
	refusedZeroRange
)

var refusals = [...]string{
	refusedNoStatus:     "no status byte",
	refusedShortHeader:  "header shorter than 16 bytes",
	refusedHeader:       "header unreadable",
	refusedReadBuffers:  "read whose data buffers are device-readable",
	refusedWriteBuffers: "write whose data buffers are device-writable",
	refusedReadOnly:     "write to a read-only disk",
	refusedRange:        "data not whole sectors, or past the end of the disk",
	refusedFlush:        "flush with data buffers",
	refusedGetID:        "GET_ID with device-readable data buffers",
	refusedZeroSegments: "discard or write-zeroes without whole segments",
	refusedZeroCount:    "discard or write-zeroes with more than one segment",
	refusedZeroSegment:  "discard or write-zeroes segment unreadable",
	refusedZeroRange:    "discard or write-zeroes on a read-only disk, too long, or past the end of the disk",
}

// refuse fails s's request with IOERR before it reaches the Backend, for
// why.
func (s *slot) refuse(why uint8) (status uint8, submit bool) {
	s.why = why
	return statusIOErr, false
}

// inRange reports whether sectors [sector, sector+n) lie on the disk,
// without overflowing.
func (d *Device) inRange(sector, n uint64) bool {
	return n <= d.sectors && sector <= d.sectors-n
}

// appendRange appends to dst the views of bytes [from, to) of the
// concatenation of bufs.
func appendRange(dst, bufs [][]byte, from, to uint64) [][]byte {
	var pos uint64
	for _, b := range bufs {
		if pos >= to {
			break
		}
		end := pos + uint64(len(b))
		if end > from {
			lo, hi := max(from, pos)-pos, min(to, end)-pos
			dst = append(dst, b[lo:hi:hi])
		}
		pos = end
	}
	return dst
}
