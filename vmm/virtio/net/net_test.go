package virtionet

import (
	"encoding/binary"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// backendDevice is a vhost-user backend device that records what the
// frontend made of it: which rings started, where, at which base.
type backendDevice struct {
	mu      sync.Mutex
	acked   uint64
	started map[int]startInfo
	stopped []int
	events  chan string
	// quiet: Start does not interrupt, as a backend that finds
	// nothing to do would not.
	quiet bool
}

type startInfo struct {
	desc, avail, used uint64
	size              uint16
	base              uint16
	kick, call        int
}

func newBackendDevice() *backendDevice {
	return &backendDevice{started: map[int]startInfo{}, events: make(chan string, 64)}
}

const backendFeatures = virtio.FeatureVersion1 | virtio.FeatureRingEventIdx | FeatureMrgRxbuf | FeatureCsum |
	1<<22 // MQ: not passed through to the driver

func (d *backendDevice) Features() uint64 { return backendFeatures }
func (d *backendDevice) SetFeatures(f uint64) error {
	d.mu.Lock()
	d.acked = f
	d.mu.Unlock()
	return nil
}
func (d *backendDevice) Start(q int, vq *virtio.Queue, kick, call int) error {
	d.mu.Lock()
	d.started[q] = startInfo{vq.DescAddr, vq.AvailAddr, vq.UsedAddr, vq.Size, vq.NextAvail(), kick, call}
	quiet := d.quiet
	d.mu.Unlock()
	if !quiet {
		// Prove the call descriptor is the frontend's: interrupt through it.
		one := [8]byte{1}
		unix.Write(call, one[:])
	}
	d.events <- "start"
	return nil
}
func (d *backendDevice) Stop(q int) {
	d.mu.Lock()
	d.stopped = append(d.stopped, q)
	d.mu.Unlock()
	d.events <- "stop"
}

func (d *backendDevice) wait(t *testing.T, what string, n int) {
	t.Helper()
	for range n {
		select {
		case e := <-d.events:
			if e != what {
				t.Fatalf("backend: %s, want %s", e, what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("backend: no %s", what)
		}
	}
}

// fakeIRQ counts configuration change notifications.
type fakeIRQ struct {
	mu      sync.Mutex
	changed int
	used    []int
}

func (f *fakeIRQ) Used(q int) error {
	f.mu.Lock()
	f.used = append(f.used, q)
	f.mu.Unlock()
	return nil
}
func (f *fakeIRQ) ConfigChanged() error { f.mu.Lock(); f.changed++; f.mu.Unlock(); return nil }
func (f *fakeIRQ) changes() int         { f.mu.Lock(); defer f.mu.Unlock(); return f.changed }

// server accepts frontends on a vhost-user socket and serves each with
// dev; drop closes the connection being served, as a crashing switch would.
type server struct {
	l    *net.UnixListener
	mu   sync.Mutex
	conn *net.UnixConn
}

func serveBackend(t *testing.T, path string, dev vhostuser.Device) *server {
	l, err := vhostuser.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{l: l}
	t.Cleanup(func() { l.Close(); s.drop() })
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conn = c
			s.mu.Unlock()
			vhostuser.Serve(c, dev)
		}
	}()
	return s
}

func (s *server) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
}

func linkUp(d *Device) bool {
	var b [2]byte
	d.ReadConfig(cfgStatus, b[:])
	return binary.LittleEndian.Uint16(b[:]) == statusLinkUp
}

func eventfds(t *testing.T, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
		t.Cleanup(func() { unix.Close(fd) })
	}
	return fds
}

// TestVhostUserSession runs the device against a real vhost-user backend
// over a real socket with a real memfd: negotiation, the rings handed over
// with the frontend's addresses, the backend's interrupts arriving on the
// frontend's call eventfds, a backend crash (link down, reconnection, rings
// resumed at the used index in guest memory, each ring interrupted once,
// link up) and a reset.
func TestVhostUserSession(t *testing.T) {
	mem, err := memory.New(4<<20, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	path := filepath.Join(t.TempDir(), "nic.sock")
	be := newBackendDevice()
	srv := serveBackend(t, path, be)
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	dev, err := New(Options{Memory: mem, MAC: mac, MTU: 9000, Retry: 20 * time.Millisecond,
		Dial: func() (*net.UnixConn, error) {
			return net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	const want = FeatureMAC | FeatureStatus | FeatureMTU | virtio.FeatureVersion1 | FeatureMrgRxbuf | FeatureCsum
	if f := dev.Features(); f&want != want || f&(1<<22|vhostuser.FeatureProtocolFeatures) != 0 {
		t.Fatalf("offered features %#x: want the backend's pass-through bits plus MAC, STATUS and MTU, no MQ or protocol bit", f)
	}
	var cfg [cfgLen]byte
	dev.ReadConfig(0, cfg[:])
	if net.HardwareAddr(cfg[:6]).String() != mac.String() || !linkUp(dev) || binary.LittleEndian.Uint16(cfg[cfgMTU:]) != 9000 {
		t.Fatalf("config space %x: want MAC %s, link up and MTU 9000", cfg, mac)
	}
	acked := virtio.FeatureVersion1 | FeatureMAC | FeatureStatus | FeatureMTU | FeatureMrgRxbuf
	if err := dev.Ack(acked); err != nil {
		t.Fatal(err)
	}
	if err := dev.Ack(acked | 1<<22); err == nil {
		t.Fatal("Ack accepted a feature that was not offered")
	}
	dev.Ack(acked)

	// The driver's rings, at fixed guest addresses.
	var queues []*virtio.Queue
	for q := range 2 {
		vq, _ := virtio.NewQueue(DefaultQueueSize)
		base := uint64(0x10000 * (q + 1))
		vq.Size, vq.DescAddr, vq.AvailAddr, vq.UsedAddr, vq.Ready = 8, base, base+0x1000, base+0x2000, true
		if err := vq.Activate(mem, acked); err != nil {
			t.Fatal(err)
		}
		queues = append(queues, vq)
	}
	irq := &fakeIRQ{}
	kick, call := eventfds(t, 2), eventfds(t, 2)
	if err := dev.Activate(queues, irq); err != nil {
		t.Fatal(err)
	}
	if err := dev.Offload(kick, call); err != nil {
		t.Fatal(err)
	}
	be.wait(t, "start", 2)
	be.mu.Lock()
	if be.acked&^vhostuser.FeatureProtocolFeatures != virtio.FeatureVersion1|FeatureMrgRxbuf {
		t.Errorf("backend acked %#x, want VERSION_1|MRG_RXBUF (MAC, STATUS and MTU are the frontend's)", be.acked)
	}
	for q, vq := range queues {
		s := be.started[q]
		if s.desc != vq.DescAddr || s.avail != vq.AvailAddr || s.used != vq.UsedAddr || s.size != 8 || s.base != 0 {
			t.Errorf("ring %d started as %+v, want the driver's addresses, size 8, base 0", q, s)
		}
	}
	be.mu.Unlock()
	for q, fd := range call {
		var buf [8]byte
		if n, err := unix.Read(fd, buf[:]); err != nil || n != 8 {
			t.Errorf("ring %d: the backend's interrupt did not reach the call eventfd: %v", q, err)
		}
	}

	// The driver has had 3 receive buffers used; then the backend dies,
	// before interrupting for them. The next one has nothing to do.
	used, _ := mem.Slice(queues[0].UsedAddr+2, 2)
	binary.LittleEndian.PutUint16(used, 3)
	be.mu.Lock()
	be.quiet = true
	be.mu.Unlock()
	srv.drop()
	be.wait(t, "stop", 2)
	be.wait(t, "start", 2)
	deadline := time.Now().Add(10 * time.Second)
	for !linkUp(dev) || irq.changes() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after reconnecting: link up %v, %d config interrupts (want down and up: 2)", linkUp(dev), irq.changes())
		}
		time.Sleep(5 * time.Millisecond)
	}
	be.mu.Lock()
	if b := be.started[0].base; b != 3 {
		t.Errorf("receive ring resumed at %d, want the used index 3", b)
	}
	if b := be.started[1].base; b != 0 {
		t.Errorf("transmit ring resumed at %d, want 0", b)
	}
	be.mu.Unlock()
	// The frontend interrupted each ring once itself: the dead backend
	// may have published used buffers without interrupting, and with
	// EVENT_IDX no later backend would (TestNetSwitchHung hung so).
	for q, fd := range call {
		var buf [8]byte
		if n, err := unix.Read(fd, buf[:]); err != nil || n != 8 || binary.LittleEndian.Uint64(buf[:]) != 1 {
			t.Errorf("ring %d: after reconnecting, call eventfd read %x, %v: want one interrupt", q, buf, err)
		}
	}

	dev.Reset()
	be.wait(t, "stop", 2)
}

func TestNewErrors(t *testing.T) {
	mem, err := memory.New(1<<20, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	dial := func() (*net.UnixConn, error) {
		return net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(t.TempDir(), "none"), Net: "unix"})
	}
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	if _, err := New(Options{Memory: mem, MAC: mac, Dial: dial}); err == nil {
		t.Error("New succeeded without a backend")
	}
	if _, err := New(Options{Memory: mem, MAC: mac[:5], Dial: dial}); err == nil {
		t.Error("New accepted a 5-byte MAC")
	}
	if _, err := New(Options{MAC: mac, Dial: dial}); err == nil {
		t.Error("New accepted no memory")
	}
	if _, err := New(Options{Memory: mem, MAC: mac, MTU: 20, Dial: dial}); err == nil {
		t.Error("New accepted an MTU of 20")
	}
}
