package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// ErrChain is wrapped by every error Walk returns: the driver sent a
// malformed descriptor chain. The request fails (the device completes it
// with an error status, or treats the queue as broken where its spec says
// so), but the queue itself stays usable.
var ErrChain = errors.New("virtio: malformed descriptor chain")

// Chain is one request: a walked descriptor chain as views into guest
// memory, device-readable buffers first, then device-writable ones. It is
// an io.Reader over the readable buffers and an io.Writer over the writable
// ones.
//
// A Chain's storage is reused by every Walk into it, so a device keeps one
// Chain per request it can have in flight (one per queue for devices that
// finish each request before popping the next) and the data path does not
// allocate. The views stay valid until the next Walk into the same Chain;
// the guest may change the bytes behind them at any time (read what you
// need once, and validate it).
type Chain struct {
	Head uint16 // head descriptor index, for Queue.Push

	bufs     [][]byte // readable buffers, then writable ones; no empty ones
	nr       int      // how many of bufs are readable
	readLen  uint32
	writeLen uint32

	ri, roff int    // read cursor: buffer index into bufs, offset inside it
	wi, woff int    // write cursor: buffer index into bufs[nr:], offset
	written  uint32 // bytes written through Write

	maxDescs uint32 // SetMaxDescriptors; 0: only the queue's own bounds
}

// SetMaxDescriptors bounds the descriptors a Walk into c follows (every
// descriptor of the chain, empty ones included, but not one that only
// points at an indirect table); a longer chain fails with ErrChain before
// anything past the bound is looked at. 0 (the default) leaves only the
// queue's bounds: up to 2*Size-1 descriptors, a direct chain continued by
// an indirect table of Size. A hostile driver can make every Chain's
// buffer list (and any per-request list a device builds from it) grow to
// that length, 48 KiB at Size 1024, and make each walk that long, before
// the device rejects the request; a device that knows how many buffers a
// valid request can have says so here, once per Chain. The bound is kept
// across walks.
func (c *Chain) SetMaxDescriptors(n uint32) { c.maxDescs = n }

// Walk follows the chain starting at head (from Pop) into c, checking
// everything the driver controls (virtio 1.2 §2.7.5):
//   - each buffer lies entirely inside guest RAM (Memory.Slice);
//   - at most Size descriptors are followed in the descriptor table, and at
//     most as many as an indirect table holds inside it, so a next field
//     pointing backwards (a loop) ends the walk with an error;
//   - an indirect descriptor is only honoured if FeatureRingIndirectDesc
//     was negotiated, must end the direct part of the chain (no NEXT flag),
//     must not appear inside an indirect table, and its table must be a
//     non-empty multiple of 16 bytes, at most Size descriptors, inside RAM;
//   - no device-readable buffer follows a device-writable one;
//   - the chain holds less than 4 GiB in total, which used->len can count;
//   - at most c's SetMaxDescriptors descriptors, when it was set.
//
// Zero-length buffers are accepted and skipped. c.Head is set to head even
// when Walk fails, so the caller can Push it back, and a failed walk
// leaves no buffer in c. Errors wrap ErrChain.
func (q *Queue) Walk(head uint16, c *Chain) error {
	c.reset(head)
	if q.walkDirect(head, c) {
		return nil
	}
	if err := q.walk(head, c); err != nil {
		c.reset(head) // drop the buffers found before the error
		return err
	}
	return nil
}

// slice is q.mem.Slice, inline for a range inside the main range.
func (q *Queue) slice(gpa, n uint64) ([]byte, error) {
	if b, ok := q.mainSlice(gpa, n); ok {
		return b, nil
	}
	return q.mem.Slice(gpa, n)
}

// mainSlice is the n > 0 bytes at gpa when they lie inside the main range,
// the one bounds check of a guest buffer that slice and walkDirect make
// themselves.
func (q *Queue) mainSlice(gpa, n uint64) ([]byte, bool) {
	// gpa below ramGPA wraps off past len(q.ram).
	if off := gpa - q.ramGPA; off < uint64(len(q.ram)) && n != 0 && n <= uint64(len(q.ram))-off {
		return q.ram[off : off+n : off+n], true
	}
	return nil, false
}

// walkDirect is Walk's fast path for the commonest shape, one direct
// non-empty descriptor inside the main RAM range (Linux's mergeable
// receive buffers, a transmit with the header pushed in front of the
// frame), where the checks of walk reduce to the bounds check of its
// buffer. It reports false, having changed nothing in c, for any other
// chain, valid or not: walk reads it again and says what is wrong. Kept
// apart from walk, whose large frame and size (the compiler inlines
// nothing into it) cost as much as the rest of a one-descriptor walk.
func (q *Queue) walkDirect(head uint16, c *Chain) bool {
	if !q.active || head >= q.size {
		return false
	}
	d := q.desc[uint32(head)*descSize : uint32(head)*descSize+descSize]
	flags := binary.LittleEndian.Uint16(d[12:])
	if flags&(descFNext|descFIndirect) != 0 {
		return false
	}
	length := binary.LittleEndian.Uint32(d[8:])
	b, ok := q.mainSlice(binary.LittleEndian.Uint64(d[0:]), uint64(length))
	if !ok {
		return false
	}
	c.bufs = append(c.bufs, b)
	if flags&descFWrite != 0 {
		c.writeLen = length
	} else {
		c.nr, c.readLen = 1, length
	}
	return true
}

func (q *Queue) walk(head uint16, c *Chain) error {
	if !q.active {
		return fmt.Errorf("%w: %w", ErrChain, errInactive)
	}
	if head >= q.size {
		return fmt.Errorf("%w: head %d beyond queue size %d", ErrChain, head, q.size)
	}
	table := q.desc
	count := uint32(q.size) // descriptors in table
	ttl := count            // descriptors we may still follow in table
	indirect := false
	writable := false
	var total uint64
	left := c.maxDescs // descriptors the device still accepts, if it set a bound
	for i := uint32(head); ; {
		if ttl == 0 {
			return fmt.Errorf("%w: chain from head %d is longer than %d descriptors (a loop?)", ErrChain, head, count)
		}
		ttl--
		// Read the descriptor once: the guest may rewrite it while we
		// look, so every check and use below is on this copy.
		d := table[i*descSize : i*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return fmt.Errorf("%w: descriptor %d is indirect but VIRTIO_F_RING_INDIRECT_DESC was not negotiated", ErrChain, i)
			case indirect:
				return fmt.Errorf("%w: indirect descriptor %d inside an indirect table", ErrChain, i)
			case flags&descFNext != 0:
				return fmt.Errorf("%w: indirect descriptor %d also has the NEXT flag", ErrChain, i)
			case length == 0 || length%descSize != 0:
				return fmt.Errorf("%w: indirect table length %d is not a non-zero multiple of %d", ErrChain, length, descSize)
			case length/descSize > uint32(q.size):
				return fmt.Errorf("%w: indirect table of %d descriptors exceeds the queue size %d", ErrChain, length/descSize, q.size)
			}
			t, err := q.slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("%w: indirect table of descriptor %d: %w", ErrChain, i, err)
			}
			// The WRITE flag of the descriptor pointing at the table
			// is ignored, as the spec requires.
			table, count, indirect = t, length/descSize, true
			ttl, i = count, 0
			continue
		}

		if c.maxDescs != 0 {
			if left == 0 {
				return fmt.Errorf("%w: chain from head %d is longer than the device's %d descriptors", ErrChain, head, c.maxDescs)
			}
			left--
		}
		if flags&descFWrite != 0 {
			writable = true
		} else if writable {
			return fmt.Errorf("%w: device-readable descriptor %d after a device-writable one", ErrChain, i)
		}
		total += uint64(length)
		if total > math.MaxUint32 {
			return fmt.Errorf("%w: chain from head %d holds more than 4 GiB", ErrChain, head)
		}
		if length > 0 {
			b, err := q.slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("%w: buffer of descriptor %d: %w", ErrChain, i, err)
			}
			c.bufs = append(c.bufs, b)
			if writable {
				c.writeLen += length
			} else {
				c.nr++
				c.readLen += length
			}
		}

		if flags&descFNext == 0 {
			return nil
		}
		if uint32(next) >= count {
			return fmt.Errorf("%w: descriptor %d's next %d is beyond its table of %d", ErrChain, i, next, count)
		}
		i = uint32(next)
	}
}

func (c *Chain) reset(head uint16) {
	// Truncating is enough for a failed walk to leave nothing usable
	// behind: every accessor looks only at bufs[:len]. The stale views
	// past it are overwritten by the next walks; clearing them (a memclr
	// with write barriers) cost more than the rest of a one-descriptor
	// walk, and they point into guest RAM, which the garbage collector
	// does not manage.
	c.bufs = c.bufs[:0]
	c.Head, c.nr, c.readLen, c.writeLen = head, 0, 0, 0
	c.ri, c.roff, c.wi, c.woff, c.written = 0, 0, 0, 0, 0
}

// ReadLen is the total size of the device-readable buffers.
func (c *Chain) ReadLen() uint32 { return c.readLen }

// WriteLen is the total size of the device-writable buffers.
func (c *Chain) WriteLen() uint32 { return c.writeLen }

// Written is how many bytes Write has stored: the length to Push.
func (c *Chain) Written() uint32 { return c.written }

// Readable returns the device-readable buffers (views into guest memory,
// none empty), for devices that hand them to the kernel (pwritev) instead of
// copying. It shares c's storage.
func (c *Chain) Readable() [][]byte { return c.bufs[:c.nr:c.nr] }

// Writable returns the device-writable buffers, like Readable. A device
// that fills them directly accounts for the bytes itself when it pushes.
func (c *Chain) Writable() [][]byte { return c.bufs[c.nr:len(c.bufs):len(c.bufs)] }

// Read copies from the readable buffers, continuing where the previous Read
// stopped; it returns io.EOF once they are exhausted.
func (c *Chain) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && c.ri < c.nr {
		b := c.bufs[c.ri]
		k := copy(p[n:], b[c.roff:])
		n += k
		c.roff += k
		if c.roff == len(b) {
			c.ri, c.roff = c.ri+1, 0
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write copies p into the writable buffers, continuing where the previous
// Write stopped. When they cannot hold all of p it fills them and returns
// io.ErrShortWrite.
func (c *Chain) Write(p []byte) (int, error) {
	w := c.bufs[c.nr:]
	n := 0
	for n < len(p) && c.wi < len(w) {
		b := w[c.wi]
		k := copy(b[c.woff:], p[n:])
		n += k
		c.woff += k
		if c.woff == len(b) {
			c.wi, c.woff = c.wi+1, 0
		}
	}
	c.written += uint32(n)
	if n < len(p) {
		return n, io.ErrShortWrite
	}
	return n, nil
}
