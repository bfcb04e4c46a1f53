package netconf

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Watch wakes its owner when interfaces or IPv4 addresses change: a
// netlink socket subscribed to the kernel's link and address multicast
// groups. The appliance's host port is a tap device owned by the switch
// process, so it disappears with its address and routes whenever the
// switch restarts; the supervisor waits here to notice and configure it
// again at once instead of polling.
//
// Watch only says that something changed; the owner looks at the state it
// cares about itself, so a missed or coalesced notification costs nothing
// but latency.
type Watch struct {
	fd  int
	buf []byte
}

// NewWatch subscribes to link and IPv4 address notifications.
func NewWatch() (*Watch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("watch links: netlink: %w", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch links: bind: %w", err)
	}
	return &Watch{fd: fd, buf: make([]byte, 32<<10)}, nil
}

// Wait blocks until a notification arrives or timeout passes, and reports
// which. Every notification queued by then is consumed: one wake-up per
// burst (a tap being created sends several).
func (w *Watch) Wait(timeout time.Duration) (bool, error) {
	ms := max(int(timeout/time.Millisecond), 0)
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, ms)
	if errors.Is(err, unix.EINTR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("watch links: poll: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	for {
		_, _, err := unix.Recvfrom(w.fd, w.buf, 0)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			return true, nil
		case errors.Is(err, unix.ENOBUFS):
			// The kernel dropped notifications: something changed
			// all the same, which is all Wait reports.
			continue
		default:
			return true, fmt.Errorf("watch links: receive: %w", err)
		}
	}
}

// Close releases the netlink socket.
func (w *Watch) Close() error { return unix.Close(w.fd) }
