// Package safeopen opens files whose path someone else may have planted
// things in: a VM's disk under the data directory, a seed, a lease file a
// switch (which may be a guest's) rewrites. A symbolic link anywhere on the
// path is refused (ELOOP), so a planted link cannot point the appliance at
// its own files; a FIFO is opened without waiting for its writer, so a
// planted FIFO cannot hang the caller.
package safeopen

import (
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Open opens path with flags (os.O_* values; O_CLOEXEC and O_NOCTTY are
// added) following no symbolic link, and not blocking on a FIFO. The file
// returned is in blocking mode, as os.OpenFile's would be. A file it
// creates has mode 0600.
func Open(path string, flags int) (*os.File, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	if flags&os.O_CREATE != 0 {
		how.Mode = 0o600
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &how)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	// O_NONBLOCK was for the open only.
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
