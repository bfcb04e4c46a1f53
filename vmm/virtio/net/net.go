// Package virtionet is hyperroot's virtio-net device, a vhost-user
// frontend: the guest's frames never pass through the VMM. The device keeps
// the configuration space (MAC, link status) and feature negotiation, and
// hands the guest's memory, its virtqueues and their eventfds (the KVM
// ioeventfd the driver kicks, the irqfd that interrupts it) to a vhost-user
// backend — hyperroot's switch or any other — which moves the frames.
//
// If the backend goes away (the switch restarts), the device reports the
// link down, reconnects in the background, replays the memory table and
// the rings with their bases taken from the used indices in guest memory,
// and reports the link up again: the guest keeps its driver, its addresses
// and its TCP connections.
//
// The package is named virtionet rather than net because it is used next
// to the standard library's net.
package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// virtio-net feature bits (virtio 1.2 §5.1.3) the device passes between
// driver and backend, as masks.
const (
	FeatureCsum      uint64 = 1 << 0
	FeatureGuestCsum uint64 = 1 << 1
	FeatureMTU       uint64 = 1 << 3
	FeatureMAC       uint64 = 1 << 5
	FeatureGuestTSO4 uint64 = 1 << 7
	FeatureGuestTSO6 uint64 = 1 << 8
	FeatureGuestECN  uint64 = 1 << 9
	FeatureHostTSO4  uint64 = 1 << 11
	FeatureHostTSO6  uint64 = 1 << 12
	FeatureHostECN   uint64 = 1 << 13
	FeatureMrgRxbuf  uint64 = 1 << 15
	FeatureStatus    uint64 = 1 << 16

	// passThrough are the backend's bits the device may offer the driver:
	// the data path's offloads and ring features. MAC, STATUS and MTU are
	// the device's own (it serves the configuration space); MQ and the
	// control queue are not implemented.
	passThrough = FeatureCsum | FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN |
		FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN | FeatureMrgRxbuf |
		virtio.FeatureRingIndirectDesc | virtio.FeatureRingEventIdx | virtio.FeatureVersion1
)

// Configuration space layout (virtio 1.2 §5.1.4).
const (
	cfgMAC    = 0  // mac[6]
	cfgStatus = 6  // le16: VIRTIO_NET_S_LINK_UP
	cfgPairs  = 8  // le16: max_virtqueue_pairs
	cfgMTU    = 10 // le16: mtu, with VIRTIO_NET_F_MTU
	cfgLen    = 12

	statusLinkUp = 1
)

// Queue indices of the one queue pair.
const (
	rxQueue = 0
	txQueue = 1
)

// DefaultQueueSize is each virtqueue's maximum size.
const DefaultQueueSize = 256

// Memory is guest RAM as the device hands it to a backend: *memory.Guest.
type Memory interface {
	virtio.Memory
	Fd() int
	Regions() []memory.Region
}

// Options configure a Device.
type Options struct {
	// Dial connects to the backend; it is called again after the
	// connection is lost. Typically a net.DialUnix of the backend's
	// socket path.
	Dial   func() (*net.UnixConn, error)
	Memory Memory
	MAC    net.HardwareAddr
	// MTU, if not 0, is announced to the driver (VIRTIO_NET_F_MTU), which
	// then uses it for the interface: the network's MTU.
	MTU int
	// QueueSize is each queue's maximum size; default DefaultQueueSize.
	QueueSize uint16
	// Retry is how long to wait between reconnection attempts; default
	// 200 ms.
	Retry time.Duration
	// Logf reports connection changes ("backend lost", "reconnected").
	Logf func(format string, args ...any)
}

// Device is a vhost-user virtio-net device. It implements virtio.Device and
// virtiopci.Offloader.
type Device struct {
	opts     Options
	offered  uint64 // to the driver: the backend's pass-through bits plus MAC and STATUS
	backend  uint64 // what the backend offered, including the protocol bit
	protocol uint64 // negotiated protocol features

	mu sync.Mutex
	fe *vhostuser.Frontend
	// linkUp is read by config-space reads on vCPU threads without mu,
	// which a reconnection holds while it talks to the backend.
	linkUp   atomic.Bool
	acked    uint64
	queues   []*virtio.Queue // from Activate, nil when not active
	irq      virtio.Interrupt
	kick     []int // per queue, the transport's
	call     []int // per queue: an irqfd, or a relay eventfd of ours
	relays   []*relay
	closed   bool
	reconnMu sync.Mutex // one reconnection at a time
}

// New connects to the backend, negotiates the protocol and hands it guest
// memory. It fails when the backend cannot be reached: the features the
// guest sees come from it.
func New(o Options) (*Device, error) {
	if o.Dial == nil || o.Memory == nil {
		return nil, errors.New("virtio-net: a backend and guest memory are required")
	}
	if len(o.MAC) != 6 {
		return nil, fmt.Errorf("virtio-net: MAC %v: want 6 bytes", o.MAC)
	}
	if o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535) {
		return nil, fmt.Errorf("virtio-net: MTU %d: want 68 to 65535", o.MTU)
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Retry == 0 {
		o.Retry = 200 * time.Millisecond
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	d := &Device{opts: o}
	uc, err := o.Dial()
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	fe := vhostuser.NewFrontend(uc)
	if err := d.handshake(fe); err != nil {
		fe.Close()
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	if d.backend&virtio.FeatureVersion1 == 0 {
		fe.Close()
		return nil, fmt.Errorf("virtio-net: backend does not offer VIRTIO_F_VERSION_1 (features %#x)", d.backend)
	}
	d.offered = d.backend&passThrough | FeatureMAC | FeatureStatus
	if o.MTU != 0 {
		d.offered |= FeatureMTU
	}
	d.connected(fe, uc)
	return d, nil
}

// handshake runs the start of a vhost-user session on fe: features,
// protocol features, owner and memory table. It records the backend's
// offer in d.backend.
func (d *Device) handshake(fe *vhostuser.Frontend) error {
	features, err := fe.GetFeatures()
	if err != nil {
		return err
	}
	d.backend = features
	d.protocol = 0
	if features&vhostuser.FeatureProtocolFeatures != 0 {
		pf, err := fe.GetProtocolFeatures()
		if err != nil {
			return err
		}
		d.protocol = pf & vhostuser.ProtocolReplyAck
		if err := fe.SetProtocolFeatures(d.protocol); err != nil {
			return err
		}
	}
	if err := fe.SetOwner(); err != nil {
		return err
	}
	var regions []vhostuser.Region
	for _, r := range d.opts.Memory.Regions() {
		regions = append(regions, vhostuser.Region{GuestAddr: r.GPA, Size: r.Size, UserAddr: uint64(r.Host),
			Offset: r.Offset, Fd: d.opts.Memory.Fd()})
	}
	return fe.SetMemTable(regions)
}

// connected makes fe the device's connection, marks the link up and
// starts watching for its hang-up.
func (d *Device) connected(fe *vhostuser.Frontend, uc *net.UnixConn) {
	d.fe = fe
	d.linkUp.Store(true)
	go d.watch(fe, uc)
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return virtio.TypeNet }

// QueueSizes implements virtio.Device: one receive and one transmit queue.
func (d *Device) QueueSizes() []uint16 { return []uint16{d.opts.QueueSize, d.opts.QueueSize} }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.offered }

// Ack implements virtio.Device.
func (d *Device) Ack(features uint64) error {
	if err := virtio.CheckFeatures(d.offered, features); err != nil {
		return err
	}
	d.mu.Lock()
	d.acked = features
	d.mu.Unlock()
	return nil
}

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [cfgLen]byte
	copy(cfg[cfgMAC:], d.opts.MAC)
	if d.linkUp.Load() {
		binary.LittleEndian.PutUint16(cfg[cfgStatus:], statusLinkUp)
	}
	binary.LittleEndian.PutUint16(cfg[cfgPairs:], 1)
	binary.LittleEndian.PutUint16(cfg[cfgMTU:], uint16(d.opts.MTU))
	for i := range data {
		data[i] = 0
		if o := offset + uint64(i); o < cfgLen {
			data[i] = cfg[o]
		}
	}
}

// WriteConfig implements virtio.Device. The MAC is the configuration's:
// writes are ignored (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate implements virtio.Device. The rings are handed to the backend
// by Offload, which the transport calls next with their eventfds.
func (d *Device) Activate(queues []*virtio.Queue, irq virtio.Interrupt) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queues, d.irq = queues, irq
	return nil
}

// Offload implements virtiopci.Offloader: it gives the backend the rings.
// A queue without an irqfd (MSI-X off) gets an eventfd of ours that a
// goroutine relays to the transport's interrupt.
func (d *Device) Offload(kick, call []int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queues == nil {
		return errors.New("virtio-net: offload before activation")
	}
	d.kick = kick
	d.call = append([]int(nil), call...)
	for q, fd := range d.call {
		if fd >= 0 {
			continue
		}
		r, err := newRelay(q, d.irq)
		if err != nil {
			d.stopRelaysLocked()
			return err
		}
		d.relays = append(d.relays, r)
		d.call[q] = r.fd
	}
	if d.fe == nil {
		return nil // reconnecting: the rings are handed over once connected
	}
	if err := d.startRingsLocked(false); err != nil {
		// The connection is probably dying: the watcher reconnects
		// and replays the rings.
		d.opts.Logf("virtio-net: start rings: %v", err)
	}
	return nil
}

// startRingsLocked sends the negotiated features and every active ring to
// the backend. After a reconnection (resume) each ring continues at the
// used index in guest memory: the buffers the lost backend had taken but
// not returned are offered again, and every ring's driver is interrupted
// once (see interruptAll). d.mu is held.
func (d *Device) startRingsLocked(resume bool) error {
	fe := d.fe
	features := d.acked &^ (FeatureMAC | FeatureStatus | FeatureMTU)
	if d.backend&vhostuser.FeatureProtocolFeatures != 0 {
		features |= vhostuser.FeatureProtocolFeatures
	}
	if err := fe.SetFeatures(features); err != nil {
		return err
	}
	for q, vq := range d.queues {
		if !vq.Active() {
			continue
		}
		if err := d.startRing(fe, q, vq, resume); err != nil {
			return fmt.Errorf("ring %d: %w", q, err)
		}
	}
	if resume {
		d.interruptAll()
	}
	return nil
}

// interruptAll signals every active ring's call eventfd, as if the backend
// had. A backend that dies (or is killed as hung) between publishing used
// buffers and signalling leaves the driver asleep on a ring it will not
// look at again: with EVENT_IDX its used_event stays behind the used
// index, so the next backend, counting from that index, never sees an
// interrupt due. A transmit queue stopped for want of completions, or a
// receive ring with no buffers, then stays stuck for good. One interrupt
// per ring makes the driver reap what is there; if nothing is, it is a
// spurious interrupt, which drivers tolerate. d.mu is held.
func (d *Device) interruptAll() {
	for q, vq := range d.queues {
		if !vq.Active() || q >= len(d.call) || d.call[q] < 0 {
			continue
		}
		if err := eventfd.Signal(d.call[q]); err != nil {
			d.opts.Logf("virtio-net: interrupt ring %d after reconnecting: %v", q, err)
		}
	}
}

func (d *Device) startRing(fe *vhostuser.Frontend, q int, vq *virtio.Queue, resume bool) error {
	desc, err := d.hostAddr(vq.DescAddr)
	if err != nil {
		return err
	}
	avail, err := d.hostAddr(vq.AvailAddr)
	if err != nil {
		return err
	}
	used, err := d.hostAddr(vq.UsedAddr)
	if err != nil {
		return err
	}
	base := uint16(0)
	if resume {
		b, err := d.opts.Memory.Slice(vq.UsedAddr+2, 2)
		if err != nil {
			return err
		}
		base = binary.LittleEndian.Uint16(b)
	}
	if err := fe.SetVringNum(q, vq.Size); err != nil {
		return err
	}
	if err := fe.SetVringBase(q, base); err != nil {
		return err
	}
	if err := fe.SetVringAddr(vhostuser.VringAddr{Index: uint32(q), Desc: desc, Avail: avail, Used: used}); err != nil {
		return err
	}
	if err := fe.SetVringCall(q, d.call[q]); err != nil {
		return err
	}
	if err := fe.SetVringKick(q, d.kick[q]); err != nil {
		return err
	}
	if d.backend&vhostuser.FeatureProtocolFeatures != 0 {
		return fe.SetVringEnable(q, true)
	}
	return nil
}

// hostAddr is where guest-physical gpa is mapped in this process: vhost-user
// ring addresses are the frontend's virtual addresses.
func (d *Device) hostAddr(gpa uint64) (uint64, error) {
	b, err := d.opts.Memory.Slice(gpa, 1)
	if err != nil {
		return 0, err
	}
	return uint64(uintptr(unsafe.Pointer(&b[0]))), nil
}

// Reset implements virtio.Device: the backend stops every ring (the
// GET_VRING_BASE replies say it no longer touches them).
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fe != nil && d.queues != nil {
		for q, vq := range d.queues {
			if vq.Active() {
				if _, err := d.fe.GetVringBase(q); err != nil {
					d.opts.Logf("virtio-net: stop ring %d: %v", q, err)
				}
			}
		}
	}
	d.stopRelaysLocked()
	d.queues, d.irq, d.kick, d.call, d.acked = nil, nil, nil, nil, 0
}

func (d *Device) stopRelaysLocked() {
	for _, r := range d.relays {
		r.stop()
	}
	d.relays = nil
}

// Close drops the connection and stops reconnecting.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	d.stopRelaysLocked()
	if d.fe != nil {
		err := d.fe.Close()
		d.fe = nil
		return err
	}
	return nil
}

// watch waits for fe's connection to hang up, then reconnects.
func (d *Device) watch(fe *vhostuser.Frontend, uc *net.UnixConn) {
	waitHangup(uc)
	d.mu.Lock()
	if d.closed || d.fe != fe {
		d.mu.Unlock()
		return
	}
	d.fe = nil
	d.linkUp.Store(false)
	irq := d.irq
	d.mu.Unlock()
	fe.Close()
	d.opts.Logf("virtio-net %s: backend lost, link down; reconnecting", d.opts.MAC)
	if irq != nil {
		_ = irq.ConfigChanged()
	}
	d.reconnect()
}

// reconnect dials until the backend is back, then replays the session.
func (d *Device) reconnect() {
	d.reconnMu.Lock()
	defer d.reconnMu.Unlock()
	for attempt := 1; ; attempt++ {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			return
		}
		uc, err := d.opts.Dial()
		if err == nil {
			fe := vhostuser.NewFrontend(uc)
			err = d.resume(fe, uc)
			if err == nil {
				d.opts.Logf("virtio-net %s: backend reconnected after %d attempts, link up", d.opts.MAC, attempt)
				return
			}
			fe.Close()
		}
		if attempt == 1 || attempt%50 == 0 {
			d.opts.Logf("virtio-net %s: reconnect: %v", d.opts.MAC, err)
		}
		time.Sleep(d.opts.Retry)
	}
}

// resume replays the session on a new connection: handshake, and the rings
// if the driver is running.
func (d *Device) resume(fe *vhostuser.Frontend, uc *net.UnixConn) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	before := d.backend
	if err := d.handshake(fe); err != nil {
		return err
	}
	if missing := d.offered & passThrough &^ d.backend; missing != 0 {
		// The driver may have accepted bits this backend cannot do:
		// the device cannot silently take them back.
		d.backend = before
		return fmt.Errorf("the new backend lacks features %#x the guest was offered", missing)
	}
	d.fe = fe
	if d.queues != nil && d.kick != nil {
		if err := d.startRingsLocked(true); err != nil {
			d.fe = nil
			return err
		}
	}
	d.connected(fe, uc)
	if d.irq != nil {
		_ = d.irq.ConfigChanged()
	}
	return nil
}

// waitHangup blocks until the peer of uc closes it, or uc is closed here.
// It polls a duplicate of the descriptor for POLLRDHUP, which consumes
// nothing, so the frontend's own reads of replies are not disturbed.
func waitHangup(uc *net.UnixConn) {
	f, err := uc.File() // a dup: ours to poll and close
	if err != nil {
		return
	}
	defer f.Close()
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLRDHUP}}
	for {
		fds[0].Revents = 0
		n, err := unix.Poll(fds, 1000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			return
		}
		if n == 0 {
			// The dup does not see our own Close of uc: check it.
			rc, err := uc.SyscallConn()
			if err != nil || rc.Control(func(uintptr) {}) != nil {
				return
			}
		}
	}
}

// relay forwards a backend's calls to the transport's interrupt when a
// queue has no irqfd (MSI-X off): the one case where an interrupt passes
// through the VMM.
type relay struct {
	fd      int
	stopped chan struct{}
	quit    int // eventfd that stops the goroutine
}

func newRelay(q int, irq virtio.Interrupt) (*relay, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: call eventfd: %w", err)
	}
	quit, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("virtio-net: eventfd: %w", err)
	}
	r := &relay{fd: fd, quit: quit, stopped: make(chan struct{})}
	go func() {
		defer close(r.stopped)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(quit), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents&unix.POLLIN != 0 {
				if set, _ := eventfd.Drain(fd); set {
					_ = irq.Used(q)
				}
			}
		}
	}()
	return r, nil
}

func (r *relay) stop() {
	eventfd.Signal(r.quit)
	<-r.stopped
	unix.Close(r.fd)
	unix.Close(r.quit)
}
