// Package eventfd signals, drains and peeks at eventfds: the kicks and
// interrupts a VMM, KVM and the switch pass each other (ioeventfd, irqfd,
// vhost-user's kick and call descriptors).
package eventfd

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// one is the 8 bytes every signal writes: the counter's increment in the
// host's (little-endian) order. A package variable rather than a local:
// under the race detector a local buffer handed to unix.Write escapes and
// each signal would allocate. The kernel only reads it.
var one = [8]byte{1}

// Signal adds 1 to the eventfd fd's counter. A counter already at its
// maximum (EAGAIN on a non-blocking eventfd) is signalled already: not an
// error. An interrupted write is retried. It allocates nothing.
func Signal(fd int) error {
	if err := add(fd, one[:]); err != unix.EAGAIN {
		return err
	}
	return nil
}

// Drain reads, and so clears, the eventfd fd's counter and reports whether
// it was set. A non-blocking eventfd at zero (EAGAIN) is not set, and not
// an error. An interrupted read is retried.
func Drain(fd int) (set bool, err error) {
	var b [8]byte
	switch err := take(fd, &b); err {
	case nil:
		return true, nil
	case unix.EAGAIN:
		return false, nil
	default:
		return false, err
	}
}

// Peek reads the non-blocking eventfd fd's counter and puts it back: for
// a dump of a stalled machine, where a counter left set on a descriptor
// someone waits on says a signal was never taken. It needs no file system
// (a jailed VMM may not open /proc/self/fdinfo, which has the counter),
// so it briefly takes the counter: a reader in between finds it empty and
// waits, and the write that puts it back wakes that reader as the
// original signal would have. A blocking eventfd at zero would block here.
func Peek(fd int) (uint64, error) {
	var b [8]byte
	switch err := take(fd, &b); err {
	case nil:
	case unix.EAGAIN:
		return 0, nil
	default:
		return 0, err
	}
	n := binary.NativeEndian.Uint64(b[:])
	if err := add(fd, b[:]); err != nil {
		return n, fmt.Errorf("eventfd: putting back %d: %w", n, err)
	}
	return n, nil
}

// take reads the counter into b, clearing it; an interrupted read is
// retried, any other error (EAGAIN: the counter is zero) returned as is.
func take(fd int, b *[8]byte) error {
	for {
		_, err := unix.Read(fd, b[:])
		if err != unix.EINTR {
			return err
		}
	}
}

// add writes b, a counter increment in the host's order; an interrupted
// write is retried, any other error (EAGAIN: the counter would overflow)
// returned as is.
func add(fd int, b []byte) error {
	for {
		_, err := unix.Write(fd, b)
		if err != unix.EINTR {
			return err
		}
	}
}
