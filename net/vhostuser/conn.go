package vhostuser

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// conn frames vhost-user messages on a unix stream socket. Descriptors ride
// as SCM_RIGHTS ancillary data on the message's bytes (senders attach them
// to the header's sendmsg); they are collected from every recvmsg of the
// message, so none can be stranded in the process, and capped at MaxFDs.
// A conn is used by one goroutine at a time.
type conn struct {
	uc      *net.UnixConn
	raw     syscall.RawConn
	msg     unix.Msghdr // recvmsg arguments, kept here so reads do not allocate
	iov     unix.Iovec
	recvFn  func(fd uintptr) bool // c.recvOnce
	recvN   int
	recvErr unix.Errno
	hdr     [HeaderSize]byte
	payload [MaxPayload]byte
	oob     []byte // room for MaxFDs descriptors
	fds     []int  // the current message's descriptors
	fdsLost bool   // the current message carried more descriptors than fit
	out     []byte // outgoing message
	scratch []byte // payload being built
}

func newConn(uc *net.UnixConn) *conn {
	// SyscallConn only fails for a nil or closed connection; reads then
	// fail with the same error.
	raw, _ := uc.SyscallConn()
	c := &conn{
		uc:      uc,
		raw:     raw,
		oob:     make([]byte, unix.CmsgSpace(MaxFDs*4)),
		fds:     make([]int, 0, MaxFDs),
		out:     make([]byte, 0, HeaderSize+MaxPayload),
		scratch: make([]byte, 0, MaxPayload),
	}
	c.recvFn = c.recvOnce
	return c
}

// errFDsLost is returned (wrapped) by recv when descriptors the sender
// attached did not all arrive (MSG_CTRUNC): more than any message may
// carry, or ones this process may not have (its security module, SELinux
// on the appliance, refused them at receipt; the kernel closed them). A
// frontend does neither by mistake: it is cut off (ErrPeer).
var errFDsLost = fmt.Errorf("%w: descriptors lost in transit: more than %d attached, or ones this process may not receive", ErrPeer, MaxFDs)

// recv reads the next message. The payload aliases c's buffer until the
// next recv; the descriptors (at most MaxFDs) belong to the caller, who
// must close those it does not keep, also when err wraps errFDsLost
// (the message itself was read whole, so the stream is still in step).
// Any other error means the stream is unusable (io.EOF: the peer closed
// it between messages); no descriptors are returned then.
func (c *conn) recv() (Header, []byte, []int, error) {
	c.fds, c.fdsLost = c.fds[:0], false
	if err := c.readFull(c.hdr[:], true); err != nil {
		closeFDs(c.fds)
		return Header{}, nil, nil, err
	}
	h, err := ParseHeader(c.hdr[:])
	if err != nil {
		closeFDs(c.fds)
		return h, nil, nil, err
	}
	p := c.payload[:h.Size]
	if err := c.readFull(p, false); err != nil {
		closeFDs(c.fds)
		return h, nil, nil, err
	}
	if c.fdsLost {
		return h, p, c.fds, errFDsLost
	}
	return h, p, c.fds, nil
}

func (c *conn) readFull(b []byte, atStart bool) error {
	for len(b) > 0 {
		n, oobn, flags, err := c.recvmsg(b)
		if oobn > 0 {
			c.collect(c.oob[:oobn])
		}
		if flags&unix.MSG_CTRUNC != 0 {
			c.fdsLost = true
		}
		if n == 0 && err == nil {
			if atStart {
				return io.EOF
			}
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("vhost-user: read: %w", err)
		}
		b, atStart = b[n:], false
	}
	return nil
}

// recvmsg is one recvmsg(2) through the runtime's poller. It exists
// because net.UnixConn.ReadMsgUnix allocates a source address on every
// call; descriptors are received close-on-exec like the net package does.
func (c *conn) recvmsg(b []byte) (n, oobn, flags int, err error) {
	if c.raw == nil {
		return 0, 0, 0, net.ErrClosed
	}
	c.iov.Base = &b[0]
	c.iov.SetLen(len(b))
	c.msg = unix.Msghdr{Iov: &c.iov, Iovlen: 1, Control: &c.oob[0]}
	c.msg.SetControllen(len(c.oob))
	rerr := c.raw.Read(c.recvFn)
	n, oobn, flags = c.recvN, int(c.msg.Controllen), int(c.msg.Flags)
	c.msg, c.iov = unix.Msghdr{}, unix.Iovec{} // drop the pointer to b
	if rerr != nil {
		return 0, 0, 0, rerr
	}
	if c.recvErr != 0 {
		return 0, 0, 0, c.recvErr
	}
	return n, oobn, flags, nil
}

// recvOnce is the RawConn.Read callback of recvmsg (a method value made
// once, so that no closure is allocated per read); false asks the poller
// to wait for the socket to become readable.
func (c *conn) recvOnce(fd uintptr) bool {
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&c.msg)), unix.MSG_CMSG_CLOEXEC)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	c.recvN, c.recvErr = int(r), e
	return true
}

// collect takes the descriptors out of ancillary data, keeping at most
// MaxFDs for the message and closing the rest at once.
func (c *conn) collect(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		c.fdsLost = true
		return
	}
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if len(c.fds) < MaxFDs {
				c.fds = append(c.fds, fd)
			} else {
				unix.Close(fd)
				c.fdsLost = true
			}
		}
	}
}

// send writes one message with payload and descriptors (nil for none),
// setting the version bit and the size itself.
func (c *conn) send(req Request, flags uint32, payload []byte, fds []int) error {
	if len(payload) > MaxPayload || len(fds) > MaxFDs {
		return fmt.Errorf("vhost-user: %v: message too large (%d bytes, %d descriptors)", req, len(payload), len(fds))
	}
	h := Header{Request: req, Flags: flags&^FlagVersionMask | Version, Size: uint32(len(payload))}
	c.out = c.out[:HeaderSize]
	h.put(c.out)
	c.out = append(c.out, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(c.out, oob, nil)
	if err == nil && n < len(c.out) {
		// A stream socket may take part of a message; the descriptors
		// went with the first byte.
		_, err = c.uc.Write(c.out[n:])
	}
	if err != nil {
		return fmt.Errorf("vhost-user: send %v: %w", req, err)
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
