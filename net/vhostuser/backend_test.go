package vhostuser

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// handshake runs what a VMM does before starting ring q: negotiate, own,
// map memory, program the ring at base, and enable it.
func handshake(t *testing.T, f *Frontend, dev *echo, g *guestRAM, d *driver, base uint16) {
	t.Helper()
	feats, err := f.GetFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if feats&FeatureProtocolFeatures == 0 || feats&^FeatureProtocolFeatures != dev.features {
		t.Fatalf("GetFeatures = %#x, want the device's %#x plus PROTOCOL_FEATURES", feats, dev.features)
	}
	must(t, f.SetFeatures(feats))
	proto, err := f.GetProtocolFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if proto&(ProtocolMQ|ProtocolReplyAck) != ProtocolMQ|ProtocolReplyAck {
		t.Fatalf("protocol features %#x lack MQ or REPLY_ACK", proto)
	}
	must(t, f.SetProtocolFeatures(ProtocolMQ|ProtocolReplyAck))
	must(t, f.SetOwner())
	n, err := f.GetQueueNum()
	if err != nil || n != DefaultQueues {
		t.Fatalf("GetQueueNum = %d, %v; want %d", n, err, DefaultQueues)
	}
	must(t, f.SetMemTable(g.regions()))
	q := int(d.ringUAddr.Index)
	must(t, f.SetVringNum(q, d.Size))
	must(t, f.SetVringBase(q, base))
	must(t, f.SetVringAddr(d.ringUAddr))
	must(t, f.SetVringKick(q, d.kick))
	must(t, f.SetVringCall(q, d.call))
	// PROTOCOL_FEATURES was acked, so the ring waits for SET_VRING_ENABLE.
	if dev.running() != 0 {
		t.Fatal("ring started before SET_VRING_ENABLE although PROTOCOL_FEATURES was negotiated")
	}
	must(t, f.SetVringEnable(q, true))
	if dev.running() != 1 {
		t.Fatalf("%d rings running after SET_VRING_ENABLE, want 1", dev.running())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// exchange makes one chain available, waits for the device to use it and
// checks the echoed (reversed) bytes.
func exchange(t *testing.T, d *driver, msg string) {
	t.Helper()
	slot := d.AvailIdx()
	d.add([]byte(msg), 64)
	d.waitCall(t)
	deadline := time.Now().Add(5 * time.Second)
	for d.UsedIdx() != slot+1 {
		if time.Now().After(deadline) {
			t.Fatalf("used->idx = %d, want %d", d.UsedIdx(), slot+1)
		}
		time.Sleep(time.Millisecond)
	}
	_, n := d.UsedElem(slot)
	if n != uint32(len(msg)) {
		t.Fatalf("used length %d, want %d", n, len(msg))
	}
	want := []byte(msg)
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}
	if got := d.reply(slot, n); !bytes.Equal(got, want) {
		t.Fatalf("device wrote %q, want %q", got, want)
	}
}

func TestServeQueueAndReconnect(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	d := newDriver(t, g, 0, 8)
	baseline := openFDs(t)

	f, err := Dial(s.path)
	must(t, err)
	handshake(t, f, dev, g, d, 0)
	// More chains than the ring holds, so the indices wrap.
	for i := range 10 {
		exchange(t, d, fmt.Sprintf("frame %d", i))
	}
	base, err := f.GetVringBase(0)
	must(t, err)
	if base != 10 || dev.running() != 0 {
		t.Fatalf("GET_VRING_BASE = %d with %d rings running, want 10 and 0", base, dev.running())
	}
	// A stopped ring stays stopped: kicks are not served.
	d.add([]byte("while stopped"), 64)
	time.Sleep(20 * time.Millisecond)
	if d.UsedIdx() != 10 {
		t.Fatalf("a stopped ring consumed a buffer: used->idx = %d", d.UsedIdx())
	}
	must(t, f.Close())
	if err := s.served(t); err != nil {
		t.Fatalf("Serve after the frontend closed: %v", err)
	}

	// The "VMM" reconnects and restarts the ring at the used index; the
	// chain made available while stopped is served now.
	f, err = Dial(s.path)
	must(t, err)
	handshake(t, f, dev, g, d, d.UsedIdx())
	deadline := time.Now().Add(5 * time.Second)
	for d.UsedIdx() != 11 {
		// The kick that announced it came before this connection.
		unix.Write(d.kick, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		if time.Now().After(deadline) {
			t.Fatalf("the pending chain was not served after reconnecting: used->idx = %d", d.UsedIdx())
		}
		time.Sleep(time.Millisecond)
	}
	exchange(t, d, "after reconnect")
	must(t, f.Close())
	if err := s.served(t); err != nil {
		t.Fatal(err)
	}
	if starts, stops, _ := dev.counts(); dev.running() != 0 || starts != stops {
		t.Fatalf("after disconnect: %d running, %d starts, %d stops", dev.running(), starts, stops)
	}
	if n := openFDs(t); n != baseline {
		t.Fatalf("%d descriptors open after both connections ended, %d before", n, baseline)
	}
}

// TestServeReconfigureRunning checks that reprogramming a running ring
// (new call eventfd, new memory table) restarts it where it was.
func TestServeReconfigureRunning(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	d := newDriver(t, g, 1, 4)
	f, err := Dial(s.path)
	must(t, err)
	defer f.Close()
	handshake(t, f, dev, g, d, 0)
	exchange(t, d, "one")

	call2, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	must(t, err)
	defer unix.Close(call2)
	must(t, f.SetVringCall(1, call2))
	old := d.call
	d.call = call2
	defer func() { d.call = old }()
	exchange(t, d, "two")

	must(t, f.SetMemTable(g.regions()))
	exchange(t, d, "three")
	if starts, _, _ := dev.counts(); dev.running() != 1 || starts != 3 {
		t.Fatalf("%d running after %d starts, want 1 after 3", dev.running(), starts)
	}
	must(t, f.SetVringEnable(1, false))
	if dev.running() != 0 {
		t.Fatal("ring still running after SET_VRING_ENABLE 0")
	}
	base, err := f.GetVringBase(1)
	if err != nil || base != 3 {
		t.Fatalf("GetVringBase = %d, %v; want 3", base, err)
	}
}

// TestServeWithoutProtocolFeatures: a frontend that does not ack
// PROTOCOL_FEATURES gets rings that start as soon as they are kicked up.
func TestServeWithoutProtocolFeatures(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	d := newDriver(t, g, 0, 16)
	f, err := Dial(s.path)
	must(t, err)
	defer f.Close()
	must(t, f.SetFeatures(dev.features))
	must(t, f.SetOwner())
	must(t, f.SetMemTable(g.regions()))
	must(t, f.SetVringNum(0, 16))
	must(t, f.SetVringAddr(d.ringUAddr))
	must(t, f.SetVringCall(0, d.call))
	must(t, f.SetVringKick(0, d.kick))
	// Without REPLY_ACK the requests are not acknowledged: a GET is the
	// barrier that shows they were handled.
	if _, err := f.GetFeatures(); err != nil {
		t.Fatal(err)
	}
	if dev.running() != 1 {
		t.Fatalf("%d rings running, want 1", dev.running())
	}
	exchange(t, d, "no protocol features")
	if _, _, acked := dev.counts(); acked != dev.features {
		t.Fatalf("device acked %#x, want %#x", acked, dev.features)
	}
}

// rawClient sends hand-made, possibly hostile, messages.
type rawClient struct {
	c *conn
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	must(t, err)
	t.Cleanup(func() { uc.Close() })
	return &rawClient{c: newConn(uc)}
}

// do sends one message with NEED_REPLY and returns the ack status, or
// closed == true when the backend hung up instead.
func (r *rawClient) do(t *testing.T, m rawMsg) (status uint64, closed bool) {
	t.Helper()
	flags := FlagNeedReply | m.flags
	h := Header{Request: m.req, Flags: flags | Version, Size: uint32(len(m.payload))}
	if m.size != 0 {
		h.Size = m.size
	}
	if m.rawFlags {
		h.Flags = m.flags
	}
	b := make([]byte, HeaderSize, HeaderSize+len(m.payload))
	h.put(b)
	b = append(b, m.payload...)
	var oob []byte
	if len(m.fds) > 0 {
		oob = unix.UnixRights(m.fds...)
	}
	if _, _, err := r.c.uc.WriteMsgUnix(b, oob, nil); err != nil {
		return 0, true
	}
	r.c.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	rh, p, fds, err := r.c.recv()
	closeFDs(fds)
	if err != nil {
		return 0, true
	}
	if rh.Request != m.req || rh.Flags&FlagReply == 0 {
		t.Fatalf("reply %+v to %v", rh, m.req)
	}
	v, err := ParseU64(p)
	if err != nil {
		t.Fatalf("ack payload: %v", err)
	}
	return v, false
}

type rawMsg struct {
	req      Request
	payload  []byte
	fds      []int
	flags    uint32
	rawFlags bool   // send flags as they are, without the version
	size     uint32 // announce this payload size instead of the real one
}

func u64(v uint64) []byte            { return appendU64(nil, v) }
func state(i, n uint32) []byte       { return VringState{i, n}.append(nil) }
func table(regions ...Region) []byte { return appendMemTable(nil, regions) }
func addrMsg(a VringAddr) rawMsg     { return rawMsg{req: SetVringAddr, payload: a.append(nil)} }
func repeat(fd, n int) (fds []int) {
	for range n {
		fds = append(fds, fd)
	}
	return fds
}

func TestServeHostile(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	d := newDriver(t, g, 0, 8)
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	must(t, err)
	defer unix.Close(evfd)
	// Descriptors of the wrong kind a hostile frontend could pass.
	var pipe [2]int
	must(t, unix.Pipe2(pipe[:], unix.O_CLOEXEC))
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	zero, err := unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(zero)
	unsealed, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
	must(t, err)
	defer unix.Close(unsealed)
	must(t, unix.Ftruncate(unsealed, ramSize))
	baseline := openFDs(t)

	page := uint64(4096)
	good := g.regions()
	memTable := rawMsg{req: SetMemTable, payload: table(good...), fds: []int{g.fd, g.fd}}
	nine := make([]Region, 9)
	for i := range nine {
		nine[i] = Region{GuestAddr: uint64(i) * page, Size: page, UserAddr: uint64(i) * page, Offset: uint64(i) * page}
	}
	ring := d.ringUAddr
	outside := ring
	outside.Avail = 0x10 // no region holds frontend address 0x10
	misaligned := ring
	misaligned.Desc += 8

	tests := []struct {
		name   string
		setup  []rawMsg // each must be acked with success
		msg    rawMsg   // must be refused (or end the connection)
		closed bool
		cut    bool // refused, then the connection ends (ErrPeer)
	}{
		{name: "overlapping guest ranges", msg: rawMsg{req: SetMemTable, fds: []int{g.fd, g.fd}, payload: table(
			Region{GuestAddr: 0, Size: 2 * page, UserAddr: 0x10000000},
			Region{GuestAddr: page, Size: 2 * page, UserAddr: 0x20000000})}},
		{name: "overlapping frontend ranges", msg: rawMsg{req: SetMemTable, fds: []int{g.fd, g.fd}, payload: table(
			Region{GuestAddr: 0, Size: page, UserAddr: 0x10000000},
			Region{GuestAddr: 0x100000, Size: page, UserAddr: 0x10000000})}},
		{name: "nine regions", msg: rawMsg{req: SetMemTable, payload: table(nine...), fds: repeat(g.fd, 8)}},
		{name: "region beyond the file", msg: rawMsg{req: SetMemTable, fds: []int{g.fd},
			payload: table(Region{GuestAddr: 0, Size: ramSize, Offset: page})}},
		{name: "region wraps", msg: rawMsg{req: SetMemTable, fds: []int{g.fd},
			payload: table(Region{GuestAddr: ^uint64(0) - page + 1, Size: 2 * page})}},
		{name: "empty region", msg: rawMsg{req: SetMemTable, fds: []int{g.fd}, payload: table(Region{Size: 0})}},
		{name: "region is not a file", msg: rawMsg{req: SetMemTable, fds: []int{evfd}, payload: table(Region{Size: page})}, cut: true},
		{name: "unsealed memfd (could shrink under the mapping)", msg: rawMsg{req: SetMemTable, fds: []int{unsealed},
			payload: table(Region{GuestAddr: 0, Size: page})}, cut: true},
		{name: "missing region descriptor", msg: rawMsg{req: SetMemTable, payload: table(good...), fds: []int{g.fd}}},
		{name: "memory table without descriptors", msg: rawMsg{req: SetMemTable, payload: table(good...)}},
		{name: "memory table truncated", msg: rawMsg{req: SetMemTable, payload: table(good...)[:20], fds: []int{g.fd}}},
		{name: "ring size not a power of two", msg: rawMsg{req: SetVringNum, payload: state(0, 3)}},
		{name: "ring size zero", msg: rawMsg{req: SetVringNum, payload: state(0, 0)}},
		{name: "ring size too large", msg: rawMsg{req: SetVringNum, payload: state(0, 65536)}},
		{name: "ring index out of range", msg: rawMsg{req: SetVringNum, payload: state(7, 8)}},
		{name: "short payload", msg: rawMsg{req: SetVringNum, payload: []byte{0, 0, 0, 0}}},
		{name: "ring address outside memory", setup: []rawMsg{memTable}, msg: addrMsg(outside)},
		{name: "misaligned ring starts nothing", setup: []rawMsg{memTable, {req: SetVringNum, payload: state(0, 8)},
			addrMsg(misaligned), {req: SetVringCall, payload: u64(0), fds: []int{d.call}},
			{req: SetVringEnable, payload: state(0, 1)}},
			msg: rawMsg{req: SetVringKick, payload: u64(0), fds: []int{d.kick}}},
		{name: "kick is a pipe", msg: rawMsg{req: SetVringKick, payload: u64(0), fds: []int{pipe[0]}}, cut: true},
		{name: "kick is /dev/zero", msg: rawMsg{req: SetVringKick, payload: u64(0), fds: []int{zero}}, cut: true},
		{name: "call is a pipe", msg: rawMsg{req: SetVringCall, payload: u64(0), fds: []int{pipe[1]}}, cut: true},
		{name: "err is a memfd", msg: rawMsg{req: SetVringErr, payload: u64(0), fds: []int{g.fd}}, cut: true},
		{name: "kick without descriptor", msg: rawMsg{req: SetVringKick, payload: u64(0)}},
		{name: "kick with two descriptors", msg: rawMsg{req: SetVringKick, payload: u64(0), fds: []int{d.kick, d.kick}}},
		{name: "kick reserved bits", msg: rawMsg{req: SetVringKick, payload: u64(1 << 20), fds: []int{d.kick}}},
		{name: "kick for missing ring", msg: rawMsg{req: SetVringCall, payload: u64(9), fds: []int{d.kick}}},
		{name: "enable value 2", msg: rawMsg{req: SetVringEnable, payload: state(0, 2)}},
		{name: "base with reserved bits", msg: rawMsg{req: SetVringBase, payload: state(0, 1<<16)}},
		{name: "features not offered", msg: rawMsg{req: SetFeatures, payload: u64(1 << 63)}},
		{name: "protocol features not offered", msg: rawMsg{req: SetProtocolFeatures, payload: u64(1<<63 | ProtocolReplyAck)}},
		{name: "unknown request", msg: rawMsg{req: 200, payload: u64(0)}},
		{name: "unsupported request", msg: rawMsg{req: SetLogBase, payload: make([]byte, 16)}},
		{name: "stray descriptor", msg: rawMsg{req: SetOwner, fds: []int{evfd}}},
		{name: "too many descriptors", msg: rawMsg{req: SetOwner, fds: repeat(evfd, 12)}, cut: true},
		{name: "config without config space", msg: rawMsg{req: SetConfig, payload: Config{Data: []byte{1}}.append(nil)}},
		{name: "oversize payload", closed: true, msg: rawMsg{req: SetOwner, size: 1 << 20}},
		{name: "bad version", closed: true, msg: rawMsg{req: SetOwner, rawFlags: true, flags: 0x2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, s.path)
			if st, closed := r.do(t, rawMsg{req: SetProtocolFeatures, payload: u64(ProtocolReplyAck)}); closed || st != 0 {
				t.Fatalf("SET_PROTOCOL_FEATURES: status %d closed %v", st, closed)
			}
			for _, m := range tt.setup {
				if st, closed := r.do(t, m); closed || st != 0 {
					t.Fatalf("setup %v: status %d closed %v", m.req, st, closed)
				}
			}
			st, closed := r.do(t, tt.msg)
			if closed != tt.closed {
				t.Fatalf("%v: closed = %v, want %v", tt.msg.req, closed, tt.closed)
			}
			if tt.closed {
				if err := s.served(t); err == nil || !errors.Is(err, ErrProtocol) {
					t.Fatalf("Serve = %v, want a protocol error", err)
				}
				return
			}
			if st == 0 {
				t.Fatalf("%v was acked as a success", tt.msg.req)
			}
			if tt.cut {
				if err := s.served(t); !errors.Is(err, ErrPeer) {
					t.Fatalf("Serve = %v, want the frontend cut off (ErrPeer)", err)
				}
				return
			}
			// Still serving: a GET answers.
			if _, closed := r.do(t, rawMsg{req: GetQueueNum}); closed {
				t.Fatal("backend hung up after refusing a request")
			}
			if dev.running() != 0 {
				t.Fatalf("%d rings running after a refused request", dev.running())
			}
			r.c.uc.Close()
			if err := s.served(t); err != nil {
				t.Fatalf("Serve = %v after a clean close", err)
			}
		})
	}
	if n := openFDs(t); n != baseline {
		t.Fatalf("%d descriptors open after the hostile connections, %d before", n, baseline)
	}
	if n := len(dev.refusals()); n < len(tests)-2 {
		t.Fatalf("RequestFailed heard of %d refusals, want at least %d", n, len(tests)-2)
	}
	// CutOff heard of each connection ended for the frontend's fault,
	// and of no other (refusals and clean closes are not cut-offs).
	want := 0
	for _, tt := range tests {
		if tt.closed || tt.cut {
			want++
		}
	}
	dev.mu.Lock()
	got := dev.cutOffs
	dev.mu.Unlock()
	if got != want {
		t.Fatalf("CutOff heard of %d connections, want %d", got, want)
	}
}

// TestServeTruncated: a frontend dying in the middle of a message ends
// Serve with an error and leaves nothing behind.
func TestServeTruncated(t *testing.T) {
	dev := newEcho()
	s := newServer(t, dev)
	r := dialRaw(t, s.path)
	b := make([]byte, HeaderSize+3)
	Header{Request: SetVringNum, Flags: Version, Size: 8}.put(b)
	if _, err := r.c.uc.Write(b); err != nil {
		t.Fatal(err)
	}
	r.c.uc.Close()
	if err := s.served(t); err == nil {
		t.Fatal("Serve returned nil for a message cut short")
	}
}

func TestListenStaleSocket(t *testing.T) {
	dev := newEcho()
	s := newServer(t, dev)
	if _, err := Listen(s.path); err == nil {
		t.Fatal("Listen on a served socket succeeded")
	}
	s.l.Close()
	// net.UnixListener.Close unlinks its socket; leave a stale one behind
	// the way a crashed process does.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(t, err)
	must(t, unix.Bind(fd, &unix.SockaddrUnix{Name: s.path}))
	unix.Close(fd)
	l, err := Listen(s.path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()
	notSocket := t.TempDir() + "/file"
	must(t, unix.Mkfifo(notSocket, 0o600))
	if _, err := Listen(notSocket); err == nil {
		t.Fatal("Listen replaced something that is not a socket")
	}
}

func TestFileConn(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	uc, err := FileConn(fds[0])
	must(t, err)
	unix.Close(fds[0])
	dev := newEcho()
	done := make(chan error, 1)
	go func() { done <- Serve(uc, dev) }()
	fc, err := FileConn(fds[1])
	must(t, err)
	unix.Close(fds[1])
	f := NewFrontend(fc)
	feats, err := f.GetFeatures()
	if err != nil || feats&^FeatureProtocolFeatures != dev.features {
		t.Fatalf("GetFeatures over an inherited socket = %#x, %v", feats, err)
	}
	f.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := FileConn(-1); err == nil {
		t.Fatal("FileConn(-1) succeeded")
	}
}

// TestServeEnableBeforeFeatures follows QEMU 7.2's order: it enables the
// rings (SET_VRING_ENABLE 1) before its first SET_FEATURES. Acking
// PROTOCOL_FEATURES afterwards must not disable them again, or no frame
// ever moves.
func TestServeEnableBeforeFeatures(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	d := newDriver(t, g, 0, 16)
	f, err := Dial(s.path)
	must(t, err)
	defer f.Close()
	feats, err := f.GetFeatures()
	must(t, err)
	must(t, f.SetProtocolFeatures(ProtocolMQ))
	must(t, f.SetOwner())
	must(t, f.SetVringEnable(0, true))
	must(t, f.SetFeatures(feats))
	must(t, f.SetMemTable(g.regions()))
	must(t, f.SetVringNum(0, 16))
	must(t, f.SetVringBase(0, 0))
	must(t, f.SetVringAddr(d.ringUAddr))
	must(t, f.SetVringCall(0, d.call))
	must(t, f.SetVringKick(0, d.kick))
	if _, err := f.GetFeatures(); err != nil { // a barrier: no REPLY_ACK here
		t.Fatal(err)
	}
	if dev.running() != 1 {
		t.Fatalf("%d rings running after enable, features, memory and ring setup; want 1", dev.running())
	}
	exchange(t, d, "enabled early")
}

// limitedEcho is an echo device serving rings of at most 256 descriptors.
type limitedEcho struct{ *echo }

func (limitedEcho) MaxQueueSize() uint16 { return 256 }

// TestServeQueueSizeLimit: a device's ring size bound holds against the
// frontend; rings the spec would allow beyond it are refused.
func TestServeQueueSizeLimit(t *testing.T) {
	s := newServer(t, limitedEcho{newEcho()})
	r := dialRaw(t, s.path)
	if st, closed := r.do(t, rawMsg{req: SetProtocolFeatures, payload: u64(ProtocolReplyAck)}); closed || st != 0 {
		t.Fatalf("SET_PROTOCOL_FEATURES: status %d closed %v", st, closed)
	}
	for _, tc := range []struct {
		num uint32
		ok  bool
	}{{256, true}, {128, true}, {512, false}, {32768, false}} {
		st, closed := r.do(t, rawMsg{req: SetVringNum, payload: state(0, tc.num)})
		if closed || (st == 0) != tc.ok {
			t.Errorf("SET_VRING_NUM %d: status %d closed %v, want ok=%v", tc.num, st, closed, tc.ok)
		}
	}
}
