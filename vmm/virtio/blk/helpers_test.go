package blk

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/uring"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// seg is one buffer of a chain the test driver posts.
type seg = virtiotest.Buf

// checkGuards fails the test if anything wrote outside the fake RAM.
func checkGuards(t testing.TB, mem *virtiotest.RAM) {
	t.Helper()
	if err := mem.CheckGuards(); err != nil {
		t.Fatal(err)
	}
}

// driver is the test kit's driver on one ring, posting its chains
// directly or (indirect) through a table per head at tables + head*0x1000.
type driver struct {
	*virtiotest.Driver
	t        testing.TB
	mem      *virtiotest.RAM
	indirect bool
	tables   uint64
	reaped   []virtiotest.Used
}

// newDriver lays a ring of size out from base, as Linux does.
func newDriver(t testing.TB, mem *virtiotest.RAM, size uint16, base uint64) *driver {
	t.Helper()
	d, err := virtiotest.NewDriver(mem, virtiotest.Contiguous(base, size))
	if err != nil {
		t.Fatal(err)
	}
	return &driver{Driver: d, t: t, mem: mem}
}

// post makes a chain of segs available and returns its head; ok is false
// when the ring has no free descriptors.
func (d *driver) post(segs ...seg) (uint16, bool) {
	d.t.Helper()
	if !d.indirect {
		return d.Post(segs...)
	}
	head, ok := d.NextHead()
	if !ok {
		return 0, false
	}
	head, ok, err := d.PostIndirect(d.tables+uint64(head)*0x1000, segs...)
	if err != nil {
		d.t.Fatal(err)
	}
	return head, ok
}

// reap returns the used elements published since the last call and frees
// their descriptors. With event_idx it asks for an interrupt at the next one.
func (d *driver) reap() []virtiotest.Used {
	d.t.Helper()
	var err error
	d.reaped, err = d.Reap(d.reaped[:0])
	if err != nil {
		d.t.Fatal(err)
	}
	d.SetUsedEvent(d.NextUsed())
	return append([]virtiotest.Used(nil), d.reaped...)
}

// queue returns a virtio.Queue programmed and activated on this ring, as
// the transport would.
func (d *driver) queue(features uint64) *virtio.Queue {
	d.t.Helper()
	q, err := virtio.NewQueue(d.Size)
	if err != nil {
		d.t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = d.Desc, d.Avail, d.Used, true
	if err := q.Activate(d.mem, features); err != nil {
		d.t.Fatalf("queue Activate: %v", err)
	}
	return q
}

// fakeIRQ records notifications and wakes a waiting driver.
type fakeIRQ struct {
	used   atomic.Int64
	config atomic.Int64
	wake   chan struct{}
}

func newFakeIRQ() *fakeIRQ { return &fakeIRQ{wake: make(chan struct{}, 1)} }

func (f *fakeIRQ) Used(q int) error {
	f.used.Add(1)
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeIRQ) ConfigChanged() error {
	f.config.Add(1)
	return nil
}

// rig is a device activated on rings in fake RAM, with a driver per queue.
type rig struct {
	t       testing.TB
	mem     *virtiotest.RAM
	dev     *Device
	drv     []*driver
	queues  []*virtio.Queue
	irq     *fakeIRQ
	feat    uint64
	bufNext uint64 // bump allocator for request buffers
}

const rigRAM = 16 << 20

// newRig makes a device from o and activates every queue with the
// features the device offers minus drop.
func newRig(t testing.TB, o Options, drop uint64) *rig {
	t.Helper()
	dev, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r := &rig{t: t, mem: virtiotest.NewRAM(rigRAM), dev: dev, irq: newFakeIRQ()}
	r.feat = dev.Features() &^ drop
	if err := dev.Ack(r.feat); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	base := uint64(0)
	for _, n := range dev.QueueSizes() {
		d := newDriver(t, r.mem, n, base)
		base = (d.End() + 0xfff) &^ 0xfff
		d.tables = base
		base += uint64(n) * 0x1000
		r.drv = append(r.drv, d)
		r.queues = append(r.queues, d.queue(r.feat))
	}
	r.bufNext = (base + 0xfff) &^ 0xfff
	if err := dev.Activate(r.queues, r.irq); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	t.Cleanup(func() {
		dev.Reset()
		checkGuards(t, r.mem)
	})
	return r
}

// alloc reserves n bytes of guest RAM (512-byte aligned) for buffers.
func (r *rig) alloc(n uint64) uint64 {
	a := r.bufNext
	r.bufNext = (r.bufNext + n + 511) &^ 511
	if r.bufNext > r.mem.Size() {
		r.t.Fatalf("fake RAM exhausted")
	}
	return a
}

func (r *rig) bytes(gpa, n uint64) []byte {
	b, err := r.mem.Slice(gpa, n)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// req is a request's buffers in guest RAM, laid out the usual way:
// header, data, status.
type req struct {
	hdr, data, status uint64
	dataLen           uint32
	head              uint16
}

// newReq allocates a request of type typ at sector with dataLen bytes of
// data; the status byte is set to 0xff so a test sees whether it changed.
func (r *rig) newReq(typ uint32, sector uint64, dataLen uint32) *req {
	q := &req{hdr: r.alloc(16), status: r.alloc(1), dataLen: dataLen}
	if dataLen > 0 {
		q.data = r.alloc(uint64(dataLen))
	}
	h := r.bytes(q.hdr, 16)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint32(h[4:], 0)
	binary.LittleEndian.PutUint64(h[8:], sector)
	r.bytes(q.status, 1)[0] = 0xff
	return q
}

// segs is the chain for q: device-writable data for IN and GET_ID,
// device-readable otherwise.
func (q *req) segs(typ uint32) []seg {
	s := []seg{{Addr: q.hdr, Len: 16}}
	if q.dataLen > 0 {
		s = append(s, seg{Addr: q.data, Len: q.dataLen, Write: typ == typeIn || typ == typeGetID})
	}
	return append(s, seg{Addr: q.status, Len: 1, Write: true})
}

// submit posts q on queue qi and kicks; it fails when the ring is full.
func (r *rig) submit(qi int, q *req, segs []seg) {
	r.t.Helper()
	head, ok := r.drv[qi].post(segs...)
	if !ok {
		r.t.Fatalf("ring %d full", qi)
	}
	q.head = head
	r.dev.Kick(qi)
}

// wait collects n used elements from queue qi, failing after timeout.
func (r *rig) wait(qi, n int, timeout time.Duration) []virtiotest.Used {
	r.t.Helper()
	var out []virtiotest.Used
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		out = append(out, r.drv[qi].reap()...)
		if len(out) >= n {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("queue %d: %d of %d requests completed after %v", qi, len(out), n, timeout)
		}
		select {
		case <-r.irq.wake:
		case <-time.After(5 * time.Millisecond):
		}
	}
	return out
}

// do runs one request synchronously on queue 0 and returns its status and
// used length.
func (r *rig) do(typ uint32, sector uint64, data []byte, dataLen uint32) (status byte, used uint32) {
	r.t.Helper()
	q := r.newReq(typ, sector, dataLen)
	if data != nil {
		copy(r.bytes(q.data, uint64(dataLen)), data)
	}
	return r.doSegs(q, q.segs(typ))
}

func (r *rig) doSegs(q *req, segs []seg) (status byte, used uint32) {
	r.t.Helper()
	r.submit(0, q, segs)
	e := r.wait(0, 1, 5*time.Second)
	if e[0].Head != q.head {
		r.t.Fatalf("used head %d, posted %d", e[0].Head, q.head)
	}
	return r.bytes(q.status, 1)[0], e[0].Len
}

// backends lists the real file backends; io_uring is skipped (or failed
// under HYPERROOT_STRICT) where the host forbids it.
var backends = []struct {
	name string
	open func(*os.File, block.Options) (block.Backend, error)
}{
	{"pool", func(f *os.File, o block.Options) (block.Backend, error) { return block.NewPool(f, o) }},
	{"io_uring", func(f *os.File, o block.Options) (block.Backend, error) { return block.NewUring(f, o) }},
	// Every request through the goroutines and the ring: the path a
	// disk that is not cached takes.
	{"pool-async", func(f *os.File, o block.Options) (block.Backend, error) {
		o.NoInline = true
		return block.NewPool(f, o)
	}},
	{"io_uring-async", func(f *os.File, o block.Options) (block.Backend, error) {
		o.NoInline = true
		return block.NewUring(f, o)
	}},
}

// diskFile makes a file of size bytes filled with a pattern in dir.
func diskFile(t testing.TB, dir string, size int, flag int) *os.File {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// openBackend opens f with the named implementation and closes it at the
// end of the test (after the rig's Reset, registered later).
func openBackend(t testing.TB, name string, f *os.File, o block.Options) block.Backend {
	t.Helper()
	for _, b := range backends {
		if b.name != name {
			continue
		}
		be, err := b.open(f, o)
		if errors.Is(err, uring.ErrUnavailable) {
			testenv.Need(t, false, err.Error())
		}
		if err != nil {
			t.Fatalf("open %s backend: %v", name, err)
		}
		t.Cleanup(func() { be.Close() })
		return be
	}
	t.Fatalf("no backend %q", name)
	return nil
}

// fakeBackend is an in-memory disk whose requests complete when the test
// says so (hold) or at once, so tests control what is in flight.
type fakeBackend struct {
	mu       sync.Mutex
	disk     []byte
	ro       bool
	hold     bool
	depth    int
	held     []block.Request
	deferred []block.Request // submitted with Defer, not yet committed
	spare    [][][]byte      // Bufs storage of deferred requests, reused
	inflight int
	inline   bool  // Inline performs reads and writes at once
	failW    error // writes complete with this error
	out      chan block.Completion
	done     chan fakeDone // completions for Completers, delivered by forward
	submits  atomic.Int64
	inlined  atomic.Int64
}

type fakeDone struct {
	c  block.Completion
	to block.Completer
}

func newFakeBackend(size int) *fakeBackend {
	f := newManualBackend(size)
	go f.forward()
	return f
}

// newManualBackend is a fakeBackend whose completions for Completers wait
// in f.done until the test delivers them.
func newManualBackend(size int) *fakeBackend {
	return &fakeBackend{disk: make([]byte, size), out: make(chan block.Completion, 4096), done: make(chan fakeDone, 4096), depth: 1 << 16}
}

// forward delivers completions to their Completers on a goroutine of the
// backend's own, as the real backends do: never inside Submit or Commit.
// It ends with the test binary.
func (f *fakeBackend) forward() {
	for d := range f.done {
		d.to.Complete(d.c)
	}
}

// Inline performs a read or write at once when f.inline is set.
func (f *fakeBackend) Inline(r *block.Request) (block.Completion, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.inline || (r.Op != block.Read && r.Op != block.Write) {
		return block.Completion{}, false
	}
	var n int64
	for _, b := range r.Bufs {
		n += int64(len(b))
	}
	if r.Offset < 0 || n > int64(len(f.disk)) || r.Offset > int64(len(f.disk))-n {
		return block.Completion{}, false
	}
	f.inlined.Add(1)
	return block.Completion{Cookie: r.Cookie, N: f.transfer(r)}, true
}

func (f *fakeBackend) Submit(r block.Request) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight >= f.depth {
		return block.ErrBusy
	}
	var n int64
	for _, b := range r.Bufs {
		n += int64(len(b))
	}
	if r.Op == block.Discard || r.Op == block.WriteZeroes {
		n = r.Length
	}
	if r.Op != block.Flush && (r.Offset < 0 || n > int64(len(f.disk)) || r.Offset > int64(len(f.disk))-n) {
		return block.ErrOutOfRange
	}
	f.submits.Add(1)
	f.inflight++
	if r.Defer {
		// Like io_uring: nothing starts before Commit, so a device
		// that forgets to commit hangs its tests.
		// The caller may reuse r.Bufs: copy it into storage kept
		// across batches, so the data path stays allocation-free.
		i := len(f.deferred)
		if i == len(f.spare) {
			f.spare = append(f.spare, nil)
		}
		f.spare[i] = append(f.spare[i][:0], r.Bufs...)
		r.Bufs = f.spare[i]
		f.deferred = append(f.deferred, r)
		return nil
	}
	f.start(r)
	return nil
}

// Commit starts the deferred requests.
func (f *fakeBackend) Commit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.deferred {
		f.start(r)
	}
	f.deferred = f.deferred[:0]
}

// start holds r or performs it; f.mu is held.
func (f *fakeBackend) start(r block.Request) {
	if f.hold {
		r.Bufs = append([][]byte(nil), r.Bufs...) // the caller may reuse its slice
		f.held = append(f.held, r)
		return
	}
	f.run(r)
}

// run performs r and delivers its completion; f.mu is held.
func (f *fakeBackend) run(r block.Request) {
	c := block.Completion{Cookie: r.Cookie}
	if r.Op == block.Write && f.failW != nil {
		c.Err = f.failW
	} else {
		c.N = f.transfer(&r)
	}
	f.inflight--
	if r.Done != nil {
		f.done <- fakeDone{c, r.Done}
		return
	}
	f.out <- c
}

// transfer moves r's data; f.mu is held.
func (f *fakeBackend) transfer(r *block.Request) int64 {
	var n int64
	off := r.Offset
	switch r.Op {
	case block.Read:
		for _, b := range r.Bufs {
			n += int64(copy(b, f.disk[off+n:]))
		}
	case block.Write:
		for _, b := range r.Bufs {
			n += int64(copy(f.disk[off+n:], b))
		}
	case block.Discard, block.WriteZeroes:
		clear(f.disk[off : off+r.Length])
		n = r.Length
	}
	return n
}

// release completes every held request.
func (f *fakeBackend) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.held {
		f.run(r)
	}
	f.held = nil
}

func (f *fakeBackend) heldCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

func (f *fakeBackend) Completions() <-chan block.Completion { return f.out }
func (f *fakeBackend) Size() int64                          { return int64(len(f.disk)) }
func (f *fakeBackend) ReadOnly() bool                       { return f.ro }
func (f *fakeBackend) Alignment() block.Alignment           { return block.Alignment{} }
func (f *fakeBackend) Kind() string                         { return "fake" }
func (f *fakeBackend) Close() error                         { return nil }
