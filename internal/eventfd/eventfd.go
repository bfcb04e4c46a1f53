// Package eventfd signals and drains eventfds: the kicks and interrupts a
// VMM, KVM and the switch pass each other (ioeventfd, irqfd, vhost-user's
// kick and call descriptors).
package eventfd

import "golang.org/x/sys/unix"

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
