// Package procfd says what a descriptor of the calling process is, as the
// kernel names it in /proc/self/fd/N's link ("anon_inode:[eventfd]",
// "pipe:[1234]"): the one reliable way to tell an eventfd from the other
// anonymous-inode files (epoll, timerfd, signalfd, ...), which fstat cannot
// tell apart.
//
// A jailed process has no /proc: its root is an empty tmpfs, and the host's
// /proc would show it every process of the host. Open, called before the
// jail, mounts a procfs instance of its own, attached at no path, for the
// PID namespace the process is the init of (so it shows that process
// alone) and with nothing but processes in it (subset=pid: no /proc/sys,
// no kcore, no sysrq-trigger), and keeps a descriptor of its self/fd
// directory; Link reads through that descriptor from then on. The kernel
// lets a process read its own descriptors' links whatever its uid and
// capabilities (same thread group), so this survives the jail's change of
// identity, and Landlock does not control readlink.
package procfd

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// table is the descriptor of the private procfs's self/fd directory, or -1
// before Open: Link then reads the host's /proc.
var table atomic.Int32

func init() { table.Store(-1) }

// Open mounts the private procfs and keeps its self/fd directory for Link;
// it needs CAP_SYS_ADMIN (a jail calls it before it gives up root), and
// does nothing when it already succeeded. The descriptor is close-on-exec
// and never closed: the process keeps it for its lifetime.
func Open() error {
	if table.Load() >= 0 {
		return nil
	}
	fs, err := unix.Fsopen("proc", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("procfd: procfs: %w", err)
	}
	defer unix.Close(fs)
	if err := unix.FsconfigSetString(fs, "subset", "pid"); err != nil {
		return fmt.Errorf("procfd: procfs subset=pid: %w", err)
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return fmt.Errorf("procfd: procfs: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC,
		unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return fmt.Errorf("procfd: mount procfs: %w", err)
	}
	defer unix.Close(mnt)
	// "self" is resolved now, to this process's pid in the instance's
	// PID namespace (the caller's).
	d, err := unix.Openat(mnt, "self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("procfd: open self/fd: %w", err)
	}
	if !table.CompareAndSwap(-1, int32(d)) {
		unix.Close(d) // a concurrent Open won
	}
	return nil
}

// Link is the kernel's name for the calling process's descriptor fd: the
// target of its /proc/self/fd/N link, read through Open's procfs when it
// was called, else through /proc.
func Link(fd int) (string, error) {
	if fd < 0 {
		return "", fmt.Errorf("procfd: descriptor %d: %w", fd, unix.EBADF)
	}
	d := int(table.Load())
	if d < 0 {
		return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	}
	name := strconv.Itoa(fd)
	for size := 128; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(d, name, buf)
		if err != nil {
			return "", fmt.Errorf("procfd: descriptor %d: %w", fd, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
