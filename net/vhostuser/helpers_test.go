package vhostuser

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"golang.org/x/sys/unix"
)

// guestRAM is a memfd standing in for a VMM's guest RAM: the test maps it
// (as the frontend does) and plays the virtio driver through that mapping.
type guestRAM struct {
	fd  int
	mem []byte
}

const (
	ramSize  = 2 << 20
	highBase = 0x1_0000_0000 // guest address of the second region (above a "PCI hole")
)

func newGuestRAM(t testing.TB) *guestRAM {
	t.Helper()
	fd := sealedMemfd(t, ramSize)
	mem, err := unix.Mmap(fd, 0, ramSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	g := &guestRAM{fd: fd, mem: mem}
	t.Cleanup(func() {
		unix.Munmap(mem)
		unix.Close(fd)
	})
	return g
}

// sealedMemfd is a memfd of size bytes sealed as the VMM seals guest RAM
// (vmm/memory), which the backend requires; the caller closes it.
func sealedMemfd(t testing.TB, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("vhostuser-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		t.Fatalf("seal: %v", err)
	}
	return fd
}

func (g *guestRAM) userAddr(off uint64) uint64 {
	return uint64(uintptr(unsafe.Pointer(&g.mem[0]))) + off
}

// regions splits the memfd into two regions, low RAM at guest 0 and the
// second MiB at highBase, with the frontend addresses of the test's mapping.
func (g *guestRAM) regions() []Region {
	return []Region{
		{GuestAddr: 0, Size: ramSize / 2, UserAddr: g.userAddr(0), Offset: 0, Fd: g.fd},
		{GuestAddr: highBase, Size: ramSize / 2, UserAddr: g.userAddr(ramSize / 2), Offset: ramSize / 2, Fd: g.fd},
	}
}

// driver plays a virtio driver (the test kit's) on a split ring in the
// second region, with the ring's eventfds and the addresses a frontend
// would send for it.
type driver struct {
	*virtiotest.Driver
	g         *guestRAM
	nextDesc  uint16
	kick      int
	call      int
	ringUAddr VringAddr
}

// Where the ring and its buffers lie, as offsets into the second region.
const (
	descOff  = 0
	availOff = 0x1000
	usedOff  = 0x2000
	bufOff   = 0x10000 // one 4 KiB page per avail slot: out at 0, in at 0x800
)

func newDriver(t testing.TB, g *guestRAM, q uint32, size uint16) *driver {
	t.Helper()
	const base = ramSize / 2
	clear(g.mem[base : base+0x3000])
	ram := virtiotest.WrapRAM(virtiotest.Region{GPA: 0, Bytes: g.mem[:base]}, virtiotest.Region{GPA: highBase, Bytes: g.mem[base:]})
	drv, err := virtiotest.NewDriver(ram, virtiotest.Layout{Size: size, Desc: highBase + descOff, Avail: highBase + availOff, Used: highBase + usedOff})
	if err != nil {
		t.Fatal(err)
	}
	d := &driver{Driver: drv, g: g}
	d.ringUAddr = VringAddr{Index: q, Desc: g.userAddr(base + descOff), Avail: g.userAddr(base + availOff), Used: g.userAddr(base + usedOff)}
	if d.kick, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	if d.call, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(d.kick); unix.Close(d.call) })
	return d
}

// slotBuf is the offset into g.mem of avail slot i's buffer page.
func (d *driver) slotBuf(i uint16) uint64 { return ramSize/2 + bufOff + uint64(i%d.Size)*0x1000 }

// add makes a chain of one readable buffer holding out and one writable
// buffer of inLen bytes available, asks for an interrupt once it is used
// (used_event, with EVENT_IDX), and kicks.
func (d *driver) add(out []byte, inLen uint32) {
	buf := d.slotBuf(d.AvailIdx())
	copy(d.g.mem[buf:], out)
	gpa := highBase + buf - ramSize/2
	h := d.nextDesc % d.Size
	d.SetDesc(h, gpa, uint32(len(out)), virtiotest.DescNext, (h+1)%d.Size)
	d.SetDesc((h+1)%d.Size, gpa+0x800, inLen, virtiotest.DescWrite, 0)
	d.nextDesc += 2
	d.SetUsedEvent(d.AvailIdx())
	d.Add(h)
	unix.Write(d.kick, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// reply returns the writable buffer of the chain in avail slot i.
func (d *driver) reply(i uint16, n uint32) []byte {
	buf := d.slotBuf(i) + 0x800
	return d.g.mem[buf : buf+uint64(n)]
}

// waitCall waits until the device signals the call eventfd.
func (d *driver) waitCall(t testing.TB) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(d.call), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 5000)
	if err != nil || n == 0 {
		t.Fatalf("no used-buffer notification within 5s (poll: %v)", err)
	}
	var b [8]byte
	unix.Read(d.call, b[:])
}

// echo is a test Device: on every started queue a worker copies each
// chain's readable bytes, reversed, into its writable buffers.
type echo struct {
	features uint64

	mu      sync.Mutex
	acked   uint64
	workers map[int]*worker
	starts  int
	stops   int
	failed  []Request
	cutOffs int
}

type worker struct {
	stop int // eventfd that ends the worker
	done chan struct{}
}

func newEcho() *echo {
	return &echo{features: virtio.FeatureVersion1 | virtio.FeatureRingEventIdx | 1<<5, workers: map[int]*worker{}}
}

func (e *echo) Features() uint64 { return e.features }

func (e *echo) SetFeatures(f uint64) error {
	if err := virtio.CheckFeatures(e.features, f); err != nil {
		return err
	}
	e.mu.Lock()
	e.acked = f
	e.mu.Unlock()
	return nil
}

func (e *echo) RequestFailed(req Request, err error) {
	e.mu.Lock()
	e.failed = append(e.failed, req)
	e.mu.Unlock()
}

func (e *echo) CutOff(error) {
	e.mu.Lock()
	e.cutOffs++
	e.mu.Unlock()
}

func (e *echo) Start(q int, vq *virtio.Queue, kick, call int) error {
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	w := &worker{stop: stop, done: make(chan struct{})}
	e.mu.Lock()
	e.workers[q] = w
	e.starts++
	e.mu.Unlock()
	go w.run(vq, kick, call)
	return nil
}

func (e *echo) Stop(q int) {
	e.mu.Lock()
	w := e.workers[q]
	delete(e.workers, q)
	e.stops++
	e.mu.Unlock()
	if w == nil {
		return
	}
	unix.Write(w.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-w.done
	unix.Close(w.stop)
}

// counts returns how often rings were started and stopped, and the
// features the device was given.
func (e *echo) counts() (starts, stops int, acked uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.starts, e.stops, e.acked
}

func (e *echo) refusals() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request(nil), e.failed...)
}

func (e *echo) running() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.workers)
}

func (w *worker) run(vq *virtio.Queue, kick, call int) {
	defer close(w.done)
	var c virtio.Chain
	buf := make([]byte, 4096)
	for {
		fds := []unix.PollFd{{Fd: int32(kick), Events: unix.POLLIN}, {Fd: int32(w.stop), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		var b [8]byte
		unix.Read(kick, b[:])
		if vq.Err() != nil {
			// The driver broke the ring: serve nothing until stopped
			// (EnableNotifications would report work forever).
			continue
		}
		for {
			vq.DisableNotifications()
			for {
				head, ok, err := vq.Pop()
				if err != nil || !ok {
					break
				}
				var n uint32
				if vq.Walk(head, &c) == nil {
					k, _ := c.Read(buf)
					for i, j := 0, k-1; i < j; i, j = i+1, j-1 {
						buf[i], buf[j] = buf[j], buf[i]
					}
					c.Write(buf[:k])
					n = c.Written()
				}
				vq.Push(head, n)
			}
			if vq.NeedInterrupt() {
				unix.Write(call, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			}
			if vq.Err() != nil || !vq.EnableNotifications() {
				break
			}
		}
	}
}

// server listens on a fresh socket and serves every connection with dev
// (one at a time, like a switch port); serveErrs receives each Serve's result.
type server struct {
	path      string
	l         *net.UnixListener
	serveErrs chan error
	trace     func(Header)
}

func newServer(t testing.TB, dev Device) *server {
	t.Helper()
	return newTracedServer(t, dev, nil)
}

// newTracedServer is newServer with a hook seeing every request.
func newTracedServer(t testing.TB, dev Device, trace func(Header)) *server {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vhost.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{path: path, l: l, serveErrs: make(chan error, 64), trace: trace}
	done := make(chan struct{})
	var mu sync.Mutex
	var cur *net.UnixConn
	go func() {
		defer close(done)
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			mu.Lock()
			cur = c
			mu.Unlock()
			s.serveErrs <- serve(c, dev, s.trace)
		}
	}()
	// A test that failed half-way leaves its connection open: cut it so
	// the serving goroutine ends.
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		if cur != nil {
			cur.Close()
		}
		mu.Unlock()
		<-done
	})
	return s
}

// served waits for the current connection's Serve to return.
func (s *server) served(t testing.TB) error {
	t.Helper()
	select {
	case err := <-s.serveErrs:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5s of the connection closing")
		return nil
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
