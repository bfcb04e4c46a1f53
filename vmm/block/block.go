// Package block serves a disk image (a raw file or a block device opened by
// someone else) to a virtio-blk device with many requests in flight,
// completed out of order, through io_uring or a pool of goroutines, and
// performs reads and writes that cannot wait for a device (page-cache hits,
// tmpfs) inline on the caller's goroutine.
//
// Ordering guarantee: a Flush completes only after fdatasync(2) has
// returned, and it covers every write whose completion was delivered before
// the Flush was submitted. Writes still in flight when the Flush is
// submitted may or may not be covered. This is exactly what virtio-blk (and
// Linux's block layer) ask for: a driver flushes only after the writes it
// wants durable have completed.
package block

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Op is the kind of a request.
type Op uint8

// Request kinds, matching virtio-blk's IN, OUT, FLUSH, DISCARD and
// WRITE_ZEROES.
const (
	Read Op = iota + 1
	Write
	Flush
	Discard     // deallocate the range (PUNCH_HOLE|KEEP_SIZE); it reads back as zeros
	WriteZeroes // zero the range (ZERO_RANGE, or PUNCH_HOLE where unsupported)
)

func (o Op) String() string {
	switch o {
	case Read:
		return "read"
	case Write:
		return "write"
	case Flush:
		return "flush"
	case Discard:
		return "discard"
	case WriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Request is one disk operation.
type Request struct {
	Op     Op
	Offset int64 // in bytes; ignored by Flush
	// Length in bytes, for Discard and WriteZeroes. Read and Write take
	// their length from Bufs.
	Length int64
	// Bufs are the guest buffers of a Read or Write. The buffers must stay
	// valid until the completion is delivered; the Bufs slice itself may be
	// reused as soon as Submit returns.
	Bufs   [][]byte
	Cookie uint64 // returned unchanged in the Completion
	// Done, when set, receives the request's completion instead of the
	// Completions channel. A device with one goroutine per queue hands
	// each queue its own Completer, so a completion reaches the code that
	// pushes it to the guest without a hop through a shared dispatcher
	// goroutine: under nested virtualisation each goroutine wake-up costs
	// more than the I/O itself.
	Done Completer
	// Defer queues the request without starting it: the next Commit (or
	// a Submit without Defer) starts it together with the others. A
	// device submitting everything a driver's kick made available sets
	// it and commits once, so io_uring enters the kernel once per batch
	// instead of once per request.
	Defer bool
}

// Completer receives the completions of requests submitted with Done set.
//
// Complete runs on one of the backend's goroutines, possibly several at
// once for different requests, but never inside Submit, Commit or Inline:
// a caller may hold its own lock across those calls and take the same lock
// in Complete. Every request Submit accepted gets exactly one Complete,
// also when the backend is closed first (then with ErrClosed, after the
// backend has stopped using the request's buffers).
type Completer interface {
	Complete(Completion)
}

// Completion reports the end of a request.
type Completion struct {
	Cookie uint64
	N      int64 // bytes read or written (the range length for Discard/WriteZeroes)
	Err    error
}

// Alignment is what O_DIRECT requires of requests; zero fields mean no
// requirement.
type Alignment struct {
	Memory int // buffer addresses must be multiples of this
	Offset int // offsets and buffer lengths must be multiples of this
}

// Describer is a Backend that can say where its requests are, for a dump
// of a stalled machine: how many it holds, and in which stage. Describe
// takes the backend's lock.
type Describer interface {
	Describe() string
}

// Backend is a disk image serving asynchronous requests.
type Backend interface {
	// Submit starts a request. When it returns an error (ErrReadOnly,
	// ErrOutOfRange, ErrInvalid, ErrMisaligned, ErrBusy, ErrClosed) no
	// completion will be delivered for it; otherwise exactly one will,
	// unless the backend is closed first.
	Submit(Request) error
	// Commit starts every request submitted with Defer.
	Commit()
	// Inline performs a Read or Write on the caller's goroutine when it
	// cannot wait for a device: the data is in the page cache (preadv2
	// with RWF_NOWAIT), or the file lives in memory (tmpfs, ramfs). ok
	// false means the caller must Submit the request instead; whatever
	// Inline already transferred is harmless to transfer again. This is
	// the fast path for small random I/O on cached images: no goroutine,
	// no io_uring round trip, no wake-up.
	Inline(r *Request) (c Completion, ok bool)
	// Completions delivers one Completion per accepted request, in any
	// order. It is closed by Close.
	Completions() <-chan Completion
	// Size is the disk size in bytes: the file size rounded up to a
	// 512-byte sector (the tail past the end of the file reads as zeros).
	Size() int64
	ReadOnly() bool
	// Alignment is non-zero when the descriptor was opened with O_DIRECT.
	Alignment() Alignment
	// Kind says which implementation serves the disk, e.g. "io_uring" or
	// "pool (io_uring unavailable: ...)", for logs.
	Kind() string
	// Close waits until no request is using guest buffers any more, drops
	// undelivered completions, and closes the Completions channel. It does
	// not close the file.
	Close() error
}

// Errors a Submit or a Completion can carry; test with errors.Is.
var (
	ErrReadOnly    = errors.New("block: disk is read-only")
	ErrOutOfRange  = errors.New("block: request beyond the end of the disk")
	ErrInvalid     = errors.New("block: invalid request")
	ErrMisaligned  = errors.New("block: request not aligned as O_DIRECT requires")
	ErrBusy        = errors.New("block: too many requests in flight")
	ErrClosed      = errors.New("block: backend closed")
	ErrUnsupported = errors.New("block: operation not supported by the file")
	ErrShortWrite  = errors.New("block: write made no progress")
)

// Options tune a backend; the zero value picks defaults.
type Options struct {
	ReadOnly bool // refuse writes even if the descriptor is writable
	Depth    int  // maximum requests in flight; default 256
	Workers  int  // goroutines of the pool backend; default 8
	// NoUring makes Open use the pool without trying io_uring.
	NoUring bool
	// NoInline makes Inline always decline, so every request takes the
	// asynchronous path (tests of that path, or disks where a page-cache
	// hit must not run on the caller's goroutine).
	NoInline bool
	// Size, when positive, is the disk's size instead of the file's: a
	// layer that maps its own disk onto the file (qcow2) grows the file
	// while it is served and bounds the offsets it sends itself. Reads
	// past the end of the file still read zeros.
	Size int64
}

const (
	defaultDepth   = 256
	defaultWorkers = 8
	sectorSize     = 512
	maxIovecs      = 1024 // IOV_MAX
)

// Open serves f with io_uring when this kernel and process allow it and with
// the goroutine pool otherwise; Kind says which was chosen and why.
func Open(f *os.File, o Options) (Backend, error) {
	return open(f, o, func(f *os.File, o Options) (Backend, error) { return NewUring(f, o) })
}

// open is Open with the io_uring constructor injectable, so tests can
// simulate a kernel that refuses io_uring.
func open(f *os.File, o Options, newUring func(*os.File, Options) (Backend, error)) (Backend, error) {
	if !o.NoUring {
		b, err := newUring(f, o)
		if err == nil {
			return b, nil
		}
		p, perr := NewPool(f, o)
		if perr != nil {
			return nil, perr
		}
		p.kind = "pool (" + err.Error() + ")"
		return p, nil
	}
	return NewPool(f, o)
}

// disk is what both implementations share: the descriptor, its geometry,
// request validation and the slot table bounding requests in flight.
type disk struct {
	file  *os.File // kept to hold the descriptor open; never closed here
	fd    int
	size  int64
	ro    bool
	align Alignment

	// Inline's policy, fixed at open but for the NOWAIT flags, which
	// switch off for good once the kernel answers EOPNOTSUPP.
	inline      bool        // Options.NoInline unset and no O_DIRECT
	memory      bool        // tmpfs or ramfs: plain preadv/pwritev never waits for a device
	noWaitRead  atomic.Bool // preadv2(RWF_NOWAIT) is refused for this file
	noWaitWrite atomic.Bool // pwritev2(RWF_NOWAIT) is refused for this file
	closed      atomic.Bool // set with closing, read without mu by Inline

	mu      sync.Mutex
	closing bool
	free    []int32 // indices of unused slots (a stack)
	slots   []slot
	out     chan Completion
	stop    chan struct{} // closed by Close: drop completions instead of blocking
}

// slot holds a request in flight, with copies of everything the kernel or a
// worker reads after Submit returns.
type slot struct {
	req  Request
	bufs [][]byte     // copy of req.Bufs (keeps the buffers alive too)
	iov  []unix.Iovec // iovecs for the remaining part of a read/write
	len  int64        // total bytes of a read/write
	done int64        // bytes already transferred
	mode uint32       // fallocate mode in use
	// canceled counts the times the kernel dropped the request before
	// it started (io_uring: see maxCanceled).
	canceled uint8

	// A request with buffers O_DIRECT cannot take runs on bounce (see
	// check); guest holds its real buffers meanwhile.
	guest  [][]byte
	bounce []byte
}

func newDisk(f *os.File, o Options) (*disk, error) {
	if f == nil {
		return nil, fmt.Errorf("block: nil file")
	}
	d := &disk{file: f, fd: int(f.Fd()), ro: o.ReadOnly}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return nil, fmt.Errorf("block: stat %s: %w", f.Name(), err)
	}
	size, err := sizeOf(f, &st)
	if err != nil {
		return nil, err
	}
	d.size = size
	if o.Size > 0 {
		d.size = o.Size
	}
	d.size = (d.size + sectorSize - 1) &^ (sectorSize - 1)
	fl, err := unix.FcntlInt(uintptr(d.fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("block: F_GETFL %s: %w", f.Name(), err)
	}
	if fl&unix.O_ACCMODE == unix.O_RDONLY {
		d.ro = true
	}
	if fl&unix.O_DIRECT != 0 {
		d.align = directAlignment(d.fd, st.Mode&unix.S_IFMT == unix.S_IFBLK)
	}
	// With O_DIRECT every transfer waits for the device: nothing to do
	// inline.
	d.inline = !o.NoInline && fl&unix.O_DIRECT == 0
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(d.fd, &sfs); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		d.memory = sfs.Type == unix.TMPFS_MAGIC || sfs.Type == unix.RAMFS_MAGIC
	}
	depth := o.Depth
	if depth <= 0 {
		depth = defaultDepth
	}
	d.slots = make([]slot, depth)
	d.free = make([]int32, depth)
	// A slot's bufs and iov grow on its first requests and are reused
	// from then on: preallocating them cost every slot 320 bytes of heap
	// before the guest sent anything. Slots are taken last-freed first,
	// so a shallow queue only ever grows a few of them.
	for i := range d.free {
		d.free[i] = int32(depth - 1 - i)
	}
	d.out = make(chan Completion, depth)
	d.stop = make(chan struct{})
	return d, nil
}

// SizeOf is the size in bytes of a disk: a regular file or a block
// device.
func SizeOf(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("block: stat %s: %w", f.Name(), err)
	}
	return sizeOf(f, &st)
}

// sizeOf is SizeOf given f's stat.
func sizeOf(f *os.File, st *unix.Stat_t) (int64, error) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return st.Size, nil
	case unix.S_IFBLK:
		n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			return 0, fmt.Errorf("block: BLKGETSIZE64 %s: %w", f.Name(), err)
		}
		return int64(n), nil
	}
	return 0, fmt.Errorf("block: %s is neither a regular file nor a block device", f.Name())
}

// directAlignment finds O_DIRECT's requirements: statx's STATX_DIOALIGN
// (Linux 6.1+), the logical sector size of a block device, or a
// conservative 4096.
func directAlignment(fd int, blockDev bool) Alignment {
	var sx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx); err == nil &&
		sx.Mask&unix.STATX_DIOALIGN != 0 && sx.Dio_offset_align != 0 {
		return Alignment{Memory: int(sx.Dio_mem_align), Offset: int(sx.Dio_offset_align)}
	}
	if blockDev {
		if n, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && n > 0 {
			return Alignment{Memory: n, Offset: n}
		}
	}
	return Alignment{Memory: 4096, Offset: 4096}
}

func (d *disk) Completions() <-chan Completion { return d.out }
func (d *disk) Size() int64                    { return d.size }
func (d *disk) ReadOnly() bool                 { return d.ro }
func (d *disk) Alignment() Alignment           { return d.align }

// check validates a request against the disk; it returns the byte length
// of a read or write.
// check validates r and returns its length in bytes, and whether its
// buffers must go through a bounce buffer: with O_DIRECT, a request whose
// offset and length are aligned but whose guest buffers are not (odd
// addresses, a sector split across two buffers) is copied through an
// aligned buffer rather than failed.
func (d *disk) check(r *Request) (n int64, bounce bool, err error) {
	switch r.Op {
	case Read, Write:
		if r.Op == Write && d.ro {
			return 0, false, ErrReadOnly
		}
		if len(r.Bufs) > maxIovecs {
			return 0, false, fmt.Errorf("%w: %d buffers (max %d)", ErrInvalid, len(r.Bufs), maxIovecs)
		}
		for _, b := range r.Bufs {
			n += int64(len(b))
		}
	case Discard, WriteZeroes:
		if d.ro {
			return 0, false, ErrReadOnly
		}
		if r.Length <= 0 {
			return 0, false, fmt.Errorf("%w: %v of length %d", ErrInvalid, r.Op, r.Length)
		}
		n = r.Length
	case Flush:
		return 0, false, nil
	default:
		return 0, false, fmt.Errorf("%w: %v", ErrInvalid, r.Op)
	}
	// Written so that no sum can overflow: n <= size is checked first.
	if r.Offset < 0 || n > d.size || r.Offset > d.size-n {
		return 0, false, ErrOutOfRange
	}
	if a := d.align; a.Offset > 1 {
		if r.Offset%int64(a.Offset) != 0 || n%int64(a.Offset) != 0 {
			return 0, false, ErrMisaligned
		}
		for _, b := range r.Bufs {
			if len(b)%a.Offset != 0 || (len(b) > 0 && a.Memory > 1 && addr(b)%uintptr(a.Memory) != 0) {
				if n > maxBounce {
					return 0, false, fmt.Errorf("%w: %d-byte request with unaligned buffers (bounce limit %d)", ErrMisaligned, n, maxBounce)
				}
				return n, true, nil
			}
		}
	}
	return n, false, nil
}

// take validates r and reserves a slot for it; d.mu must be held.
func (d *disk) take(r *Request) (int32, *slot, error) {
	if d.closing {
		return 0, nil, ErrClosed
	}
	n, bounce, err := d.check(r)
	if err != nil {
		return 0, nil, err
	}
	if len(d.free) == 0 {
		return 0, nil, ErrBusy
	}
	i := d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	s := &d.slots[i]
	s.req = *r
	s.bufs = append(s.bufs[:0], r.Bufs...)
	s.req.Bufs = nil
	s.len, s.done, s.canceled = n, 0, 0
	if bounce {
		s.useBounce(int(n), d.align.Memory)
	}
	return i, s, nil
}

// maxBounce bounds a request copied through a bounce buffer: larger than
// any request Linux's virtio-blk driver sends by default (seg_max 254 times
// a page is about 1 MiB), small enough that a slot's buffer stays cheap.
const maxBounce = 4 << 20

// useBounce moves the request's guest buffers aside and points the slot at
// an aligned buffer of n bytes, filled with the data of a write. The buffer
// is kept for the slot's next misaligned request, so a guest that sends
// many allocates once per slot.
func (s *slot) useBounce(n, align int) {
	align = max(align, sectorSize)
	if cap(s.bounce) < n {
		raw := make([]byte, (n+65535)&^65535+align)
		start := (align - int(addr(raw)%uintptr(align))) % align
		s.bounce = raw[start : start+(n+65535)&^65535]
	}
	buf := s.bounce[:n]
	s.guest = append(s.guest[:0], s.bufs...)
	if s.req.Op == Write {
		off := 0
		for _, b := range s.guest {
			off += copy(buf[off:], b)
		}
	}
	s.bufs = append(s.bufs[:0], buf)
}

// endBounce copies what a read brought into the bounce buffer out to the
// guest's buffers and drops them.
func (s *slot) endBounce() {
	if s.req.Op == Read {
		data := s.bounce[:s.done]
		for _, b := range s.guest {
			data = data[copy(b, data):]
		}
	}
	clear(s.guest)
	s.guest = s.guest[:0]
}

// release returns slot i to the free list and gives the completion to
// deliver and where; d.mu must be held.
func (d *disk) release(i int32, err error) (Completion, Completer) {
	s := &d.slots[i]
	c := Completion{Cookie: s.req.Cookie, N: s.done, Err: err}
	to := s.req.Done
	s.req.Done = nil
	if err == nil && (s.req.Op == Discard || s.req.Op == WriteZeroes) {
		c.N = s.req.Length
	}
	if len(s.guest) > 0 {
		s.endBounce()
	}
	clear(s.bufs) // drop references to guest buffers
	s.bufs = s.bufs[:0]
	d.free = append(d.free, i)
	return c, to
}

// deliver hands c to its Completer, or to the Completions channel unless
// Close has begun.
func (d *disk) deliver(c Completion, to Completer) {
	if to != nil {
		to.Complete(c)
		return
	}
	select {
	case d.out <- c:
	case <-d.stop:
	}
}

// fillIov points s.iov at the part of s.bufs not yet transferred.
func (s *slot) fillIov() {
	s.iov = s.iov[:0]
	skip := s.done
	for _, b := range s.bufs {
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		b = b[skip:]
		skip = 0
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		s.iov = append(s.iov, v)
	}
}

// zeroRest fills the part of a read's buffers not yet transferred with
// zeros: it lies past the end of the file.
func (s *slot) zeroRest() {
	skip := s.done
	for _, b := range s.bufs {
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		clear(b[skip:])
		skip = 0
	}
	s.done = s.len
}

// fallocMode is the first fallocate mode to try for op.
func fallocMode(op Op) uint32 {
	if op == WriteZeroes {
		return unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	return unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
}

// fallocFallback returns the mode to retry with after EOPNOTSUPP, or 0. A
// punched hole reads as zeros, so it stands in for ZERO_RANGE on file
// systems without it (tmpfs); it may deallocate the range, which
// WRITE_ZEROES permits.
func fallocFallback(mode uint32) uint32 {
	if mode&unix.FALLOC_FL_ZERO_RANGE != 0 {
		return unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	return 0
}

// opError wraps a failed operation's errno with context.
func opError(op Op, errno unix.Errno) error {
	if errno == unix.EOPNOTSUPP {
		return fmt.Errorf("%w: %v: %w", ErrUnsupported, op, errno)
	}
	return fmt.Errorf("block %v: %w", op, errno)
}
