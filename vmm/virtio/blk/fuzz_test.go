package blk

import (
	"encoding/binary"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Fuzzed guest: 64 KiB of RAM holding a 16-entry ring at the test driver's
// usual places (descriptors at 0, then the available and used rings). The
// input is a 2-byte header (device options, negotiated features) followed
// by the initial RAM contents, so descriptors, indirect tables, request
// headers, discard segments and ring indices are all the fuzzer's.
const (
	fuzzRAM    = 0x10000
	fuzzQueue  = 16
	fuzzHeader = 2
	fuzzDisk   = 64 << 10
)

// FuzzRequest runs the device's data path (pop, walk, validate, submit,
// complete, push) over fuzzed rings and requests, synchronously on the
// test goroutine: it must never panic, never write outside guest RAM,
// complete every request it took, and leave every slot free.
func FuzzRequest(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzOne(t, data) })
}

// fuzzOne runs one fuzz input and returns the guest RAM afterwards.
func fuzzOne(t *testing.T, data []byte) *virtiotest.RAM {
	if len(data) < fuzzHeader {
		return nil
	}
	mem := virtiotest.NewRAM(fuzzRAM)
	copy(mem.Bytes(0, fuzzRAM), data[fuzzHeader:])
	fb := newManualBackend(fuzzDisk)
	fb.depth = int(data[0] >> 4) // 0..15: exercise ErrBusy too
	fb.inline = data[1]&4 != 0
	dev, err := New(Options{Backend: fb, QueueSize: fuzzQueue, ReadOnly: data[0]&1 != 0, ID: "fuzz-serial"})
	if err != nil {
		t.Fatal(err)
	}
	feat := virtio.FeatureVersion1
	if data[1]&1 != 0 {
		feat |= virtio.FeatureRingIndirectDesc
	}
	if data[1]&2 != 0 {
		feat |= virtio.FeatureRingEventIdx
	}
	drv := newDriver(t, mem, fuzzQueue, 0)
	q, err := virtio.NewQueue(fuzzQueue)
	if err != nil {
		t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = drv.Desc, drv.Avail, drv.Used, true
	if err := q.Activate(mem, feat); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	w := dev.workers[0]
	irq := newFakeIRQ()
	w.start(q, irq)
	for range 8 {
		w.serve()
		for len(fb.done) > 0 {
			d := <-fb.done
			d.to.Complete(d.c)
		}
		if fb.depth == 0 && w.pending >= 0 {
			// A backend that never has room: give it some, as
			// completions elsewhere would.
			fb.depth = 4
			w.busy.Store(false)
		}
		w.notify()
	}
	if w.inflight != 0 {
		t.Fatalf("%d requests still in flight after their completions", w.inflight)
	}
	free := len(w.free)
	if w.pending >= 0 {
		free++
	}
	if free != fuzzQueue {
		t.Fatalf("%d of %d slots free", free, fuzzQueue)
	}
	checkGuards(t, mem)
	return mem
}

// TestFuzzSeeds checks that the seeds reach the paths they are meant for:
// each completes with the expected status byte.
func TestFuzzSeeds(t *testing.T) {
	want := []byte{statusOK, statusOK, statusIOErr, statusOK, statusOK, statusOK, statusOK, statusIOErr, statusUnsupp, statusOK}
	for i, s := range fuzzSeeds(t) {
		mem := fuzzOne(t, s)
		if got := mem.Bytes(0x310, 1)[0]; got != want[i] {
			t.Errorf("seed %d: status %d, want %d", i, got, want[i])
		}
		if used := newDriver(t, mem, fuzzQueue, 0).UsedIdx(); used != 1 {
			t.Errorf("seed %d: used idx %d, want 1", i, used)
		}
	}
}

// fuzzSeeds are well-formed requests of every type, plus a few broken
// ones, as RAM images.
func fuzzSeeds(tb testing.TB) [][]byte {
	type build func(r *rig, d *driver)
	const hdr, status, data, body = 0x300, 0x310, 0x400, 0x320
	header := func(r *rig, typ uint32, sector uint64) {
		h := r.bytes(hdr, 16)
		binary.LittleEndian.PutUint32(h[0:], typ)
		binary.LittleEndian.PutUint64(h[8:], sector)
		r.bytes(status, 1)[0] = 0xff // so a test sees the device wrote it
	}
	simple := func(typ uint32, n uint32, write bool) build {
		return func(r *rig, d *driver) {
			header(r, typ, 3)
			segs := []seg{{Addr: hdr, Len: 16}}
			if n > 0 {
				segs = append(segs, seg{Addr: data, Len: n, Write: write})
			}
			d.post(append(segs, seg{Addr: status, Len: 1, Write: true})...)
		}
	}
	zero := func(typ uint32, flags uint32) build {
		return func(r *rig, d *driver) {
			header(r, typ, 0)
			b := r.bytes(body, 16)
			binary.LittleEndian.PutUint64(b[0:], 5)
			binary.LittleEndian.PutUint32(b[8:], 7)
			binary.LittleEndian.PutUint32(b[12:], flags)
			d.post(seg{Addr: hdr, Len: 16}, seg{Addr: body, Len: 16}, seg{Addr: status, Len: 1, Write: true})
		}
	}
	cases := []struct {
		opts, feat byte
		indirect   bool
		b          build
	}{
		{0, 3, false, simple(typeIn, 1024, true)},
		{0, 3, true, simple(typeOut, 512, false)},
		{1, 0, false, simple(typeOut, 512, false)},
		{0, 2, false, simple(typeFlush, 0, false)},
		{0, 0, false, simple(typeGetID, 20, true)},
		{0, 1, true, zero(typeDiscard, 0)},
		{0, 1, false, zero(typeWriteZeroes, flagUnmap)},
		{0x10, 3, false, simple(typeIn, 100, true)},
		{0, 3, false, simple(99, 0, false)},
		{0, 7, false, simple(typeIn, 1024, true)}, // served inline
	}
	var seeds [][]byte
	for _, c := range cases {
		r := &rig{t: tb, mem: virtiotest.NewRAM(fuzzRAM)}
		d := newDriver(tb, r.mem, fuzzQueue, 0)
		d.indirect, d.tables = c.indirect, 0x800
		c.b(r, d)
		end := 0x800
		if c.indirect {
			end = 0x880
		}
		seeds = append(seeds, append([]byte{c.opts, c.feat}, r.mem.Bytes(0, uint64(end))...))
	}
	return seeds
}
