package virtiopci

import (
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/internal/holdp"
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
// index, one call at a time, until stop. A kick that returns a delay is
// called again for that queue once the delay has passed, kicked or not
// (Poller: a device polling its ring while it holds notifications off);
// the wait then has a timeout (epoll_pwait2, to the nanosecond).
//
// It blocks in epoll_wait, a system call, rather than parking in Go's
// network poller (the epoll set is itself pollable). Both were measured
// with the waiter a request really has, a thread blocked in a system call
// as a halted vCPU is in KVM_RUN (BenchmarkKickRoundTrip: kick, a 4 KiB
// pread, the interrupt eventfd): the blocking wait was 12.2-12.7 µs a
// round trip on one CPU against 14.1-15.3 µs parked, 17.8-21.5 against
// 23.8-25.8 on two; a parked goroutine is woken by the poller's thread,
// which must first find a P. In the test bed's appliance the parked loop
// took 4 KiB reads at queue depth 1 from 1.38x QEMU's rate to 0.67-0.79x.
// (A waiter parked on a Go channel, as an earlier benchmark had it,
// favours the poller, 12 µs against 32: that benchmark measured the
// waiter's wake-up, not the loop's.)
//
// With hold (Transport.SetHoldP), a wait after one that found kicks keeps
// the goroutine's P (package holdp: epoll_wait made raw; any signal ends
// it with EINTR, epoll waits are never restarted, and the wait after that
// is a plain system call, so an idle device's loop gives its P up). At a
// thread blocked 200 µs in a system call between notifications
// (BenchmarkKickRoundTrip/think-200us, GOMAXPROCS 3) the round trip made
// 3.4-3.5 futex calls, 0.12 held. The process needs a P for each held
// loop (the machine package's Machine.Procs counts them).
type kickLoop struct {
	epfd   int
	stopfd int
	wait   holdp.Waiter // the loop's epoll waits
	pwait2 uintptr      // epoll_pwait2's number, or 0 where the kernel lacks it
	// What the kernel reads and writes in a wait, on the heap: their
	// addresses pass as uintptrs through Waiter.Syscall6, a function
	// whose prologue may move the goroutine's stack.
	events []unix.EpollEvent
	ts     unix.Timespec
	done   chan struct{}
}

// startKickLoop starts the goroutine. Its first act is to kick every
// queue once, for buffers the driver made available before the device
// ran.
func startKickLoop(fds []int, kick func(q int) time.Duration, hold bool) (*kickLoop, error) {
	return startKickLoopWith(fds, kick, hold, unix.SYS_EPOLL_PWAIT2)
}

// startKickLoopWith is startKickLoop with epoll_pwait2's number (a test's
// ENOSYS).
func startKickLoopWith(fds []int, kick func(q int) time.Duration, hold bool, pwait2 uintptr) (*kickLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &kickLoop{epfd: epfd, stopfd: stopfd, done: make(chan struct{}), pwait2: pwait2}
	l.wait.SetHold(hold)
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

func (l *kickLoop) run(fds []int, kick func(q int) time.Duration) {
	defer close(l.done)
	// On a thread of its own, never unlocked (the runtime ends the thread
	// with the goroutine), whose timer slack is set once: a thread's
	// timeouts run late by its slack, 50 µs by default, longer than a
	// poll interval on a fast host. (Set before each timed wait instead,
	// as the goroutine could move between threads, it cost a system call
	// for every third request at queue depth 4 in the TCG test bed.) The
	// loop holds a thread anyway while it waits in epoll.
	runtime.LockOSThread()
	unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_TIMERSLACK, pollSlack, 0)
	// due[q] is when queue q asked to be called again, or zero.
	due := make([]time.Time, len(fds))
	call := func(q int) {
		due[q] = time.Time{}
		if d := kick(q); d > 0 {
			due[q] = time.Now().Add(d)
		}
	}
	for q, fd := range fds {
		drainEventFD(fd)
		call(q)
	}
	l.events = make([]unix.EpollEvent, len(fds)+1)
	events := l.events
	for {
		// epoll_wait(epfd, events, -1) (epoll_pwait without a mask),
		// or epoll_pwait2 with the time left to the earliest poll: its
		// timeout is a timespec, where epoll_pwait's is in milliseconds.
		trap, timeout := uintptr(unix.SYS_EPOLL_PWAIT), ^uintptr(0)
		next, timed := earliest(due)
		if timed {
			left := max(time.Until(next), 0)
			l.ts = unix.NsecToTimespec(int64(left))
			trap, timeout = l.pwait2, uintptr(unsafe.Pointer(&l.ts))
			if l.pwait2 == 0 {
				// A kernel before 5.11: milliseconds, rounded up.
				trap, timeout = unix.SYS_EPOLL_PWAIT, uintptr((left+time.Millisecond-1)/time.Millisecond)
			}
		}
		r, err := l.wait.Syscall6(trap, uintptr(l.epfd), uintptr(unsafe.Pointer(&events[0])),
			uintptr(len(events)), timeout, 0, 0)
		n := int(r)
		if err == unix.EINTR {
			continue
		}
		if (err == unix.ENOSYS || err == unix.EPERM) && timed && l.pwait2 != 0 {
			// No epoll_pwait2: an older kernel, or a container's
			// seccomp profile that refuses system calls it does not
			// know with EPERM.
			l.pwait2 = 0
			continue
		}
		if err != 0 {
			return // the epoll fd is broken; nothing more can be waited for
		}
		for _, ev := range events[:n] {
			if ev.Fd < 0 {
				return
			}
			// Drain before serving: a kick arriving while the device
			// works leaves the eventfd set for the next round.
			if q := int(ev.Fd); q < len(fds) && drainEventFD(fds[q]) {
				call(q)
			}
		}
		var now time.Time // read once, and only if a poll is due
		for q, t := range due {
			if t.IsZero() {
				continue
			}
			if now.IsZero() {
				now = time.Now()
			}
			if !now.Before(t) {
				call(q)
			}
		}
	}
}

// pollSlack is the timer slack, in ns, of a thread waiting for a poll.
const pollSlack = 1000

// earliest returns the earliest non-zero time in due.
func earliest(due []time.Time) (time.Time, bool) {
	var first time.Time
	for _, t := range due {
		if !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first, !first.IsZero()
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
