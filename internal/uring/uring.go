// Package uring is a small io_uring binding for file I/O: ring setup with
// feature checks, SQE preparation for the operations a block device needs,
// completion reaping, and an eventfd for sleeping until completions arrive.
//
// A Ring has two independent sides. The submission side (Prep*, Submit,
// Pending) must be used by one goroutine at a time; so must the completion
// side (PopCQE, FlushOverflow, Overflowed). The two sides may run
// concurrently, which lets one goroutine submit while another reaps.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnavailable means this process cannot use io_uring at all: the kernel
// lacks it (ENOSYS), it is disabled by the kernel.io_uring_disabled sysctl or
// refused by seccomp/LSM (EPERM, EACCES), or the kernel is too old for the
// features this package relies on. Callers fall back to synchronous I/O.
var ErrUnavailable = errors.New("io_uring unavailable")

// ErrSQFull means the submission queue has no free entry: call Submit (and
// reap completions if it reports ErrBusy) before preparing more.
var ErrSQFull = errors.New("io_uring: submission queue full")

// ErrBusy means io_uring_enter answered EAGAIN or EBUSY: the kernel is short
// of resources or has overflowed completions to flush. The prepared entries
// stay queued; reap completions and submit again.
var ErrBusy = errors.New("io_uring: kernel busy, retry after reaping completions")

// Ring is one io_uring instance with its mapped rings.
type Ring struct {
	fd       int
	features uint32
	ops      [4]uint64 // bitset of supported opcodes from IORING_REGISTER_PROBE

	sqMem, cqMem, sqeMem []byte

	sqHead, sqTail, sqFlags, sqDropped *uint32
	sqMask, sqEntries                  uint32
	sqes                               []SQE
	sqLocal                            uint32 // tail including prepared, unpublished SQEs

	cqHead, cqTail, cqOverflow *uint32
	cqMask, cqEntries          uint32
	cqes                       []CQE
}

// Setup creates a ring with at least entries submission slots (the kernel
// rounds up to a power of two and clamps to its maximum) and a completion
// queue twice that size. It requires IORING_FEAT_NODROP, so a completion is
// never lost on CQ overflow, and IORING_REGISTER_PROBE (Linux 5.6+), so
// Supports can answer; it fails with an error wrapping ErrUnavailable when
// io_uring cannot be used.
func Setup(entries uint32) (*Ring, error) {
	if entries == 0 {
		return nil, fmt.Errorf("io_uring setup: zero entries")
	}
	var p params
	p.Flags = setupClamp | setupCQSize
	p.CQEntries = 2 * entries
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, setupError(entries, errno)
	}
	r := &Ring{fd: int(fd), features: p.Features}
	if err := r.init(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// setupError classifies an io_uring_setup failure: ENOSYS (no io_uring in the
// kernel, or a seccomp filter answering ENOSYS), EPERM (the
// kernel.io_uring_disabled sysctl, or seccomp) and EACCES (an LSM) mean
// io_uring is unavailable to this process; anything else is a real error.
func setupError(entries uint32, errno unix.Errno) error {
	switch errno {
	case unix.ENOSYS, unix.EPERM, unix.EACCES:
		return fmt.Errorf("%w: io_uring_setup: %w", ErrUnavailable, errno)
	}
	return fmt.Errorf("io_uring_setup(%d): %w", entries, errno)
}

func (r *Ring) init(p *params) error {
	if p.Features&FeatNoDrop == 0 {
		return fmt.Errorf("%w: kernel lacks IORING_FEAT_NODROP (needs Linux 5.5+)", ErrUnavailable)
	}
	sqSize := int(p.SQOff.Array) + int(p.SQEntries)*4
	cqSize := int(p.CQOff.CQEs) + int(p.CQEntries)*int(unsafe.Sizeof(CQE{}))
	var err error
	if p.Features&FeatSingleMmap != 0 {
		// One mapping serves both rings; it must cover the larger.
		size := max(sqSize, cqSize)
		if r.sqMem, err = mmap(r.fd, offSQRing, size); err != nil {
			return err
		}
		r.cqMem = r.sqMem
	} else {
		if r.sqMem, err = mmap(r.fd, offSQRing, sqSize); err != nil {
			return err
		}
		if r.cqMem, err = mmap(r.fd, offCQRing, cqSize); err != nil {
			return err
		}
	}
	if r.sqeMem, err = mmap(r.fd, offSQEs, int(p.SQEntries)*int(unsafe.Sizeof(SQE{}))); err != nil {
		return err
	}

	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	r.sqHead = u32(r.sqMem, p.SQOff.Head)
	r.sqTail = u32(r.sqMem, p.SQOff.Tail)
	r.sqFlags = u32(r.sqMem, p.SQOff.Flags)
	r.sqDropped = u32(r.sqMem, p.SQOff.Dropped)
	r.sqMask = *u32(r.sqMem, p.SQOff.RingMask)
	r.sqEntries = *u32(r.sqMem, p.SQOff.RingEntries)
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&r.sqeMem[0])), r.sqEntries)
	r.sqLocal = atomic.LoadUint32(r.sqTail)
	// The SQ array indirection is fixed to the identity: slot i of the ring
	// always names SQE i, so submitting never touches the array again.
	array := unsafe.Slice(u32(r.sqMem, p.SQOff.Array), r.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}

	r.cqHead = u32(r.cqMem, p.CQOff.Head)
	r.cqTail = u32(r.cqMem, p.CQOff.Tail)
	r.cqOverflow = u32(r.cqMem, p.CQOff.Overflow)
	r.cqMask = *u32(r.cqMem, p.CQOff.RingMask)
	r.cqEntries = *u32(r.cqMem, p.CQOff.RingEntries)
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&r.cqMem[p.CQOff.CQEs])), r.cqEntries)

	var pr probe
	if err := r.register(registerProbe, unsafe.Pointer(&pr), uint32(len(pr.Ops))); err != nil {
		return fmt.Errorf("%w: IORING_REGISTER_PROBE: %v (needs Linux 5.6+)", ErrUnavailable, err)
	}
	for i := 0; i < int(pr.OpsLen) && i < len(pr.Ops); i++ {
		if pr.Ops[i].Flags&opSupported != 0 {
			op := pr.Ops[i].Op
			r.ops[op/64] |= 1 << (op % 64)
		}
	}
	return nil
}

func mmap(fd int, off int64, size int) ([]byte, error) {
	b, err := unix.Mmap(fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("io_uring mmap at %#x: %w", off, err)
	}
	return b, nil
}

// Features returns the IORING_FEAT_* bits the kernel reported.
func (r *Ring) Features() uint32 { return r.features }

// Supports reports whether the kernel implements opcode op.
func (r *Ring) Supports(op uint8) bool { return r.ops[op/64]&(1<<(op%64)) != 0 }

// Entries returns the sizes of the submission and completion queues.
func (r *Ring) Entries() (sq, cq uint32) { return r.sqEntries, r.cqEntries }

// Fd returns the ring's file descriptor.
func (r *Ring) Fd() int { return r.fd }

// next reserves the next SQE, zeroed, or returns nil when the SQ is full.
func (r *Ring) next() *SQE {
	// Acquire: the kernel advances head once it has consumed an SQE, after
	// which the slot may be reused.
	head := atomic.LoadUint32(r.sqHead)
	if r.sqLocal-head >= r.sqEntries {
		return nil
	}
	sqe := &r.sqes[r.sqLocal&r.sqMask]
	*sqe = SQE{}
	r.sqLocal++
	return sqe
}

func iovAddr(iov []unix.Iovec) uint64 {
	if len(iov) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&iov[0])))
}

// PrepReadv queues preadv(fd, iov, off). iov and the memory it points to must
// stay valid and unmoved until the completion is reaped.
func (r *Ring) PrepReadv(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	return r.prepRW(OpReadv, fd, iov, off, userData)
}

// PrepWritev queues pwritev(fd, iov, off); the same lifetime rule as
// PrepReadv applies.
func (r *Ring) PrepWritev(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	return r.prepRW(OpWritev, fd, iov, off, userData)
}

func (r *Ring) prepRW(op uint8, fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	sqe := r.next()
	if sqe == nil {
		return ErrSQFull
	}
	sqe.Opcode = op
	sqe.Fd = int32(fd)
	sqe.Off = off
	sqe.Addr = iovAddr(iov)
	sqe.Len = uint32(len(iov))
	sqe.UserData = userData
	return nil
}

// PrepFsync queues fsync(fd), or fdatasync(fd) with flags FsyncDatasync. It
// covers writes that completed before it starts, not writes still in flight
// (unless sqeFlags carries SQEIODrain).
func (r *Ring) PrepFsync(fd int, flags uint32, sqeFlags uint8, userData uint64) error {
	sqe := r.next()
	if sqe == nil {
		return ErrSQFull
	}
	sqe.Opcode = OpFsync
	sqe.Flags = sqeFlags
	sqe.Fd = int32(fd)
	sqe.OpFlags = flags
	sqe.UserData = userData
	return nil
}

// PrepFallocate queues fallocate(fd, mode, off, length).
func (r *Ring) PrepFallocate(fd int, mode uint32, off, length uint64, userData uint64) error {
	sqe := r.next()
	if sqe == nil {
		return ErrSQFull
	}
	sqe.Opcode = OpFallocate
	sqe.Fd = int32(fd)
	sqe.Off = off
	sqe.Addr = length
	sqe.Len = mode
	sqe.UserData = userData
	return nil
}

// PrepNop queues an operation that completes with result 0.
func (r *Ring) PrepNop(userData uint64) error {
	sqe := r.next()
	if sqe == nil {
		return ErrSQFull
	}
	sqe.Opcode = OpNop
	sqe.UserData = userData
	return nil
}

// Pending returns how many prepared SQEs the kernel has not consumed yet.
func (r *Ring) Pending() uint32 { return r.sqLocal - atomic.LoadUint32(r.sqHead) }

// Submit publishes the prepared SQEs and hands them to the kernel. It returns
// how many the kernel consumed. EINTR is retried; EAGAIN and EBUSY return
// ErrBusy with the entries still queued.
func (r *Ring) Submit() (int, error) {
	// Release: the SQE contents written in Prep* must be visible to the
	// kernel before it can observe the new tail.
	atomic.StoreUint32(r.sqTail, r.sqLocal)
	pending := r.Pending()
	if pending == 0 {
		return 0, nil
	}
	return r.enter(pending, 0, 0)
}

func (r *Ring) enter(toSubmit, minComplete, flags uint32) (int, error) {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN, unix.EBUSY:
			return 0, ErrBusy
		default:
			return 0, fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// Wait blocks in io_uring_enter until at least n completions are available
// (or a signal interrupts it). Callers using an eventfd do not need it.
func (r *Ring) Wait(n uint32) error {
	_, err := r.enter(0, n, enterGetEvents)
	return err
}

// PopCQE removes the oldest completion from the CQ. ok is false when the CQ
// is empty.
func (r *Ring) PopCQE() (c CQE, ok bool) {
	head := *r.cqHead // only this side writes the head
	// Acquire: the kernel writes the CQE before publishing the tail.
	if head == atomic.LoadUint32(r.cqTail) {
		return CQE{}, false
	}
	c = r.cqes[head&r.cqMask]
	// Release: the entry has been copied out; the kernel may reuse it.
	atomic.StoreUint32(r.cqHead, head+1)
	return c, true
}

// Ready returns how many completions wait in the CQ for PopCQE.
func (r *Ring) Ready() uint32 { return atomic.LoadUint32(r.cqTail) - *r.cqHead }

// Overflowed reports whether the kernel holds completions that did not fit in
// the CQ (IORING_SQ_CQ_OVERFLOW). Call FlushOverflow after draining the CQ.
func (r *Ring) Overflowed() bool { return atomic.LoadUint32(r.sqFlags)&sqCQOverflow != 0 }

// FlushOverflow asks the kernel to move overflowed completions into the CQ.
func (r *Ring) FlushOverflow() error {
	_, err := r.enter(0, 0, enterGetEvents)
	if errors.Is(err, ErrBusy) {
		return nil // the kernel flushed what it could; the caller reaps and calls again
	}
	return err
}

// Dropped returns the number of completions the kernel discarded on CQ
// overflow; with IORING_FEAT_NODROP (required by Setup) it stays 0 unless the
// kernel ran out of memory.
func (r *Ring) Dropped() uint32 { return atomic.LoadUint32(r.cqOverflow) }

// RegisterEventfd makes the kernel signal efd whenever it posts a completion.
func (r *Ring) RegisterEventfd(efd int) error {
	fd := int32(efd)
	if err := r.register(registerEventfd, unsafe.Pointer(&fd), 1); err != nil {
		return fmt.Errorf("IORING_REGISTER_EVENTFD: %w", err)
	}
	return nil
}

// UnregisterEventfd undoes RegisterEventfd.
func (r *Ring) UnregisterEventfd() error {
	if err := r.register(unregisterEventfd, nil, 0); err != nil {
		return fmt.Errorf("IORING_UNREGISTER_EVENTFD: %w", err)
	}
	return nil
}

func (r *Ring) register(op uint32, arg unsafe.Pointer, n uint32) error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uintptr(op), uintptr(arg), uintptr(n), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// Close unmaps the rings and closes the descriptor. Operations still in
// flight are cancelled or finished by the kernel; memory they use must stay
// valid until they complete, so callers reap everything first.
func (r *Ring) Close() error {
	if r.fd < 0 {
		return nil
	}
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && &r.cqMem[0] != &r.sqMem[0] {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	r.sqMem, r.cqMem, r.sqeMem, r.sqes, r.cqes = nil, nil, nil, nil, nil
	err := unix.Close(r.fd)
	r.fd = -1
	if err != nil {
		return fmt.Errorf("close io_uring: %w", err)
	}
	return nil
}
