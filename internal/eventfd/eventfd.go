// Package eventfd signals eventfds: the kicks and interrupts a VMM, KVM
// and the switch pass each other (ioeventfd, irqfd, vhost-user's kick and
// call descriptors).
package eventfd

import "golang.org/x/sys/unix"

// Signal adds 1 to the eventfd fd's counter. A counter already at its
// maximum (EAGAIN on a non-blocking eventfd) is signalled already: not an
// error. An interrupted write is retried. It allocates nothing.
func Signal(fd int) error {
	one := [8]byte{1}
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
