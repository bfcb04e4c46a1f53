package virtiopci

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
)

// newEventFDs creates n non-blocking eventfds, one per queue: KVM signals
// them from ioeventfds, the MMIO fallback from a vCPU thread.
func newEventFDs(n int) ([]int, error) {
	fds := make([]int, 0, n)
	for range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func closeFDs(fds []int) error {
	var errs []error
	for _, fd := range fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// drainEventFD clears an eventfd's counter and reports whether it was set.
func drainEventFD(fd int) bool {
	set, _ := eventfd.Drain(fd)
	return set
}

func drainEventFDs(fds []int) {
	for _, fd := range fds {
		drainEventFD(fd)
	}
}

// kickLoop is the notification goroutine: it waits on every queue's
// eventfd with an epoll set of its own and calls kick with the queue
// index, one call at a time, until stop.
//
// It waits in Go's network poller, not in epoll_wait: the epoll descriptor
// is itself pollable (readable when one of its eventfds is set), so the
// goroutine parks between kicks instead of blocking its thread in a system
// call. A thread blocked in a system call holds a P the runtime's monitor
// takes back after 20 µs and hands to another thread, which spins and
// sleeps looking for work; a disk in the test bed, kicked about a thousand
// times a second, paid ~3 futex, nanosleep and sched_yield calls per
// request for that (the disk benchmark's system calls per request).
type kickLoop struct {
	epfd   int
	stopfd int
	done   chan struct{}
}

// startKickLoop starts the goroutine. Its first act is to kick every
// queue once, for buffers the driver made available before the device
// ran. It may be called on a vCPU thread, whose seccomp filter allows the
// epoll set but not fcntl: the goroutine (never on a vCPU's locked thread)
// hands the set to the poller.
func startKickLoop(fds []int, kick func(q int)) (*kickLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &kickLoop{epfd: epfd, stopfd: stopfd, done: make(chan struct{})}
	add := func(fd int, tag int32) error {
		return unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: tag})
	}
	if err := add(stopfd, -1); err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	for q, fd := range fds {
		if err := add(fd, int32(q)); err != nil {
			l.closeFDs()
			return nil, fmt.Errorf("epoll: %w", err)
		}
	}
	go l.run(fds, kick)
	return l, nil
}

func (l *kickLoop) run(fds []int, kick func(q int)) {
	defer close(l.done)
	for q, fd := range fds {
		drainEventFD(fd)
		kick(q)
	}
	events := make([]unix.EpollEvent, len(fds)+1)
	// serve takes what the set holds without waiting, and reports
	// whether the loop is to end.
	serve := func(epfd int) (stop bool) {
		for {
			n, err := unix.EpollWait(epfd, events, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return true // the epoll fd is broken; nothing more can be waited for
			}
			if n == 0 {
				return false
			}
			for _, ev := range events[:n] {
				if ev.Fd < 0 {
					return true
				}
				// Drain before serving: a kick arriving while the
				// device works leaves the eventfd set for the next
				// round.
				if q := int(ev.Fd); q < len(fds) && drainEventFD(fds[q]) {
					kick(q)
				}
			}
		}
	}
	f, err := pollable(l.epfd)
	if err != nil {
		// No poller for it: wait in epoll_wait itself.
		for !serve(l.epfd) {
			if _, err := unix.EpollWait(l.epfd, events[:1], -1); err != nil && err != unix.EINTR {
				return
			}
		}
		return
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	// RawConn.Read calls the function, and while it returns false waits
	// for the descriptor to become readable; a readiness from before the
	// call is not lost, since the function looks at the set first.
	rc.Read(func(fd uintptr) bool { return serve(int(fd)) })
}

// pollable gives Go's poller a duplicate of the epoll descriptor fd
// (closing the File then leaves fd to stop): non-blocking, as the poller
// wants its descriptors.
func pollable(fd int) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, err
	}
	return os.NewFile(uintptr(dup), "kick-epoll"), nil
}

// stop ends the goroutine and waits for it, so that no kick runs after
// stop returns.
func (l *kickLoop) stop() {
	eventfd.Signal(l.stopfd)
	<-l.done
	l.closeFDs()
}

func (l *kickLoop) closeFDs() {
	unix.Close(l.epfd)
	unix.Close(l.stopfd)
}
