// Package tap opens a Linux tap device speaking virtio_net_hdr_v1 so that the
// appliance's own IP stack can be a port of the virtio-net switch.
//
// A *Tap has the method set of vswitch.Frames (ReadBatch, WriteBatch, Close)
// and satisfies it structurally; this package does not import net/vswitch so
// that the two can be built and tested apart.
package tap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/internal/fullqueue"
)

// HdrLen is the size of struct virtio_net_hdr_v1, which precedes every frame
// in the buffers ReadBatch fills and WriteBatch takes.
const HdrLen = 12

// Offload bits for TUNSETOFFLOAD (linux/if_tun.h); x/sys/unix does not
// export them.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// Options configure the tap device. The zero value gives a plain tap with
// the kernel's MTU and a kernel-chosen MAC address, no offloads.
type Options struct {
	// MTU of the link; 0 keeps the kernel default (1500).
	MTU int
	// MAC is the kernel side's Ethernet address; nil keeps the random one
	// the kernel picked.
	MAC net.HardwareAddr
	// Offload lets the kernel hand over and accept frames with partial
	// checksums and TCP segmentation pending (TUN_F_CSUM|TSO4|TSO6), so that
	// 64 KiB GSO frames cross the tap unsegmented. Read buffers must then
	// hold HdrLen+65550 bytes.
	Offload bool
}

// Tap is an open tap device. One goroutine may call ReadBatch while another
// calls WriteBatch; neither may be called concurrently with itself.
type Tap struct {
	f    *os.File
	rc   syscall.RawConn
	name string

	// Read state, shared with the pre-bound readFn so that ReadBatch does
	// not allocate a closure per call.
	rbufs  [][]byte
	rlens  []int
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Write state, likewise.
	wframes [][]byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
	full    bool // the device's queue was full (EAGAIN)
	waiting bool // fullqueue.Wait is waiting for room

	dropped atomic.Uint64
}

// Open creates (or attaches to) the tap device name in the calling thread's
// network namespace, configures it as opts says and brings the link up. An
// empty name lets the kernel choose one (see Name). The device disappears
// when the Tap is closed unless it was made persistent elsewhere.
func Open(name string, opts Options) (*Tap, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open tap %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	if opts.MAC != nil && len(opts.MAC) != 6 {
		return nil, fmt.Errorf("open tap %q: MAC %v is not 6 bytes", name, opts.MAC)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %q: /dev/net/tun: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("open tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, fmt.Errorf("open tap %q: TUNSETIFF: %w", name, err)
	}
	name = ifr.Name()
	// The default vnet header is the 10-byte legacy one; 12 bytes makes the
	// layout virtio_net_hdr_v1 (num_buffers included), which is what every
	// switch port speaks.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HdrLen); err != nil {
		return nil, fmt.Errorf("open tap %s: TUNSETVNETHDRSZ: %w", name, err)
	}
	var offload int
	if opts.Offload {
		offload = tunFCsum | tunFTSO4 | tunFTSO6
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offload); err != nil {
		return nil, fmt.Errorf("open tap %s: TUNSETOFFLOAD %#x: %w", name, offload, err)
	}
	if err := configureLink(name, opts); err != nil {
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	t := &Tap{name: name}
	// The fd is nonblocking, so os.NewFile registers it with the runtime
	// poller: a blocked ReadBatch parks its goroutine, not a thread, and
	// Close wakes it.
	t.f = os.NewFile(uintptr(fd), "tap:"+name)
	ok = true
	rc, err := t.f.SyscallConn()
	if err != nil {
		t.f.Close()
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	t.rc = rc
	t.readFn = t.read
	t.writeFn = t.write
	return t, nil
}

// configureLink sets MTU and MAC and brings the link up, through the classic
// interface ioctls on a throwaway socket (in the same namespace as the tap).
func configureLink(name string, opts Options) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer unix.Close(s)
	if opts.MTU != 0 {
		if opts.MTU < 68 || opts.MTU > 65535 {
			return fmt.Errorf("MTU %d out of range 68..65535", opts.MTU)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint32(uint32(opts.MTU))
		if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("set MTU %d: %w", opts.MTU, err)
		}
	}
	if opts.MAC != nil {
		if err := setMAC(s, name, opts.MAC); err != nil {
			return fmt.Errorf("set MAC %v: %w", opts.MAC, err)
		}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("link up: %w", err)
	}
	return nil
}

// ifreqHW is struct ifreq with ifr_hwaddr, which unix.Ifreq has no setter for.
type ifreqHW struct {
	name   [unix.IFNAMSIZ]byte
	family uint16
	addr   [14]byte
	_      [8]byte
}

func setMAC(s int, name string, mac net.HardwareAddr) error {
	var req ifreqHW
	copy(req.name[:], name)
	req.family = unix.ARPHRD_ETHER
	copy(req.addr[:], mac)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s), unix.SIOCSIFHWADDR, uintptr(unsafe.Pointer(&req)))
	if e != 0 {
		return e
	}
	return nil
}

// Name is the kernel's name for the device (useful when Open chose it).
func (t *Tap) Name() string { return t.name }

// Dropped counts frames WriteBatch discarded because the kernel refused them
// as malformed (a bad virtio_net_hdr, a runt, an oversized frame). Those come
// from guests, so they are dropped and counted rather than failing the port.
func (t *Tap) Dropped() uint64 { return t.dropped.Load() }

// SetReadDeadline makes a blocked ReadBatch return os.ErrDeadlineExceeded
// at d; the zero time means no deadline.
func (t *Tap) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// ReadBatch blocks until the kernel has at least one frame for the switch,
// then fills bufs with as many as are ready without waiting more. Each
// buffer receives a virtio_net_hdr_v1 and the Ethernet frame; lens[i] is the
// number of bytes in bufs[i]. A frame longer than its buffer is truncated by
// the kernel, so buffers should hold HdrLen + MTU + 18 bytes (HdrLen+65550
// with Options.Offload).
func (t *Tap) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	if len(lens) < len(bufs) {
		return 0, fmt.Errorf("tap %s: read: %d lens for %d buffers", t.name, len(lens), len(bufs))
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	t.rbufs, t.rlens, t.rn, t.rerr = bufs, lens, 0, nil
	err := t.rc.Read(t.readFn)
	n, rerr := t.rn, t.rerr
	t.rbufs, t.rlens = nil, nil
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = rerr
	}
	return 0, fmt.Errorf("tap %s: read: %w", t.name, err)
}

// read runs under the poller: it returns false to wait for readiness when
// nothing at all is ready, true once it has frames or a hard error.
func (t *Tap) read(fd uintptr) bool {
	for t.rn < len(t.rbufs) {
		n, err := unix.Read(int(fd), t.rbufs[t.rn])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return t.rn > 0
		case err != nil:
			t.rerr = err
			return true
		case n == 0:
			t.rerr = errors.New("unexpected EOF")
			return true
		}
		t.rlens[t.rn] = n
		t.rn++
	}
	return true
}

// WriteBatch hands frames (each a virtio_net_hdr_v1 followed by an Ethernet
// frame) to the kernel. Frames the kernel rejects as malformed are dropped
// and counted (see Dropped); n counts frames consumed, including those.
// An error means the device itself failed; frames[n:] were not sent.
func (t *Tap) WriteBatch(frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	t.wframes, t.wn, t.werr, t.full, t.waiting = frames, 0, nil, false, false
	err := t.rc.Write(t.writeFn)
	if err == nil && t.full {
		err = fullqueue.Wait(t.f, t.rc, t.writeFn, &t.waiting)
	}
	n, werr := t.wn, t.werr
	t.wframes = nil
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, fmt.Errorf("tap %s: write: %w", t.name, err)
	}
	return n, nil
}

func (t *Tap) write(fd uintptr) bool {
	for t.wn < len(t.wframes) {
		_, err := unix.Write(int(fd), t.wframes[t.wn])
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			t.full = true
			return !t.waiting // see fullqueue.Wait
		case unix.EINVAL, unix.EMSGSIZE:
			// EINVAL: bad vnet header or runt; EMSGSIZE: too large. The
			// bytes came from a guest, so this frame is lost, not the port.
			t.dropped.Add(1)
		default:
			t.werr = err
			return true
		}
		t.wn++
	}
	return true
}

// Close removes the device (unless persistent) and makes a pending
// ReadBatch return an error.
func (t *Tap) Close() error {
	if err := t.f.Close(); err != nil {
		return fmt.Errorf("tap %s: close: %w", t.name, err)
	}
	return nil
}
