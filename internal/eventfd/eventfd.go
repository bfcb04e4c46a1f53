// Package eventfd signals, drains and peeks at eventfds: the kicks and interrupts a
// VMM, KVM and the switch pass each other (ioeventfd, irqfd, vhost-user's
// kick and call descriptors).
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
	for {
		_, err := unix.Write(fd, one[:])
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return nil
		}
		return err
	}
}

// Drain reads, and so clears, the eventfd fd's counter and reports whether
// it was set. A non-blocking eventfd at zero (EAGAIN) is not set, and not
// an error. An interrupted read is retried.
func Drain(fd int) (set bool, err error) {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		switch err {
		case nil:
			return n == len(b), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false, nil
		}
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
	for {
		_, err := unix.Read(fd, b[:])
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		case nil:
		default:
			return 0, err
		}
		break
	}
	n := binary.NativeEndian.Uint64(b[:])
	for {
		_, err := unix.Write(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("eventfd: putting back %d: %w", n, err)
		}
		return n, nil
	}
}
