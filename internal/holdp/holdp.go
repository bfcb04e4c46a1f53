// Package holdp lets a goroutine that keeps waiting in the same blocking
// system call (a vCPU in KVM_RUN, a device's loop in epoll_wait) keep its
// P, the Go scheduler's slot for running Go code, while it waits.
//
// Entered as a system call (syscall.Syscall), a wait leaves the runtime's
// monitor (sysmon) a P in a system call: after 20 µs it hands the P to
// another thread (a futex wake, and a futex sleep when that thread finds
// nothing to run), keeps itself at its shortest period (a nanosleep every
// 20 µs), and the waiter's return must win a P back. A thread blocked
// 200 µs between notifications, what the TCG test bed makes of a request,
// paid 2.2 futex calls and 2.6 of the monitor's nanosleeps per round trip,
// 0.16 and 0.1 with its waits made raw and a P to spare (2026-12-07, perf
// stat; vmm/virtio/pci BenchmarkKickRoundTrip/think-200us). Made raw
// (syscall.RawSyscall), a wait is invisible to the scheduler: the
// goroutine keeps running on its P.
//
// The rule a Waiter applies: after a call that returned without an error
// (the waiter has work, more will likely follow) the next call is raw;
// after an error, an interruption among them, it is a plain system call
// again. That is safe only for calls that any signal ends with EINTR and
// the kernel does not restart (KVM_RUN; epoll_wait and epoll_pwait, which
// are never restarted): the runtime signals a goroutine it must stop, for
// a collection or because it has run 10 ms without a pause, so a held P is
// never withheld for longer; and a waiter with nothing to do (an idle
// guest, an idle device) costs the runtime one such preemption, after
// which it waits as a plain system call and holds no P. The process needs
// a P for each goroutine that may hold one, and one for everything else.
package holdp

import "golang.org/x/sys/unix"

// Waiter is one goroutine's state for its waits. Its zero value never
// holds a P. It is used by that goroutine alone.
type Waiter struct {
	hold bool // SetHold
	raw  bool // the last call returned without an error: the next is raw
}

// SetHold turns the rule on or off; the next call is a plain system call
// either way.
func (w *Waiter) SetHold(on bool) { w.hold, w.raw = on, false }

// Holding reports whether the next call keeps the P.
func (w *Waiter) Holding() bool { return w.raw }

// Syscall6 makes the system call, raw or plain by the rule, and returns
// its result and errno (0 when it succeeded).
func (w *Waiter) Syscall6(trap, a1, a2, a3, a4, a5, a6 uintptr) (uintptr, unix.Errno) {
	var r uintptr
	var e unix.Errno
	if w.raw {
		r, _, e = unix.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
	} else {
		r, _, e = unix.Syscall6(trap, a1, a2, a3, a4, a5, a6)
	}
	w.raw = w.hold && e == 0
	return r, e
}
