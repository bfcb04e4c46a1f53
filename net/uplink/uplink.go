// Package uplink bridges a switch network to a physical NIC through an
// AF_PACKET socket, moving frames in the switch's virtio_net_hdr_v1 format.
//
// An *Uplink has the method set of vswitch.Frames (ReadBatch, WriteBatch,
// Close) and satisfies it structurally; this package does not import
// net/vswitch so that the two can be built and tested apart.
//
// Frames move with recvmmsg/sendmmsg rather than a TPACKET_V3 mmap ring:
// the switch hands in its own buffers, so a ring would cost a second copy
// out of it, and a ring's fixed frame slots cannot take the 64 KiB GRO/GSO
// frames that PACKET_VNET_HDR lets through whole. Batching already spreads
// one syscall over up to len(bufs) frames.
package uplink

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/netconf"
	"github.com/hyperroot/hyperroot/net/internal/fullqueue"
)

// HdrLen is the size of struct virtio_net_hdr_v1, which precedes every frame
// in the buffers ReadBatch fills and WriteBatch takes.
const HdrLen = 12

// sockHdrLen is the legacy 10-byte struct virtio_net_hdr that PACKET_VNET_HDR
// puts on the socket: the v1 header without num_buffers. Scatter/gather
// I/O skips the two extra bytes, so converting costs no copy.
const sockHdrLen = 10

// minFrame is the shortest buffer WriteBatch sends: a header and the
// Ethernet addresses and type.
const minFrame = HdrLen + 14

// Options tune the socket. The zero value is a working uplink.
type Options struct {
	// ReadBuffer and WriteBuffer set SO_RCVBUF/SO_SNDBUF in bytes (forced
	// past the sysctl limits when running as root); 0 keeps the kernel's.
	ReadBuffer, WriteBuffer int
}

// Uplink is an AF_PACKET socket bound to one interface in promiscuous mode.
// One goroutine may call ReadBatch while another calls WriteBatch; neither
// may be called concurrently with itself.
type Uplink struct {
	f    *os.File
	rc   syscall.RawConn
	name string

	// Receive state, reused across calls so that a steady state allocates
	// nothing; readFn is bound once to avoid a closure per call.
	rmsgs  []unix.Mmsghdr
	riov   []unix.Iovec // two per message: socket header, frame
	roob   []byte       // oobSpace bytes per message
	rbufs  [][]byte
	rlens  []int
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Transmit state, likewise.
	wmsgs   []unix.Mmsghdr
	wiov    []unix.Iovec
	wframes [][]byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
	full    bool // the socket buffer was full (EAGAIN, ENOBUFS)
	waiting bool // fullqueue.Wait is waiting for room

	dropped atomic.Uint64
}

// oobSpace is the control buffer per received message: one PACKET_AUXDATA.
var oobSpace = unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{})))

// Open binds an uplink to the interface ifname (in the calling thread's
// network namespace), brings the link up and makes it promiscuous for as
// long as the Uplink is open.
func Open(ifname string, opts Options) (*Uplink, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("open uplink %s: %w", ifname, err)
	}
	// Protocol 0 receives nothing until bind names the interface, so no
	// frame from another interface slips in between.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open uplink %s: socket: %w", ifname, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	opt := func(level, name, value int, what string) error {
		if err := unix.SetsockoptInt(fd, level, name, value); err != nil {
			return fmt.Errorf("open uplink %s: %s: %w", ifname, what, err)
		}
		return nil
	}
	// PACKET_VNET_HDR carries checksum/GSO metadata both ways, so GRO'd
	// frames come up whole and the kernel segments what the switch sends.
	if err := opt(unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"); err != nil {
		return nil, err
	}
	// The kernel strips VLAN tags into metadata; AUXDATA reports them so
	// they can be put back for the switch.
	if err := opt(unix.SOL_PACKET, unix.PACKET_AUXDATA, 1, "PACKET_AUXDATA"); err != nil {
		return nil, err
	}
	// Our own transmissions must not come back as received frames: the
	// switch would learn its own ports' MACs on the uplink.
	if err := opt(unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"); err != nil {
		return nil, err
	}
	if opts.ReadBuffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, opts.ReadBuffer) != nil {
			if err := opt(unix.SOL_SOCKET, unix.SO_RCVBUF, opts.ReadBuffer, "SO_RCVBUF"); err != nil {
				return nil, err
			}
		}
	}
	if opts.WriteBuffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, opts.WriteBuffer) != nil {
			if err := opt(unix.SOL_SOCKET, unix.SO_SNDBUF, opts.WriteBuffer, "SO_SNDBUF"); err != nil {
				return nil, err
			}
		}
	}
	// Up before bind: binding to a downed interface leaves a pending
	// ENETDOWN on the socket, and an uplink on a downed NIC would silently
	// drop all. Only a downed NIC is touched, so opening one that is
	// already up needs no CAP_NET_ADMIN.
	if ifi.Flags&net.FlagUp == 0 {
		if err := netconf.Up(ifname); err != nil {
			return nil, fmt.Errorf("open uplink %s: link up: %w", ifname, err)
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("open uplink %s: bind: %w", ifname, err)
	}
	// A bridge port takes every frame on the wire, not only those for the
	// NIC's own MAC. The membership ends when the socket closes.
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return nil, fmt.Errorf("open uplink %s: promiscuous: %w", ifname, err)
	}
	u := &Uplink{name: ifname}
	// Nonblocking, so os.NewFile hands the fd to the runtime poller:
	// waiting parks a goroutine, and Close wakes a pending ReadBatch.
	u.f = os.NewFile(uintptr(fd), "uplink:"+ifname)
	ok = true
	if u.rc, err = u.f.SyscallConn(); err != nil {
		u.f.Close()
		return nil, fmt.Errorf("open uplink %s: %w", ifname, err)
	}
	u.readFn = u.recv
	u.writeFn = u.send
	return u, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Name is the interface the uplink is bound to.
func (u *Uplink) Name() string { return u.name }

// Dropped counts frames lost inside the uplink: received frames that did not
// fit their buffer, and frames WriteBatch could not send because the kernel
// refused them (bad header, too long, link down).
func (u *Uplink) Dropped() uint64 { return u.dropped.Load() }

// SetReadDeadline makes a blocked ReadBatch return os.ErrDeadlineExceeded
// at d; the zero time means no deadline.
func (u *Uplink) SetReadDeadline(d time.Time) error { return u.f.SetReadDeadline(d) }

// ReadBatch blocks until at least one frame has arrived, then fills bufs
// with as many as are ready. Each buffer gets a virtio_net_hdr_v1 and the
// frame, with any VLAN tag the NIC stripped put back as an 802.1Q header;
// lens[i] is the byte count in bufs[i]. Buffers should hold HdrLen + MTU +
// 18 bytes, or HdrLen+65550 where the NIC does GRO/LRO; frames that do not
// fit are dropped and counted.
func (u *Uplink) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	if len(lens) < len(bufs) {
		return 0, fmt.Errorf("uplink %s: read: %d lens for %d buffers", u.name, len(lens), len(bufs))
	}
	for _, b := range bufs {
		if len(b) < minFrame {
			return 0, fmt.Errorf("uplink %s: read: buffer of %d bytes, need at least %d", u.name, len(b), minFrame)
		}
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	u.growRead(len(bufs))
	u.rbufs, u.rlens, u.rn, u.rerr = bufs, lens, 0, nil
	err := u.rc.Read(u.readFn)
	n, rerr := u.rn, u.rerr
	u.rbufs, u.rlens = nil, nil
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = rerr
	}
	return 0, fmt.Errorf("uplink %s: read: %w", u.name, err)
}

func (u *Uplink) growRead(n int) {
	if len(u.rmsgs) >= n {
		return
	}
	u.rmsgs = make([]unix.Mmsghdr, n)
	u.riov = make([]unix.Iovec, 2*n)
	u.roob = make([]byte, n*oobSpace)
}

// recv runs under the poller; false means "nothing yet, wait".
func (u *Uplink) recv(fd uintptr) bool {
	for {
		cnt := len(u.rbufs)
		for i := 0; i < cnt; i++ {
			b := u.rbufs[i]
			iov := u.riov[2*i : 2*i+2]
			iov[0].Base = &b[0]
			iov[0].SetLen(sockHdrLen)
			iov[1].Base = &b[HdrLen]
			iov[1].SetLen(len(b) - HdrLen)
			h := &u.rmsgs[i].Hdr
			h.Iov = &iov[0]
			h.Iovlen = 2
			h.Control = &u.roob[i*oobSpace]
			h.SetControllen(oobSpace)
			h.Flags = 0
		}
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&u.rmsgs[0])), uintptr(cnt), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case unix.ENETDOWN:
			// The kernel reports a link going down once, as a socket
			// error; reception resumes when it comes back up, so this
			// is a pause, not the end of the port.
			continue
		default:
			u.rerr = e
			return true
		}
		for i := 0; i < int(r); i++ {
			m := &u.rmsgs[i]
			n, ok := u.frame(u.rbufs[i], int(m.Len), m.Hdr.Flags, u.roob[i*oobSpace:i*oobSpace+int(m.Hdr.Controllen)])
			if !ok {
				u.dropped.Add(1)
				continue
			}
			// Keep delivered frames contiguous in bufs: a drop earlier in
			// the batch moves later frames down (rare, so a copy is fine).
			if u.rn != i {
				dst := u.rbufs[u.rn]
				if len(dst) < n {
					u.dropped.Add(1)
					continue
				}
				copy(dst, u.rbufs[i][:n])
			}
			u.rlens[u.rn] = n
			u.rn++
		}
		if u.rn > 0 {
			return true
		}
		// Everything received was dropped: look again before waiting.
	}
}

// frame turns what recvmmsg put in b (10-byte header, gap, frame of
// msgLen-10 bytes) into a v1 header and frame, and returns its length.
func (u *Uplink) frame(b []byte, msgLen int, flags int32, oob []byte) (int, bool) {
	if flags&unix.MSG_TRUNC != 0 || msgLen < sockHdrLen+14 {
		return 0, false
	}
	n := HdrLen + msgLen - sockHdrLen
	binary.LittleEndian.PutUint16(b[sockHdrLen:], 0) // num_buffers
	if tpid, tci, ok := vlanTag(oob); ok {
		return retag(b, n, tpid, tci)
	}
	return n, true
}

// WriteBatch sends frames (each a virtio_net_hdr_v1 and an Ethernet frame)
// out of the interface as they are, VLAN tags included. Frames the kernel
// refuses (malformed header, longer than the MTU without GSO, link down) are
// dropped and counted (see Dropped); n counts frames consumed, including
// those. An error means the socket itself failed; frames[n:] were not sent.
func (u *Uplink) WriteBatch(frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	if len(u.wmsgs) < len(frames) {
		u.wmsgs = make([]unix.Mmsghdr, len(frames))
		u.wiov = make([]unix.Iovec, 2*len(frames))
	}
	u.wframes, u.wn, u.werr, u.full, u.waiting = frames, 0, nil, false, false
	err := u.rc.Write(u.writeFn)
	if err == nil && u.full {
		err = fullqueue.Wait(u.f, u.rc, u.writeFn, &u.waiting)
	}
	n, werr := u.wn, u.werr
	u.wframes = nil
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, fmt.Errorf("uplink %s: write: %w", u.name, err)
	}
	return n, nil
}

// send runs under the poller; false means "socket buffer full, wait".
func (u *Uplink) send(fd uintptr) bool {
	for u.wn < len(u.wframes) {
		// Batch up to the next runt, which is dropped without a syscall.
		k := 0
		for i := u.wn; i < len(u.wframes) && len(u.wframes[i]) >= minFrame; i++ {
			f := u.wframes[i]
			iov := u.wiov[2*k : 2*k+2]
			iov[0].Base = &f[0]
			iov[0].SetLen(sockHdrLen)
			iov[1].Base = &f[HdrLen]
			iov[1].SetLen(len(f) - HdrLen)
			h := &u.wmsgs[k].Hdr
			h.Iov = &iov[0]
			h.Iovlen = 2
			k++
		}
		if k == 0 {
			u.dropped.Add(1)
			u.wn++
			continue
		}
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&u.wmsgs[0])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			u.wn += int(r)
		case unix.EINTR:
		case unix.EAGAIN, unix.ENOBUFS:
			u.full = true
			return !u.waiting // see fullqueue.Wait
		case unix.EINVAL, unix.EMSGSIZE, unix.ENETDOWN, unix.ENXIO:
			// sendmmsg reports an error only for the first message: that
			// frame is refused, the rest go in the next round.
			u.dropped.Add(1)
			u.wn++
		default:
			u.werr = e
			return true
		}
	}
	return true
}

// Close leaves promiscuous mode, closes the socket and makes a pending
// ReadBatch return an error.
func (u *Uplink) Close() error {
	if err := u.f.Close(); err != nil {
		return fmt.Errorf("uplink %s: close: %w", u.name, err)
	}
	return nil
}
