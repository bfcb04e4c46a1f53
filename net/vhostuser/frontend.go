package vhostuser

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Frontend is the VMM's end of a vhost-user connection: it hands a
// backend the guest's memory and virtqueues. Methods are safe for
// concurrent use; each request (with its reply) holds the connection.
//
// Once SetProtocolFeatures negotiated ProtocolReplyAck, every request that
// changes the backend's state asks for an ack and returns the backend's
// refusal as an error, so the VMM learns at once that, say, a ring address
// was rejected instead of seeing a dead NIC.
type Frontend struct {
	// Timeout bounds the wait for each reply (default ReplyTimeout).
	// Set it before the first request.
	Timeout time.Duration

	mu       sync.Mutex
	c        *conn
	replyAck bool
}

// ReplyTimeout is how long a Frontend waits for a reply by default. The
// VMM asks from its vCPU threads (a device reset stops the rings), so a
// backend that hangs must not hang the guest for ever. After a timeout the
// connection is closed: a late reply would desynchronise the stream, and
// the VMM reconnects anyway.
const ReplyTimeout = 5 * time.Second

// ErrTimeout is wrapped by the error of a request whose reply did not come
// within Timeout.
var ErrTimeout = errors.New("vhost-user: backend did not reply in time")

// Dial connects to the backend listening at path.
func Dial(path string) (*Frontend, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhost-user: dial %s: %w", path, err)
	}
	return NewFrontend(uc), nil
}

// NewFrontend runs the frontend side on an already connected socket (for
// example one end of a socketpair the supervisor passed down).
func NewFrontend(uc *net.UnixConn) *Frontend {
	return &Frontend{c: newConn(uc)}
}

// Close closes the connection; the backend then stops every ring.
func (f *Frontend) Close() error {
	return f.c.uc.Close()
}

// ErrRefused is wrapped by the error a request returns when the backend
// answered its REPLY_ACK with a failure.
var ErrRefused = fmt.Errorf("vhost-user: backend refused the request")

// call sends a request and, when it has a reply or wants an ack, reads it.
// It returns the reply payload (valid until the next call; f.mu held by
// the caller).
func (f *Frontend) call(req Request, payload []byte, fds []int) ([]byte, error) {
	flags := uint32(0)
	wantAck := f.replyAck && !hasReply(req)
	if wantAck {
		flags |= FlagNeedReply
	}
	if err := f.c.send(req, flags, payload, fds); err != nil {
		return nil, err
	}
	if !wantAck && !hasReply(req) {
		return nil, nil
	}
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = ReplyTimeout
	}
	f.c.uc.SetReadDeadline(time.Now().Add(timeout))
	h, p, rfds, err := f.c.recv()
	f.c.uc.SetReadDeadline(time.Time{})
	closeFDs(rfds) // no reply this frontend reads carries descriptors
	if errors.Is(err, os.ErrDeadlineExceeded) {
		f.c.uc.Close()
		return nil, fmt.Errorf("%w: %v after %s (connection closed)", ErrTimeout, req, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("vhost-user: %v reply: %w", req, err)
	}
	if h.Request != req || h.Flags&FlagReply == 0 {
		return nil, fmt.Errorf("%w: reply to %v is %v with flags %#x", ErrProtocol, req, h.Request, h.Flags)
	}
	if wantAck {
		status, err := ParseU64(p)
		if err != nil {
			return nil, fmt.Errorf("vhost-user: %v ack: %w", req, err)
		}
		if status != 0 {
			return nil, fmt.Errorf("%w: %v (status %d)", ErrRefused, req, status)
		}
	}
	return p, nil
}

func (f *Frontend) getU64(req Request) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.call(req, nil, nil)
	if err != nil {
		return 0, err
	}
	v, err := ParseU64(p)
	if err != nil {
		return 0, fmt.Errorf("vhost-user: %v reply: %w", req, err)
	}
	return v, nil
}

func (f *Frontend) setU64(req Request, v uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(req, appendU64(f.c.scratch[:0], v), nil)
	return err
}

func (f *Frontend) setState(req Request, s VringState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(req, s.append(f.c.scratch[:0]), nil)
	return err
}

// GetFeatures returns the virtio features the backend offers, including
// FeatureProtocolFeatures when it speaks protocol features.
func (f *Frontend) GetFeatures() (uint64, error) { return f.getU64(GetFeatures) }

// SetFeatures acks features (a subset of GetFeatures').
func (f *Frontend) SetFeatures(features uint64) error { return f.setU64(SetFeatures, features) }

// GetProtocolFeatures returns the protocol features the backend offers
// (only valid when it offers FeatureProtocolFeatures).
func (f *Frontend) GetProtocolFeatures() (uint64, error) { return f.getU64(GetProtocolFeatures) }

// SetProtocolFeatures acks protocol features; with ProtocolReplyAck among
// them every later state-changing request waits for the backend's ack.
func (f *Frontend) SetProtocolFeatures(features uint64) error {
	if err := f.setU64(SetProtocolFeatures, features); err != nil {
		return err
	}
	f.mu.Lock()
	f.replyAck = features&ProtocolReplyAck != 0
	f.mu.Unlock()
	return nil
}

// SetOwner claims the backend for this connection (the first request a
// session sends after feature negotiation).
func (f *Frontend) SetOwner() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(SetOwner, nil, nil)
	return err
}

// GetQueueNum returns how many virtqueues the backend serves (ProtocolMQ).
func (f *Frontend) GetQueueNum() (uint64, error) { return f.getU64(GetQueueNum) }

// SetMemTable gives the backend the guest's RAM: each region's descriptor
// is sent with the message (the caller keeps its own copy open or not).
func (f *Frontend) SetMemTable(regions []Region) error {
	if len(regions) == 0 || len(regions) > MaxRegions {
		return fmt.Errorf("vhost-user: memory table with %d regions (want 1 to %d)", len(regions), MaxRegions)
	}
	var fds [MaxRegions]int
	for i, r := range regions {
		fds[i] = r.Fd
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(SetMemTable, appendMemTable(f.c.scratch[:0], regions), fds[:len(regions)])
	return err
}

// SetVringNum sets ring q's size.
func (f *Frontend) SetVringNum(q int, size uint16) error {
	return f.setState(SetVringNum, VringState{Index: uint32(q), Num: uint32(size)})
}

// SetVringAddr sets a ring's addresses, as virtual addresses of the
// frontend's mapping of guest RAM (the backend translates them through the
// memory table).
func (f *Frontend) SetVringAddr(a VringAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(SetVringAddr, a.append(f.c.scratch[:0]), nil)
	return err
}

// SetVringBase sets the available ring index ring q starts at: 0 for a new
// ring, GetVringBase's answer to continue, or the used index after a
// backend crashed (what it had taken but not returned is lost).
func (f *Frontend) SetVringBase(q int, base uint16) error {
	return f.setState(SetVringBase, VringState{Index: uint32(q), Num: uint32(base)})
}

// GetVringBase stops ring q and returns the next available index it would
// have consumed.
func (f *Frontend) GetVringBase(q int) (uint16, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.call(GetVringBase, VringState{Index: uint32(q)}.append(f.c.scratch[:0]), nil)
	if err != nil {
		return 0, err
	}
	s, err := ParseVringState(p)
	if err != nil {
		return 0, fmt.Errorf("vhost-user: GET_VRING_BASE reply: %w", err)
	}
	if s.Index != uint32(q) || s.Num > 0xffff {
		return 0, fmt.Errorf("%w: GET_VRING_BASE reply %+v for vring %d", ErrProtocol, s, q)
	}
	return uint16(s.Num), nil
}

func (f *Frontend) setVringFD(req Request, q int, fd int) error {
	if q < 0 || q > vringFDMask {
		return fmt.Errorf("vhost-user: %v: vring %d out of range", req, q)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	_, err := f.call(req, appendU64(f.c.scratch[:0], vringFD(uint32(q), fd < 0)), fds)
	return err
}

// SetVringKick gives ring q the eventfd the driver's notifications signal
// (a KVM ioeventfd); fd < 0 sends the "no descriptor" form.
func (f *Frontend) SetVringKick(q, fd int) error { return f.setVringFD(SetVringKick, q, fd) }

// SetVringCall gives ring q the eventfd that interrupts the driver (a KVM
// irqfd); fd < 0 sends the "no descriptor" form.
func (f *Frontend) SetVringCall(q, fd int) error { return f.setVringFD(SetVringCall, q, fd) }

// SetVringErr gives ring q an eventfd the backend signals on ring errors.
func (f *Frontend) SetVringErr(q, fd int) error { return f.setVringFD(SetVringErr, q, fd) }

// SetVringEnable enables or disables ring q (with FeatureProtocolFeatures
// negotiated, rings start disabled).
func (f *Frontend) SetVringEnable(q int, enable bool) error {
	s := VringState{Index: uint32(q)}
	if enable {
		s.Num = 1
	}
	return f.setState(SetVringEnable, s)
}

// GetConfig reads len(data) bytes of the device's configuration space at
// offset (ProtocolConfig).
func (f *Frontend) GetConfig(offset uint32, data []byte) error {
	if len(data) > MaxConfigSize {
		return fmt.Errorf("vhost-user: config window of %d bytes (limit %d)", len(data), MaxConfigSize)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	req := Config{Offset: offset, Data: make([]byte, len(data))}
	p, err := f.call(GetConfig, req.append(f.c.scratch[:0]), nil)
	if err != nil {
		return err
	}
	c, err := ParseConfig(p)
	if err != nil {
		return fmt.Errorf("vhost-user: GET_CONFIG reply: %w", err)
	}
	if c.Offset != offset || len(c.Data) != len(data) {
		return fmt.Errorf("%w: GET_CONFIG reply for %d bytes at %d, asked %d at %d", ErrRefused, len(c.Data), c.Offset, len(data), offset)
	}
	copy(data, c.Data)
	return nil
}

// SetConfig writes data into the device's configuration space at offset.
func (f *Frontend) SetConfig(offset uint32, data []byte) error {
	if len(data) > MaxConfigSize {
		return fmt.Errorf("vhost-user: config window of %d bytes (limit %d)", len(data), MaxConfigSize)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.call(SetConfig, Config{Offset: offset, Data: data}.append(f.c.scratch[:0]), nil)
	return err
}
