// Package peerfd checks the descriptors a vhost-user peer passes over its
// socket before the switch relies on them. A peer is as untrusted as the
// guest behind it: a pipe it never reads where an eventfd was promised
// would block the writer, a regular file where a kick eventfd was
// promised would make the poller spin, and an unsealed memory file can be
// shrunk under the switch's mapping, turning the next access into SIGBUS.
package peerfd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/procfd"
)

// ErrKind is wrapped by every refusal: the descriptor is not of the kind
// the protocol promised.
var ErrKind = errors.New("descriptor of the wrong kind")

// eventfdLink is what /proc/self/fd/N links to for an eventfd. Eventfds
// are anonymous inodes: fstat cannot tell them from other anon inodes
// (epoll, timerfd, signalfd), the link can. The jailed switch has no
// /proc: internal/procfd reads the link through a procfs of its own,
// opened before the jail.
const eventfdLink = "anon_inode:[eventfd]"

// Eventfd checks that fd is an eventfd and makes it non-blocking, so that
// neither a write to a counter the peer saturated nor a read of one nobody
// signalled ever blocks the switch (EAGAIN means "already signalled" or
// "nothing yet"). O_NONBLOCK is set on the file description the peer
// shares, which is harmless: KVM (irqfd, ioeventfd) ignores it and a
// frontend's own reads are non-blocking or poll first.
func Eventfd(fd int) error {
	if fd < 0 {
		return fmt.Errorf("eventfd %d: %w", fd, ErrKind)
	}
	link, err := procfd.Link(fd)
	if err != nil {
		return fmt.Errorf("eventfd %d: %w", fd, err)
	}
	if link != eventfdLink {
		return fmt.Errorf("descriptor %d is %q, not an eventfd: %w", fd, link, ErrKind)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("eventfd %d: set non-blocking: %w", fd, err)
	}
	return nil
}

// RequiredSeals are the seals a memory file must carry before the switch
// maps it: it can then never shrink under the mapping (a shrink turns
// accesses past the new end into SIGBUS, killing every port), nor lose
// its seals. Growing is harmless to a mapping and not required; the
// VMM's and QEMU's memfds carry F_SEAL_GROW as well.
const RequiredSeals = unix.F_SEAL_SHRINK

// SealedMemory checks that fd is a regular file sealed against shrinking
// (a memfd created with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK)
// and returns its size, which the seal makes a lower bound for good.
func SealedMemory(fd int) (size int64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("memory descriptor %d: fstat: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("memory descriptor %d is not a memory file (mode %#o): %w", fd, st.Mode, ErrKind)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		// EINVAL: a file system without sealing (tmpfs file, hugetlbfs
		// path): it could be truncated by anyone holding it.
		return 0, fmt.Errorf("memory descriptor %d has no seals (not a memfd?): %v: %w", fd, err, ErrKind)
	}
	if seals&RequiredSeals != RequiredSeals {
		return 0, fmt.Errorf("memory descriptor %d is not sealed against shrinking (seals %#x, want F_SEAL_SHRINK): %w", fd, seals, ErrKind)
	}
	// Stat again after reading the seals: a shrink between the first
	// fstat and the seal cannot happen any more after it.
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("memory descriptor %d: fstat: %w", fd, err)
	}
	return st.Size, nil
}
