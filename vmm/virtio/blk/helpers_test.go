package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/uring"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// fakeRAM is guest RAM at guest-physical 0 backed by a Go slice, with
// guard bytes on both sides so tests can prove nothing wrote outside it.
type fakeRAM struct {
	buf []byte // guard, RAM, guard
	ram []byte
}

const (
	guardLen  = 64
	guardByte = 0xA5
)

func newFakeRAM(size int) *fakeRAM {
	buf := make([]byte, guardLen+size+guardLen)
	for i := range buf {
		buf[i] = guardByte
	}
	ram := buf[guardLen : guardLen+size : guardLen+size]
	clear(ram)
	return &fakeRAM{buf: buf, ram: ram}
}

var errBounds = errors.New("fake: not RAM")

func (m *fakeRAM) Slice(gpa, n uint64) ([]byte, error) {
	size := uint64(len(m.ram))
	if n == 0 || gpa >= size || n > size-gpa {
		return nil, fmt.Errorf("fake range %#x+%#x: %w", gpa, n, errBounds)
	}
	return m.ram[gpa : gpa+n : gpa+n], nil
}

func (m *fakeRAM) checkGuards(t testing.TB) {
	t.Helper()
	n := len(m.buf)
	for j := 0; j < guardLen; j++ {
		if m.buf[j] != guardByte || m.buf[n-1-j] != guardByte {
			t.Fatalf("guard byte outside guest RAM overwritten")
		}
	}
}

// word returns the aligned 32-bit word holding the 16-bit field at gpa.
func (m *fakeRAM) word(gpa uint64) (*uint32, uint32) {
	return (*uint32)(unsafe.Pointer(&m.ram[gpa&^3])), uint32(gpa&2) * 8
}

// load16 and store16 access ring indices atomically, as a driver's
// barriers would (the device uses 32-bit atomics on the same words).
func (m *fakeRAM) load16(gpa uint64) uint16 {
	w, sh := m.word(gpa)
	return uint16(atomic.LoadUint32(w) >> sh)
}

func (m *fakeRAM) store16(gpa uint64, v uint16) {
	w, sh := m.word(gpa)
	mask := uint32(0xffff) << sh
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<sh) {
			return
		}
	}
}

// Descriptor flags.
const (
	fNext     = 1
	fWrite    = 2
	fIndirect = 4
)

// seg is one buffer of a chain the test driver posts.
type seg struct {
	addr  uint64
	len   uint32
	write bool
}

type usedElem struct {
	head uint16
	len  uint32
}

// driver plays the guest's virtio driver on one split ring.
type driver struct {
	t                  testing.TB
	mem                *fakeRAM
	size               uint16
	desc, avail, used  uint64
	availIdx, lastUsed uint16
	free               []uint16
	chains             map[uint16][]uint16
	eventIdx, indirect bool
	tables             uint64 // where indirect tables go (one page per head)
}

func newDriver(t testing.TB, mem *fakeRAM, size uint16, base uint64) *driver {
	d := &driver{t: t, mem: mem, size: size, desc: base, avail: base + 16*uint64(size),
		chains: map[uint16][]uint16{}}
	d.used = (d.avail + 6 + 2*uint64(size) + 15) &^ 15
	for i := int(size) - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	return d
}

// ringEnd is the first byte after the rings.
func (d *driver) ringEnd() uint64 { return d.used + 8 + 8*uint64(d.size) }

func (d *driver) putDesc(at, addr uint64, length uint32, flags, next uint16) {
	b, err := d.mem.Slice(at, 16)
	if err != nil {
		d.t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// post makes a chain of segs available and returns its head; ok is false
// when the ring has no free descriptors.
func (d *driver) post(segs ...seg) (uint16, bool) {
	d.t.Helper()
	if d.indirect {
		if len(d.free) == 0 {
			return 0, false
		}
		head := d.free[len(d.free)-1]
		d.free = d.free[:len(d.free)-1]
		table := d.tables + uint64(head)*0x1000
		for i, s := range segs {
			fl := uint16(0)
			if s.write {
				fl |= fWrite
			}
			if i < len(segs)-1 {
				fl |= fNext
			}
			d.putDesc(table+16*uint64(i), s.addr, s.len, fl, uint16(i+1))
		}
		d.putDesc(d.desc+16*uint64(head), table, uint32(16*len(segs)), fIndirect, 0)
		d.chains[head] = []uint16{head}
		d.publish(head)
		return head, true
	}
	if len(d.free) < len(segs) {
		return 0, false
	}
	ids := make([]uint16, len(segs))
	for i := range segs {
		ids[i] = d.free[len(d.free)-1]
		d.free = d.free[:len(d.free)-1]
	}
	for i, s := range segs {
		fl, next := uint16(0), uint16(0)
		if s.write {
			fl |= fWrite
		}
		if i < len(segs)-1 {
			fl |= fNext
			next = ids[i+1]
		}
		d.putDesc(d.desc+16*uint64(ids[i]), s.addr, s.len, fl, next)
	}
	d.chains[ids[0]] = ids
	d.publish(ids[0])
	return ids[0], true
}

func (d *driver) publish(head uint16) {
	slot := uint64(d.availIdx & (d.size - 1))
	d.mem.store16(d.avail+4+2*slot, head)
	d.availIdx++
	d.mem.store16(d.avail+2, d.availIdx)
}

// reap returns the used elements published since the last call and frees
// their descriptors. With event_idx it asks for an interrupt at the next one.
func (d *driver) reap() []usedElem {
	var out []usedElem
	idx := d.mem.load16(d.used + 2)
	for ; d.lastUsed != idx; d.lastUsed++ {
		off := d.used + 4 + 8*uint64(d.lastUsed&(d.size-1))
		b, _ := d.mem.Slice(off, 8)
		e := usedElem{head: uint16(binary.LittleEndian.Uint32(b)), len: binary.LittleEndian.Uint32(b[4:])}
		ids, ok := d.chains[e.head]
		if !ok {
			d.t.Fatalf("used element for head %d, which is not in flight", e.head)
		}
		delete(d.chains, e.head)
		d.free = append(d.free, ids...)
		out = append(out, e)
	}
	// used_event: interrupt as soon as anything more is used.
	d.mem.store16(d.avail+4+2*uint64(d.size), d.lastUsed)
	return out
}

func (d *driver) inFlight() int { return len(d.chains) }

// queue returns a virtio.Queue programmed and activated on this ring, as
// the transport would.
func (d *driver) queue(features uint64) *virtio.Queue {
	d.t.Helper()
	q, err := virtio.NewQueue(d.size)
	if err != nil {
		d.t.Fatal(err)
	}
	q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = d.size, d.desc, d.avail, d.used, true
	if err := q.Activate(d.mem, features); err != nil {
		d.t.Fatalf("queue Activate: %v", err)
	}
	d.eventIdx = features&virtio.FeatureRingEventIdx != 0
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
	mem     *fakeRAM
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
	r := &rig{t: t, mem: newFakeRAM(rigRAM), dev: dev, irq: newFakeIRQ()}
	r.feat = dev.Features() &^ drop
	if err := dev.Ack(r.feat); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	base := uint64(0)
	for _, n := range dev.QueueSizes() {
		d := newDriver(t, r.mem, n, base)
		base = (d.ringEnd() + 0xfff) &^ 0xfff
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
		r.mem.checkGuards(t)
	})
	return r
}

// alloc reserves n bytes of guest RAM (512-byte aligned) for buffers.
func (r *rig) alloc(n uint64) uint64 {
	a := r.bufNext
	r.bufNext = (r.bufNext + n + 511) &^ 511
	if r.bufNext > uint64(len(r.mem.ram)) {
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
	s := []seg{{addr: q.hdr, len: 16}}
	if q.dataLen > 0 {
		s = append(s, seg{addr: q.data, len: q.dataLen, write: typ == typeIn || typ == typeGetID})
	}
	return append(s, seg{addr: q.status, len: 1, write: true})
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
func (r *rig) wait(qi, n int, timeout time.Duration) []usedElem {
	r.t.Helper()
	var out []usedElem
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
	if e[0].head != q.head {
		r.t.Fatalf("used head %d, posted %d", e[0].head, q.head)
	}
	return r.bytes(q.status, 1)[0], e[0].len
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
	inline   bool // Inline performs reads and writes at once
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
	n := f.transfer(&r)
	f.inflight--
	c := block.Completion{Cookie: r.Cookie, N: n}
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
