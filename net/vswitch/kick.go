package vswitch

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
)

// kickWaiter waits for a driver's notifications on a kick eventfd. Given a
// pending function (the ring has work), it does so without reading the
// eventfd: Go's poller waits for edges (EPOLLET), and every write to an
// eventfd is one, drained or not. That saves two system calls per wake-up
// (the read that drains the counter and the one that finds it empty), a
// fifth of the switch's in the network benchmark, where each system call
// of an emulated appliance costs microseconds. The counter then grows by
// one per kick: 2^64 kicks away from saturating. Without pending it reads
// (drains) the eventfd, as a plain blocking read would.
type kickWaiter struct {
	f       *os.File // a duplicate of the kick eventfd, waited on by Go's poller
	rc      syscall.RawConn
	pending func() bool
	woken   bool
	err     error
	ready   func(uintptr) bool // made once: a closure per wait would allocate
}

// newKickWaiter duplicates an eventfd (so that closing ours never closes
// the caller's) as a non-blocking file Go's poller waits on, whose wait a
// read deadline interrupts. O_NONBLOCK is on the shared file description,
// which is harmless for an eventfd only KVM or the frontend writes.
// pending, if not nil, tells whether the ring already has work; it is
// called on the waiting goroutine.
func newKickWaiter(efd int, pending func() bool) (*kickWaiter, error) {
	fd, err := unix.FcntlInt(uintptr(efd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup kick eventfd: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kick eventfd non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), "kick")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kick eventfd: %w", err)
	}
	k := &kickWaiter{f: f, rc: rc, pending: pending}
	k.ready = k.check
	return k, nil
}

// check is RawConn.Read's question, asked once when a wait begins and
// again after each wake-up of the poller: may the wait end?
func (k *kickWaiter) check(fd uintptr) bool {
	if k.pending == nil {
		set, err := eventfd.Drain(int(fd))
		k.err = err
		return set || err != nil
	}
	if k.woken {
		return true
	}
	// The wait began: Go's poller has just forgotten any notification
	// it saw before, so ask the ring whether one came.
	k.woken = true
	return k.pending()
}

// wait returns after the next notification, at once if the ring has work
// (pending) or a notification came since the previous wait (without
// pending: the counter was not zero), and with os.ErrDeadlineExceeded (now
// and from then on) once interrupt was called. Only one goroutine may wait.
func (k *kickWaiter) wait() error {
	k.woken, k.err = false, nil
	if err := k.rc.Read(k.ready); err != nil {
		return err
	}
	return k.err
}

// interrupt ends the current and every later wait.
func (k *kickWaiter) interrupt() { k.f.SetReadDeadline(time.Now()) }

func (k *kickWaiter) close() error { return k.f.Close() }
