package block

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/internal/uring"
)

// Uring serves requests through one io_uring: Submit prepares an SQE and
// enters the kernel; a reaper goroutine sleeps on an eventfd registered
// with the ring, reaps completions, resubmits the remainder of short reads
// and writes, and delivers completions. Discard and WriteZeroes are
// IORING_OP_FALLOCATE, Flush is IORING_OP_FSYNC with IORING_FSYNC_DATASYNC
// and no IOSQE_IO_DRAIN (see the package comment for what it covers).
type Uring struct {
	*disk
	ring    *uring.Ring
	efd     *os.File // eventfd, non-blocking, so reads park in the netpoller
	reaped  chan struct{}
	refused bool // io_uring_enter refused queued SQEs; guarded by mu
	evbuf   [8]byte
	wakebuf [8]byte
}

// NewUring serves f through io_uring. The error wraps uring.ErrUnavailable
// when the kernel or a sandbox forbids io_uring.
func NewUring(f *os.File, o Options) (*Uring, error) {
	d, err := newDisk(f, o)
	if err != nil {
		return nil, err
	}
	ring, err := uring.Setup(uint32(len(d.slots)))
	if err != nil {
		return nil, err
	}
	for _, op := range []uint8{uring.OpReadv, uring.OpWritev, uring.OpFsync, uring.OpFallocate} {
		if !ring.Supports(op) {
			ring.Close()
			return nil, fmt.Errorf("%w: kernel lacks io_uring opcode %d", uring.ErrUnavailable, op)
		}
	}
	// Each slot has at most one SQE queued, so an SQ as deep as the slot
	// table never fills; the kernel may have clamped it.
	if sq, _ := ring.Entries(); int(sq) < len(d.slots) {
		d.slots, d.free = d.slots[:sq], d.free[len(d.free)-int(sq):]
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		ring.Close()
		return nil, fmt.Errorf("block: eventfd: %w", err)
	}
	if err := ring.RegisterEventfd(efd); err != nil {
		unix.Close(efd)
		ring.Close()
		return nil, err
	}
	u := &Uring{disk: d, ring: ring, efd: os.NewFile(uintptr(efd), "io_uring-eventfd"), reaped: make(chan struct{})}
	u.wakebuf[0] = 1 // little-endian 1 for eventfd writes
	go u.reap()
	return u, nil
}

// Kind implements Backend.
func (u *Uring) Kind() string { return "io_uring" }

// Describe says where the ring's requests are, for a dump of a stalled
// machine: slots the worker gave it, SQEs not yet taken by the kernel, CQEs
// not yet reaped, whether the kernel refused the last submission, and the
// counter of the eventfd the reaper sleeps on (set while it sleeps: a
// wake-up lost between the kernel and the reaper). A request neither
// queued nor completed is in the kernel.
func (u *Uring) Describe() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closing { // the ring may be unmapped already
		return fmt.Sprintf("io_uring: closed, %d of %d slots in flight", len(u.slots)-len(u.free), len(u.slots))
	}
	efd := "?"
	// Not u.efd.Fd(), which would make the descriptor blocking.
	if rc, err := u.efd.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if n, err := eventfd.Peek(int(fd)); err == nil {
				efd = strconv.FormatUint(n, 10)
			}
		})
	}
	return fmt.Sprintf("io_uring: %d of %d slots in flight, %d SQEs not taken by the kernel, %d CQEs not reaped, refused=%v overflow=%v eventfd=%s",
		len(u.slots)-len(u.free), len(u.slots), u.ring.Pending(), u.ring.Ready(), u.refused, u.ring.Overflowed(), efd)
}

// Submit implements Backend.
func (u *Uring) Submit(r Request) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	i, s, err := u.take(&r)
	if err != nil {
		return err
	}
	if s.req.Op == Discard || s.req.Op == WriteZeroes {
		s.mode = fallocMode(s.req.Op)
	}
	if err := u.queue(i, s); err != nil {
		u.release(i, nil) // no completion is owed: Submit fails
		return err
	}
	if !r.Defer {
		u.submit()
	}
	return nil
}

// Commit implements Backend: one io_uring_enter for every deferred SQE.
func (u *Uring) Commit() {
	u.mu.Lock()
	u.submit()
	u.mu.Unlock()
}

// submit hands every queued SQE to the kernel; u.mu must be held. When the
// kernel refuses some, the reaper retries; SQEs queued with Defer are left
// for Commit, never started behind the submitter's back.
func (u *Uring) submit() {
	_, err := u.ring.Submit()
	u.refused = err != nil && u.ring.Pending() > 0
}

// queue prepares the SQE for what remains of slot i; u.mu must be held.
// The caller enters the kernel (ring.Submit), at once or for a batch. It
// fails only when no SQE was queued. A failed io_uring_enter (EAGAIN,
// EBUSY, anything) leaves the SQE queued, so the request is still in
// flight: the reaper submits it again later.
func (u *Uring) queue(i int32, s *slot) error {
	var err error
	ud := uint64(i)
	switch s.req.Op {
	case Read, Write:
		s.fillIov()
		off := uint64(s.req.Offset + s.done)
		if s.req.Op == Read {
			err = u.ring.PrepReadv(u.fd, s.iov, off, ud)
		} else {
			err = u.ring.PrepWritev(u.fd, s.iov, off, ud)
		}
	case Flush:
		err = u.ring.PrepFsync(u.fd, uring.FsyncDatasync, 0, ud)
	default:
		err = u.ring.PrepFallocate(u.fd, s.mode, uint64(s.req.Offset), uint64(s.req.Length), ud)
	}
	if err != nil {
		// Cannot happen while the SQ is as deep as the slot table.
		return fmt.Errorf("%w: %w", ErrBusy, err)
	}
	return nil
}

// maxCanceled bounds how often one request is sent again after the kernel
// completed it with ECANCELED. This backend never cancels a request (no
// IORING_OP_ASYNC_CANCEL, no linked SQEs, no timeouts), but the kernel
// does, before the request starts, when it cannot start the io-wq worker
// thread that would run it: an fsync, a fallocate or a buffered write to
// most filesystems goes to such a worker, and Linux since the io-wq
// change "limit retrying worker initialisation" (2024, also in the stable
// series) gives up after three failed attempts to create one. An attempt
// fails when a signal is pending on the submitting thread (the Go runtime
// sends its threads preemption signals all the time: a VMM under TCG
// lost a guest write to this, "block write: operation canceled") or when
// the thread limit (RLIMIT_NPROC, pids.max) is reached. The first is
// passing, the second may be: a few tries, then the error.
const maxCanceled = 8

// testHookCanceled, when set, runs before a canceled request is sent again.
var testHookCanceled func()

// reap runs until Close, turning CQEs into completions.
func (u *Uring) reap() {
	defer close(u.reaped)
	for {
		for {
			c, ok := u.ring.PopCQE()
			if !ok {
				if u.ring.Overflowed() {
					u.ring.FlushOverflow()
					continue
				}
				break
			}
			u.complete(c)
		}
		u.mu.Lock()
		if u.refused {
			u.submit() // SQEs refused earlier with EAGAIN/EBUSY
		}
		stuck := u.refused
		done := u.closing && len(u.free) == len(u.slots)
		u.mu.Unlock()
		if done {
			return
		}
		if stuck {
			// The kernel still refuses SQEs: reap what completes meanwhile
			// and retry shortly.
			time.Sleep(time.Millisecond)
			continue
		}
		// Completions posted after the loop above have already signalled the
		// eventfd, so this read returns at once for them: no lost wake-up.
		if _, err := u.efd.Read(u.evbuf[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return // the eventfd is closed only after this goroutine exits
		}
	}
}

// complete handles one CQE: finish, retry the remainder, or fall back. It
// runs under u.mu, which also orders the slot writes made by Submit before
// these reads for the race detector (it cannot see the kernel's ordering).
func (u *Uring) complete(c uring.CQE) {
	if c.UserData >= uint64(len(u.slots)) {
		return // not ours; cannot happen
	}
	i := int32(c.UserData)
	u.mu.Lock()
	s := &u.slots[i]
	var err error
	switch {
	case c.Res < 0:
		errno := unix.Errno(-c.Res)
		switch {
		case errno == unix.EINTR || errno == unix.EAGAIN:
			if u.queue(i, s) == nil {
				u.submit()
				u.mu.Unlock()
				return
			}
		case errno == unix.ECANCELED && s.canceled < maxCanceled:
			// The kernel dropped the request before starting it: see
			// maxCanceled. Nothing of it was done, so it is sent again.
			s.canceled++
			if testHookCanceled != nil {
				testHookCanceled()
			}
			if u.queue(i, s) == nil {
				u.submit()
				u.mu.Unlock()
				return
			}
		case errno == unix.EOPNOTSUPP && s.req.Op == WriteZeroes && fallocFallback(s.mode) != 0:
			s.mode = fallocFallback(s.mode)
			if u.queue(i, s) == nil {
				u.submit()
				u.mu.Unlock()
				return
			}
		}
		err = opError(s.req.Op, errno)
	case s.req.Op == Read || s.req.Op == Write:
		s.done += int64(c.Res)
		if s.done < s.len {
			switch {
			case c.Res == 0 && s.req.Op == Read:
				s.zeroRest() // end of file: the rest of the disk reads as zeros
			case c.Res == 0:
				err = ErrShortWrite
			default: // short transfer: continue where it stopped
				if err = u.queue(i, s); err == nil {
					u.submit()
					u.mu.Unlock()
					return
				}
			}
		}
	}
	comp, to := u.release(i, err)
	u.mu.Unlock()
	u.deliver(comp, to)
}

// Close implements Backend. Requests in the kernel are waited for, because
// the kernel writes into their buffers until it completes them.
func (u *Uring) Close() error {
	u.mu.Lock()
	if u.closing {
		u.mu.Unlock()
		return nil
	}
	u.closing = true
	u.closed.Store(true)
	u.mu.Unlock()
	close(u.stop)
	u.efd.Write(u.wakebuf[:]) // wake the reaper so it notices closing
	<-u.reaped
	err := u.ring.UnregisterEventfd()
	if cerr := u.ring.Close(); err == nil {
		err = cerr
	}
	if cerr := u.efd.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("block: close eventfd: %w", cerr)
	}
	close(u.out)
	return err
}
