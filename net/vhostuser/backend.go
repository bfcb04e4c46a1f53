package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/hyperroot/hyperroot/net/internal/peerfd"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"golang.org/x/sys/unix"
)

// Device is what a vhost-user backend serves: one virtio device (a switch port).
type Device interface {
	Features() uint64                  // virtio feature bits offered (backend adds protocol bits)
	SetFeatures(features uint64) error // the frontend's acked features, before any Start
	// Start begins serving vring q: vq is already activated on the frontend's memory with its
	// base index; kick becomes readable (eventfd) when the driver notifies; writing 1 to call
	// interrupts the driver. Both are eventfds (Serve refuses other descriptors) in non-blocking
	// mode: a write to call the frontend saturated fails with EAGAIN instead of blocking. The
	// fds stay owned by the backend and valid until Stop returns.
	// Start must not block.
	Start(q int, vq *virtio.Queue, kick, call int) error
	// Stop stops serving q; when it returns nothing touches vq or the fds any more.
	Stop(q int)
}

// Optional interfaces a Device may implement; Serve asks with a type assertion.
type (
	// QueueCounter is a device with other than DefaultQueues virtqueues
	// (a multiqueue NIC has two per queue pair). Serve offers ProtocolMQ
	// and answers GET_QUEUE_NUM with it.
	QueueCounter interface {
		Queues() int
	}
	// ConfigSpace is a device with a configuration space the frontend
	// reads and writes through GET_CONFIG/SET_CONFIG; Serve offers
	// ProtocolConfig only for such devices. Offsets and sizes come from
	// the frontend: out of range bytes read as zero and writes to them
	// are ignored, as in virtio.Device.
	ConfigSpace interface {
		ReadConfig(offset uint64, data []byte)
		WriteConfig(offset uint64, data []byte)
	}
	// QueueSizeLimiter is a device that serves rings of at most
	// MaxQueueSize descriptors; Serve refuses a larger SET_VRING_NUM.
	// Without it the spec's limit, virtio.MaxQueueSize, applies.
	QueueSizeLimiter interface {
		MaxQueueSize() uint16
	}
	// RequestErrorer hears about every request Serve refused. Without
	// REPLY_ACK the frontend never learns of them, so this is the place
	// to log them.
	RequestErrorer interface {
		RequestFailed(req Request, err error)
	}
	// CutOffCounter hears about every connection Serve ended for the
	// frontend's fault (framing it cannot trust, descriptors of the
	// wrong kind), once per connection, with the reason; a frontend that
	// hung up, even in the middle of a request, is not counted. A
	// frontend cut off again and again is a VMM its guest has taken over,
	// or a broken one: worth a counter an operator sees.
	CutOffCounter interface {
		CutOff(err error)
	}
)

// DefaultQueues is the virtqueue count of a device that does not implement
// QueueCounter: one receive and one transmit queue, a single-queue NIC.
const DefaultQueues = 2

// maxQueues bounds QueueCounter: SET_VRING_KICK/CALL/ERR carry the index in 8 bits.
const maxQueues = vringFDMask + 1

// protocolFeatures are the protocol features Serve offers to every frontend.
// (Not CONFIGURE_MEM_SLOTS: a frontend that negotiates it sends
// ADD/REM_MEM_REG instead of SET_MEM_TABLE, which this backend lacks.)
const protocolFeatures = ProtocolMQ | ProtocolReplyAck

// ErrRequest is wrapped by the errors of refused requests (which Serve
// reports with a REPLY_ACK and to a RequestErrorer, and survives).
var ErrRequest = errors.New("vhost-user: request refused")

// Serve runs the backend side of one frontend connection for dev until the
// frontend closes it (nil) or breaks the framing (an error); it closes conn.
// Requests are handled one at a time, in order, on the calling goroutine;
// dev runs its rings on goroutines of its own between Start and Stop.
// Malformed or refused requests are answered with an error ack when the
// frontend asked for one and otherwise dropped; only a message whose
// framing cannot be trusted (bad version, oversize payload) or that
// carried descriptors of the wrong kind (ErrPeer) ends the connection.
// On return every started ring is stopped, guest memory is unmapped and
// every received descriptor closed.
func Serve(conn *net.UnixConn, dev Device) error {
	return serve(conn, dev, nil)
}

// serve is Serve with a hook that sees every well-framed request, for tests.
func serve(uc *net.UnixConn, dev Device, trace func(Header)) (err error) {
	b := newBackend(dev)
	c := newConn(uc)
	defer func() {
		b.shutdown()
		uc.Close()
		if cc, ok := dev.(CutOffCounter); ok && (errors.Is(err, ErrProtocol) || errors.Is(err, ErrPeer)) {
			cc.CutOff(err)
		}
	}()
	for {
		h, payload, fds, err := c.recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !errors.Is(err, errFDsLost) {
			return fmt.Errorf("vhost-user backend: %w", err)
		}
		if trace != nil {
			trace(h)
		}
		if err == nil {
			err = b.handle(c, h, payload, fds)
		} else {
			closeFDs(fds)
		}
		if err != nil && errors.Is(err, errSend) {
			return err
		}
		if err2 := b.finish(c, h, err); err2 != nil {
			return err2
		}
		// A frontend passing descriptors of the wrong kind (a pipe as
		// an eventfd, memory that can shrink) is hostile or broken
		// beyond what a refusal fixes: cut it off.
		if errors.Is(err, ErrPeer) {
			return fmt.Errorf("vhost-user backend: frontend cut off: %w", err)
		}
	}
}

// ErrPeer is wrapped by the errors of requests that carried descriptors
// of the wrong kind (see net/internal/peerfd); Serve refuses the request,
// reports it to a RequestErrorer and then ends the connection.
var ErrPeer = peerfd.ErrKind

// backend is the state one connection builds up.
type backend struct {
	dev       Device
	config    ConfigSpace // nil when dev has none
	maxNum    uint32      // largest ring size the device serves
	offered   uint64      // virtio features offered, with FeatureProtocolFeatures
	protocol  uint64      // protocol features offered
	features  uint64      // acked virtio features (without FeatureProtocolFeatures)
	acked     bool        // SET_FEATURES seen
	withProto bool        // ... and it acked FeatureProtocolFeatures
	proto     uint64      // acked protocol features
	mem       *Memory
	rings     []ring
}

// ring is one vring's configuration as the frontend programmed it.
type ring struct {
	num        uint16 // size; 0 until SET_VRING_NUM
	addr       VringAddr
	hasAddr    bool
	base       uint16 // next available index to consume when (re)started
	kick       int    // -1 when none
	call       int
	errFD      int
	enabled    bool
	enableSeen bool
	q          *virtio.Queue // non-nil while started
}

func newBackend(dev Device) *backend {
	b := &backend{dev: dev, protocol: protocolFeatures, maxNum: virtio.MaxQueueSize}
	if l, ok := dev.(QueueSizeLimiter); ok && l.MaxQueueSize() != 0 {
		b.maxNum = min(uint32(l.MaxQueueSize()), virtio.MaxQueueSize)
	}
	n := DefaultQueues
	if qc, ok := dev.(QueueCounter); ok {
		n = min(max(qc.Queues(), 1), maxQueues)
	}
	if cs, ok := dev.(ConfigSpace); ok {
		b.config = cs
		b.protocol |= ProtocolConfig
	}
	b.offered = dev.Features() | FeatureProtocolFeatures
	b.rings = make([]ring, n)
	b.resetRings()
	return b
}

func (b *backend) resetRings() {
	for i := range b.rings {
		b.rings[i] = ring{kick: -1, call: -1, errFD: -1, enabled: true}
	}
}

// errSend marks errors writing to the frontend: the connection is gone.
var errSend = errors.New("vhost-user: reply failed")

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRequest}, args...)...)
}

// finish sends the REPLY_ACK the frontend asked for (and reports a refusal).
func (b *backend) finish(c *conn, h Header, err error) error {
	if err != nil {
		if re, ok := b.dev.(RequestErrorer); ok {
			re.RequestFailed(h.Request, err)
		}
	}
	if h.Flags&FlagNeedReply == 0 || b.proto&ProtocolReplyAck == 0 || hasReply(h.Request) {
		return nil
	}
	var status uint64
	if err != nil {
		status = 1
	}
	if err := c.send(h.Request, FlagReply, appendU64(c.scratch[:0], status), nil); err != nil {
		return fmt.Errorf("%w: %w", errSend, err)
	}
	return nil
}

// hasReply reports whether a request is answered with its own reply
// message, which then stands in for the ack.
func hasReply(r Request) bool {
	switch r {
	case GetFeatures, GetProtocolFeatures, GetVringBase, GetQueueNum, GetConfig, GetMaxMemSlots,
		GetInflightFD, GetStatus:
		return true
	}
	return false
}

// reply sends the answer to a request that has one.
func (b *backend) reply(c *conn, h Header, payload []byte) error {
	if err := c.send(h.Request, FlagReply, payload, nil); err != nil {
		return fmt.Errorf("%w: %w", errSend, err)
	}
	return nil
}

// handle carries out one request; it owns fds and closes those it does not keep.
func (b *backend) handle(c *conn, h Header, p []byte, fds []int) error {
	switch h.Request {
	case SetMemTable:
		return b.setMemTable(p, fds)
	case SetVringKick, SetVringCall, SetVringErr:
		return b.setVringFD(h.Request, p, fds)
	}
	if len(fds) > 0 {
		closeFDs(fds)
		return refused("%v carries %d unexpected descriptors", h.Request, len(fds))
	}
	switch h.Request {
	case GetFeatures:
		return b.reply(c, h, appendU64(c.scratch[:0], b.offered))
	case SetFeatures:
		return b.setFeatures(p)
	case GetProtocolFeatures:
		return b.reply(c, h, appendU64(c.scratch[:0], b.protocol))
	case SetProtocolFeatures:
		v, err := ParseU64(p)
		if err != nil {
			return err
		}
		if extra := v &^ b.protocol; extra != 0 {
			return refused("protocol features %#x were not offered", extra)
		}
		b.proto = v
		return nil
	case SetOwner:
		return nil
	case ResetOwner, ResetDevice:
		b.stopAll()
		b.closeRingFDs()
		b.resetRings()
		b.features, b.acked, b.withProto = 0, false, false
		return nil
	case GetQueueNum:
		return b.reply(c, h, appendU64(c.scratch[:0], uint64(len(b.rings))))
	case GetMaxMemSlots:
		return b.reply(c, h, appendU64(c.scratch[:0], MaxRegions))
	case SetVringNum:
		return b.setVringNum(p)
	case SetVringAddr:
		return b.setVringAddr(p)
	case SetVringBase:
		return b.setVringBase(p)
	case GetVringBase:
		s, err := b.getVringBase(p)
		if err != nil {
			// The frontend waits for this reply: answer anyway, with
			// the index it sent, so it does not hang.
			b.reply(c, h, s.append(c.scratch[:0]))
			return err
		}
		return b.reply(c, h, s.append(c.scratch[:0]))
	case SetVringEnable:
		return b.setVringEnable(p)
	case GetConfig:
		cfg, err := b.getConfig(p)
		if err != nil {
			// An empty reply is the protocol's failure answer.
			b.reply(c, h, nil)
			return err
		}
		return b.reply(c, h, cfg.append(c.scratch[:0]))
	case SetConfig:
		return b.setConfig(p)
	}
	if hasReply(h.Request) {
		b.reply(c, h, nil)
	}
	return refused("%v is not supported", h.Request)
}

func (b *backend) setFeatures(p []byte) error {
	v, err := ParseU64(p)
	if err != nil {
		return err
	}
	if extra := v &^ b.offered; extra != 0 {
		return refused("features %#x were not offered (offered %#x)", extra, b.offered)
	}
	if b.anyStarted() {
		return refused("SET_FEATURES while rings are running")
	}
	dev := v &^ FeatureProtocolFeatures
	if err := b.dev.SetFeatures(dev); err != nil {
		return fmt.Errorf("%w: device: %w", ErrRequest, err)
	}
	// Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the
	// start; with it they wait for SET_VRING_ENABLE. A repeated
	// SET_FEATURES that keeps the bit leaves the enable states alone.
	withProto := v&FeatureProtocolFeatures != 0
	if !b.acked || withProto != b.withProto {
		for i := range b.rings {
			b.rings[i].enabled = !withProto || b.rings[i].enableSeen && b.rings[i].enabled
		}
	}
	b.features, b.acked, b.withProto = dev, true, withProto
	return nil
}

func (b *backend) setMemTable(p []byte, fds []int) error {
	defer closeFDs(fds) // the mappings keep their own references
	regions, err := ParseMemTable(p)
	if err != nil {
		return err
	}
	if len(fds) != len(regions) {
		return refused("memory table of %d regions came with %d descriptors", len(regions), len(fds))
	}
	for i := range regions {
		regions[i].Fd = fds[i]
	}
	// Validate and map the new table before touching the running rings,
	// so a bad table leaves everything as it was.
	mem, err := Map(regions)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRequest, err)
	}
	running := b.stopAll()
	if b.mem != nil {
		b.mem.Close()
	}
	b.mem = mem
	var errs []error
	for _, i := range running {
		if err := b.start(i); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ringFor checks a ring index from the frontend.
func (b *backend) ringFor(index uint32) (int, *ring, error) {
	if index >= uint32(len(b.rings)) {
		return 0, nil, refused("vring %d does not exist (the device has %d)", index, len(b.rings))
	}
	return int(index), &b.rings[index], nil
}

// vringState decodes a vring state payload (SET_VRING_NUM, _BASE,
// _ENABLE, GET_VRING_BASE) and finds the ring it names.
func (b *backend) vringState(p []byte) (VringState, int, *ring, error) {
	s, err := ParseVringState(p)
	if err != nil {
		return s, 0, nil, err
	}
	i, r, err := b.ringFor(s.Index)
	return s, i, r, err
}

// reconfigure stops ring i, applies change, and starts it again when it
// is ready: the frontend may reprogram a running ring (QEMU swaps call
// descriptors when the guest masks a vector), and Device.Start takes the
// configuration only once.
func (b *backend) reconfigure(i int, change func(r *ring) error) error {
	b.stop(i)
	if err := change(&b.rings[i]); err != nil {
		b.start(i)
		return err
	}
	return b.start(i)
}

func (b *backend) setVringNum(p []byte) error {
	s, i, _, err := b.vringState(p)
	if err != nil {
		return err
	}
	if s.Num == 0 || s.Num > b.maxNum || s.Num&(s.Num-1) != 0 {
		return refused("vring %d size %d is not a power of two in [1, %d]", i, s.Num, b.maxNum)
	}
	return b.reconfigure(i, func(r *ring) error { r.num = uint16(s.Num); return nil })
}

func (b *backend) setVringAddr(p []byte) error {
	a, err := ParseVringAddr(p)
	if err != nil {
		return err
	}
	i, _, err := b.ringFor(a.Index)
	if err != nil {
		return err
	}
	if b.mem != nil {
		for _, ua := range []uint64{a.Desc, a.Avail, a.Used} {
			if _, err := b.mem.Translate(ua); err != nil {
				return fmt.Errorf("%w: vring %d: %w", ErrRequest, i, err)
			}
		}
	}
	return b.reconfigure(i, func(r *ring) error { r.addr, r.hasAddr = a, true; return nil })
}

func (b *backend) setVringBase(p []byte) error {
	s, i, _, err := b.vringState(p)
	if err != nil {
		return err
	}
	if s.Num > 0xffff {
		return refused("vring %d base %#x has reserved bits set", i, s.Num)
	}
	return b.reconfigure(i, func(r *ring) error { r.base = uint16(s.Num); return nil })
}

// getVringBase stops the ring and reports where a successor must continue.
// The kick descriptor is dropped too: a stopped ring starts again only when
// the frontend sends a new one, as the spec's ring state machine requires.
func (b *backend) getVringBase(p []byte) (VringState, error) {
	s, i, r, err := b.vringState(p)
	if err != nil {
		return VringState{Index: s.Index}, err
	}
	b.stop(i)
	if r.kick >= 0 {
		unix.Close(r.kick)
		r.kick = -1
	}
	return VringState{Index: s.Index, Num: uint32(r.base)}, nil
}

func (b *backend) setVringEnable(p []byte) error {
	s, i, _, err := b.vringState(p)
	if err != nil {
		return err
	}
	if s.Num > 1 {
		return refused("vring %d enable value %d", i, s.Num)
	}
	return b.reconfigure(i, func(r *ring) error { r.enabled, r.enableSeen = s.Num == 1, true; return nil })
}

func (b *backend) setVringFD(req Request, p []byte, fds []int) error {
	index, noFD, err := ParseVringFD(p)
	if err != nil {
		closeFDs(fds)
		return err
	}
	want := 1
	if noFD {
		want = 0
	}
	if len(fds) != want {
		closeFDs(fds)
		return refused("%v for vring %d came with %d descriptors, want %d", req, index, len(fds), want)
	}
	fd := -1
	if want == 1 {
		fd = fds[0]
	}
	i, _, err := b.ringFor(index)
	if err != nil {
		closeFDs(fds)
		return err
	}
	// Kick, call and err are eventfds by the protocol. Anything else
	// would hurt the device: a pipe the frontend never reads blocks the
	// writer of call, a regular file or /dev/zero as kick is always
	// readable and makes its reader spin. Checked here, so every Device
	// gets only non-blocking eventfds.
	if fd >= 0 {
		if err := peerfd.Eventfd(fd); err != nil {
			unix.Close(fd)
			return fmt.Errorf("%w: %v for vring %d: %w", ErrRequest, req, index, err)
		}
	}
	return b.reconfigure(i, func(r *ring) error {
		slot := &r.kick
		switch req {
		case SetVringCall:
			slot = &r.call
		case SetVringErr:
			slot = &r.errFD
		}
		if *slot >= 0 {
			unix.Close(*slot)
		}
		*slot = fd
		return nil
	})
}

func (b *backend) getConfig(p []byte) (Config, error) {
	c, err := ParseConfig(p)
	if err != nil {
		return Config{}, err
	}
	if b.config == nil {
		return Config{}, refused("device has no configuration space")
	}
	// c.Data aliases the receive buffer, which is free until the next
	// message: fill it in place and send it back.
	clear(c.Data)
	b.config.ReadConfig(uint64(c.Offset), c.Data)
	return c, nil
}

func (b *backend) setConfig(p []byte) error {
	c, err := ParseConfig(p)
	if err != nil {
		return err
	}
	if b.config == nil {
		return refused("device has no configuration space")
	}
	b.config.WriteConfig(uint64(c.Offset), c.Data)
	return nil
}

// ready reports whether ring i has everything Device.Start needs. A ring
// without kick or call descriptor (the "invalid FD" bit: polling, or
// notifications disabled) is not started, since Device promises real
// eventfds.
func (b *backend) ready(r *ring) bool {
	return b.mem != nil && r.num != 0 && r.hasAddr && r.kick >= 0 && r.call >= 0 && r.enabled
}

// start starts ring i if it is ready and not running yet.
func (b *backend) start(i int) error {
	r := &b.rings[i]
	if r.q != nil || !b.ready(r) {
		return nil
	}
	q, err := virtio.NewQueue(r.num)
	if err != nil {
		return fmt.Errorf("%w: vring %d: %w", ErrRequest, i, err)
	}
	q.Size = r.num
	for _, t := range []struct {
		dst *uint64
		ua  uint64
	}{{&q.DescAddr, r.addr.Desc}, {&q.AvailAddr, r.addr.Avail}, {&q.UsedAddr, r.addr.Used}} {
		if *t.dst, err = b.mem.Translate(t.ua); err != nil {
			return fmt.Errorf("%w: vring %d: %w", ErrRequest, i, err)
		}
	}
	q.Ready = true
	if err := q.Activate(b.mem, b.features); err != nil {
		return fmt.Errorf("%w: vring %d: %w", ErrRequest, i, err)
	}
	q.Resume(r.base)
	if err := b.dev.Start(i, q, r.kick, r.call); err != nil {
		return fmt.Errorf("%w: start vring %d: %w", ErrRequest, i, err)
	}
	r.q = q
	return nil
}

// stop stops ring i if it runs and remembers where it stopped.
func (b *backend) stop(i int) {
	r := &b.rings[i]
	if r.q == nil {
		return
	}
	b.dev.Stop(i)
	r.base = r.q.NextAvail()
	r.q = nil
}

// stopAll stops every running ring and returns which ones were running.
func (b *backend) stopAll() []int {
	var running []int
	for i := range b.rings {
		if b.rings[i].q != nil {
			b.stop(i)
			running = append(running, i)
		}
	}
	return running
}

func (b *backend) anyStarted() bool {
	for i := range b.rings {
		if b.rings[i].q != nil {
			return true
		}
	}
	return false
}

func (b *backend) closeRingFDs() {
	for i := range b.rings {
		r := &b.rings[i]
		closeFDs([]int{r.kick, r.call, r.errFD})
		r.kick, r.call, r.errFD = -1, -1, -1
	}
}

// shutdown is the end of a connection: rings first, so no device goroutine
// touches memory or descriptors once they go.
func (b *backend) shutdown() {
	b.stopAll()
	b.closeRingFDs()
	if b.mem != nil {
		b.mem.Close()
		b.mem = nil
	}
}
