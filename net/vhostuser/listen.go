package vhostuser

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen creates the backend's listening socket at path. A socket file
// left behind by a previous run (nobody accepts on it any more) is removed
// first; a live socket, or anything that is not a socket, is an error
// rather than something to delete.
func Listen(path string) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhost-user: listen %s: %w", path, err)
	}
	return l, nil
}

func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vhost-user: listen %s: %w", path, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("vhost-user: listen %s: exists and is not a socket", path)
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("vhost-user: listen %s: another process is serving it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("vhost-user: listen %s: probe existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("vhost-user: remove stale socket: %w", err)
	}
	return nil
}

// FileConn turns an inherited connected socket descriptor (the "--fd"
// convention of vhost-user backends: the frontend's supervisor made a
// socketpair and passed one end) into a connection for Serve. The
// descriptor is duplicated; the caller closes fd.
func FileConn(fd int) (*net.UnixConn, error) {
	// os.NewFile's finalizer would close fd behind the caller's back: give
	// it a duplicate, which net.FileConn duplicates again.
	d, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("vhost-user: descriptor %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(d), "vhost-user")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("vhost-user: descriptor %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("vhost-user: descriptor %d is not a unix socket", fd)
	}
	return uc, nil
}
