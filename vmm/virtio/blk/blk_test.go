package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/ratelimit"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

const diskSize = 8 << 20

// job is one request of a batch: its chain and which queue carries it.
type job struct {
	q    int
	r    *req
	segs []seg
	typ  uint32
}

// runBatch posts every job (all in flight at once), waits for them all and
// checks each status byte is want and used.len is what the type implies.
func (r *rig) runBatch(jobs []job, want byte) {
	r.t.Helper()
	perQ := map[int]int{}
	byHead := map[[2]int]job{}
	for _, j := range jobs {
		r.submit(j.q, j.r, j.segs)
		perQ[j.q]++
		byHead[[2]int{j.q, int(j.r.head)}] = j
	}
	for q, n := range perQ {
		for _, e := range r.wait(q, n, 10*time.Second) {
			j := byHead[[2]int{q, int(e.Head)}]
			if s := r.bytes(j.r.status, 1)[0]; s != want {
				r.t.Fatalf("type %d request: status %d, want %d", j.typ, s, want)
			}
			wantLen := uint32(1)
			if j.typ == typeIn {
				wantLen += j.r.dataLen
			}
			if e.Len != wantLen {
				r.t.Fatalf("type %d request: used len %d, want %d", j.typ, e.Len, wantLen)
			}
		}
	}
}

// splitSegs is req's chain with the data cut into up to three descriptors
// at random points (on any byte: the guest may split anywhere).
func splitSegs(rng *rand.Rand, q *req, write bool) []seg {
	s := []seg{{Addr: q.hdr, Len: 16}}
	left, addr := q.dataLen, q.data
	for k := 0; left > 0; k++ {
		n := left
		if k < 2 && left > 1 {
			n = 1 + rng.Uint32N(left-1)
		}
		s = append(s, seg{Addr: addr, Len: n, Write: write})
		addr += uint64(n)
		left -= n
	}
	return append(s, seg{Addr: q.status, Len: 1, Write: true})
}

// TestReadWrite writes random data at random places through two queues
// (one with direct chains, one with indirect tables) with many requests in
// flight, flushes, checks the file, then reads it all back through the
// device.
func TestReadWrite(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			f := diskFile(t, t.TempDir(), diskSize, os.O_RDWR)
			backend := openBackend(t, be.name, f, block.Options{Depth: 256})
			r := newRig(t, Options{Backend: backend, Queues: 2, QueueSize: 128}, 0)
			r.drv[1].indirect = true
			rng := rand.New(rand.NewPCG(1, 2))

			want, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			// 96 requests in distinct 64 KiB chunks, 24 per batch on
			// each queue: at most 5 descriptors each fit a 128 ring.
			type area struct {
				sector uint64
				n      uint32
			}
			var areas []area
			for _, c := range rng.Perm(diskSize >> 16)[:96] {
				areas = append(areas, area{uint64(c) << 7, 512 * (1 + rng.Uint32N(64))})
			}
			for b := 0; b < len(areas); b += 48 {
				var jobs []job
				for i, a := range areas[b : b+48] {
					q := r.newReq(typeOut, a.sector, a.n)
					data := r.bytes(q.data, uint64(a.n))
					for k := range data {
						data[k] = byte(rng.Uint32())
					}
					copy(want[a.sector*512:], data)
					jobs = append(jobs, job{q: i % 2, r: q, segs: splitSegs(rng, q, false), typ: typeOut})
				}
				r.runBatch(jobs, statusOK)
			}
			if s, n := r.do(typeFlush, 0, nil, 0); s != statusOK || n != 1 {
				t.Fatalf("flush: status %d len %d", s, n)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("file contents differ from what the guest wrote")
			}

			for b := 0; b < len(areas); b += 48 {
				var jobs []job
				for i, a := range areas[b : b+48] {
					q := r.newReq(typeIn, a.sector, a.n)
					jobs = append(jobs, job{q: i % 2, r: q, segs: splitSegs(rng, q, true), typ: typeIn})
				}
				r.runBatch(jobs, statusOK)
				for i, j := range jobs {
					a := areas[b+i]
					if !bytes.Equal(r.bytes(j.r.data, uint64(a.n)), want[a.sector*512:a.sector*512+uint64(a.n)]) {
						t.Fatalf("read of sector %d (+%d bytes) differs from the disk", a.sector, a.n)
					}
				}
			}
			if r.irq.used.Load() == 0 {
				t.Error("no used buffer notification was sent")
			}
		})
	}
}

// TestLayouts: the device makes no assumption about how the header, data
// and status are split into descriptors (virtio 1.2 §5.2.6.3).
func TestLayouts(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	for i := range fb.disk {
		fb.disk[i] = byte(i / 512)
	}
	r := newRig(t, Options{Backend: fb}, 0)
	// A write whose header and data share one buffer.
	buf := r.alloc(16 + 1024)
	status := r.alloc(1)
	h := r.bytes(buf, 16+1024)
	binary.LittleEndian.PutUint32(h[0:], typeOut)
	binary.LittleEndian.PutUint64(h[8:], 4)
	for i := range h[16:] {
		h[16+i] = 0x5a
	}
	q := &req{status: status}
	if s, n := r.doSegs(q, []seg{{Addr: buf, Len: 16 + 1024}, {Addr: status, Len: 1, Write: true}}); s != statusOK || n != 1 {
		t.Fatalf("write with header+data in one buffer: status %d len %d", s, n)
	}
	if !bytes.Equal(fb.disk[4*512:6*512], bytes.Repeat([]byte{0x5a}, 1024)) {
		t.Fatal("write with header+data in one buffer did not land")
	}
	// A read whose data and status share one buffer, header split in two.
	hdr := r.alloc(16)
	binary.LittleEndian.PutUint32(r.bytes(hdr, 16)[0:], typeIn)
	binary.LittleEndian.PutUint64(r.bytes(hdr, 16)[8:], 9)
	out := r.alloc(513)
	q = &req{status: out + 512}
	r.bytes(out+512, 1)[0] = 0xff
	if s, n := r.doSegs(q, []seg{{Addr: hdr, Len: 5}, {Addr: hdr + 5, Len: 11}, {Addr: out, Len: 513, Write: true}}); s != statusOK || n != 513 {
		t.Fatalf("read with data+status in one buffer: status %d len %d", s, n)
	}
	if !bytes.Equal(r.bytes(out, 512), fb.disk[9*512:10*512]) {
		t.Fatal("read with data+status in one buffer returned wrong data")
	}
}

func TestGetID(t *testing.T) {
	for _, tc := range []struct {
		id      string
		dataLen uint32
		want    string
	}{
		{"hyperroot-disk-0001", 20, "hyperroot-disk-0001\x00"},
		{"01234567890123456789", 20, "01234567890123456789"},
		{"serial", 64, "serial" + string(make([]byte, 14))},
		{"hyperroot-disk-0001", 8, "hyperroo"},
		{"", 20, string(make([]byte, 20))},
	} {
		r := newRig(t, Options{Backend: newFakeBackend(4096), ID: tc.id}, 0)
		q := r.newReq(typeGetID, 0, tc.dataLen)
		fill := r.bytes(q.data, uint64(tc.dataLen))
		for i := range fill {
			fill[i] = 0xee
		}
		s, n := r.doSegs(q, q.segs(typeGetID))
		if s != statusOK || n != uint32(len(tc.want))+1 {
			t.Errorf("GET_ID %q into %d bytes: status %d len %d", tc.id, tc.dataLen, s, n)
		}
		if got := string(r.bytes(q.data, uint64(len(tc.want)))); got != tc.want {
			t.Errorf("GET_ID %q into %d bytes = %q, want %q", tc.id, tc.dataLen, got, tc.want)
		}
	}
}

// zeroReq makes a DISCARD or WRITE_ZEROES request with the given segments
// (sector, count, flags).
func (r *rig) zeroReq(typ uint32, segs ...[3]uint64) (*req, []seg) {
	q := r.newReq(typ, 0, 0)
	body := r.alloc(uint64(16 * len(segs)))
	b := r.bytes(body, uint64(16*len(segs)))
	for i, s := range segs {
		binary.LittleEndian.PutUint64(b[16*i:], s[0])
		binary.LittleEndian.PutUint32(b[16*i+8:], uint32(s[1]))
		binary.LittleEndian.PutUint32(b[16*i+12:], uint32(s[2]))
	}
	return q, []seg{{Addr: q.hdr, Len: 16}, {Addr: body, Len: uint32(16 * len(segs))}, {Addr: q.status, Len: 1, Write: true}}
}

func TestDiscardWriteZeroes(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			f := diskFile(t, t.TempDir(), 1<<20, os.O_RDWR)
			orig, _ := os.ReadFile(f.Name())
			r := newRig(t, Options{Backend: openBackend(t, be.name, f, block.Options{})}, 0)
			want := bytes.Clone(orig)
			for _, tc := range []struct {
				name   string
				typ    uint32
				segs   [][3]uint64
				status byte
				zero   [2]uint64 // sectors zeroed on success
			}{
				{"discard", typeDiscard, [][3]uint64{{8, 8, 0}}, statusOK, [2]uint64{8, 16}},
				{"write zeroes", typeWriteZeroes, [][3]uint64{{32, 9, 0}}, statusOK, [2]uint64{32, 41}},
				{"write zeroes unmap", typeWriteZeroes, [][3]uint64{{100, 28, flagUnmap}}, statusOK, [2]uint64{100, 128}},
				{"zero sectors", typeWriteZeroes, [][3]uint64{{200, 0, 0}}, statusOK, [2]uint64{}},
				{"discard with unmap", typeDiscard, [][3]uint64{{300, 8, flagUnmap}}, statusUnsupp, [2]uint64{}},
				{"reserved flag", typeWriteZeroes, [][3]uint64{{300, 8, 2}}, statusUnsupp, [2]uint64{}},
				{"two segments", typeWriteZeroes, [][3]uint64{{300, 8, 0}, {400, 8, 0}}, statusIOErr, [2]uint64{}},
				{"past the end", typeDiscard, [][3]uint64{{2047, 2, 0}}, statusIOErr, [2]uint64{}},
				{"sector overflow", typeWriteZeroes, [][3]uint64{{1<<64 - 1, 2, 0}}, statusIOErr, [2]uint64{}},
				{"too many sectors", typeWriteZeroes, [][3]uint64{{0, maxZeroSectors + 1, 0}}, statusIOErr, [2]uint64{}},
			} {
				q, segs := r.zeroReq(tc.typ, tc.segs...)
				if s, n := r.doSegs(q, segs); s != tc.status || n != 1 {
					t.Errorf("%s: status %d len %d, want %d len 1", tc.name, s, n, tc.status)
				}
				clear(want[tc.zero[0]*512 : tc.zero[1]*512])
			}
			// A body that is not a whole number of segments.
			q, segs := r.zeroReq(typeDiscard, [3]uint64{8, 8, 0})
			segs[1].Len = 15
			if s, _ := r.doSegs(q, segs); s != statusIOErr {
				t.Errorf("15-byte discard body: status %d, want IOERR", s)
			}
			got, _ := os.ReadFile(f.Name())
			if !bytes.Equal(got, want) {
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("disk differs first at byte %d (sector %d): %#x, want %#x", i, i/512, got[i], want[i])
					}
				}
			}
			// Reading a discarded range through the device gives zeros.
			s, _ := r.do(typeIn, 8, nil, 4096)
			if s != statusOK {
				t.Fatalf("read after discard: status %d", s)
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag int
		opts Options
	}{
		{"read-only descriptor", os.O_RDONLY, Options{}},
		{"read-only option", os.O_RDWR, Options{ReadOnly: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := diskFile(t, t.TempDir(), 1<<20, tc.flag)
			orig, _ := os.ReadFile(f.Name())
			o := tc.opts
			o.Backend = openBackend(t, "pool", f, block.Options{})
			r := newRig(t, o, 0)
			if r.dev.Features()&FeatureRO == 0 {
				t.Error("VIRTIO_BLK_F_RO not offered")
			}
			if s, _ := r.do(typeOut, 0, bytes.Repeat([]byte{1}, 512), 512); s != statusIOErr {
				t.Errorf("write: status %d, want IOERR", s)
			}
			for _, typ := range []uint32{typeDiscard, typeWriteZeroes} {
				q, segs := r.zeroReq(typ, [3]uint64{0, 8, 0})
				if s, _ := r.doSegs(q, segs); s != statusIOErr {
					t.Errorf("type %d: status %d, want IOERR", typ, s)
				}
			}
			q := r.newReq(typeIn, 1, 512)
			if s, n := r.doSegs(q, q.segs(typeIn)); s != statusOK || n != 513 || !bytes.Equal(r.bytes(q.data, 512), orig[512:1024]) {
				t.Errorf("read: status %d len %d", s, n)
			}
			if s, _ := r.do(typeFlush, 0, nil, 0); s != statusOK {
				t.Errorf("flush: status %d", s)
			}
			if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, orig) {
				t.Error("the read-only disk changed")
			}
		})
	}
}

func TestOutOfRange(t *testing.T) {
	fb := newFakeBackend(1 << 20) // 2048 sectors
	r := newRig(t, Options{Backend: fb}, 0)
	for _, tc := range []struct {
		typ    uint32
		sector uint64
		n      uint32
		want   byte
	}{
		{typeIn, 2047, 512, statusOK},
		{typeIn, 2047, 1024, statusIOErr},
		{typeIn, 2048, 512, statusIOErr},
		{typeIn, 2048, 0, statusOK}, // an empty transfer at the end
		{typeIn, 2049, 0, statusIOErr},
		{typeOut, 2046, 1024, statusOK},
		{typeOut, 2046, 1536, statusIOErr},
		{typeOut, 1 << 63, 512, statusIOErr},
		{typeIn, 1<<64 - 1, 512, statusIOErr},
		{typeIn, 1<<55 + 1, 512, statusIOErr}, // sector*512 wraps to 512
	} {
		q := r.newReq(tc.typ, tc.sector, tc.n)
		if s, _ := r.doSegs(q, q.segs(tc.typ)); s != tc.want {
			t.Errorf("type %d sector %d +%d bytes: status %d, want %d", tc.typ, tc.sector, tc.n, s, tc.want)
		}
	}
	if fb.submits.Load() != 2 {
		t.Errorf("%d requests reached the backend, want the 2 in range", fb.submits.Load())
	}
}

// TestBackendErrors: a request the Backend fails, or the device refuses,
// reaches the guest as IOERR and the operator through Options.Errors, with
// what failed and why; requests that succeed are not reported.
func TestBackendErrors(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	fb.failW = errors.New("no space left on device")
	var got []string
	r := newRig(t, Options{Backend: fb, Errors: func(err error) { got = append(got, err.Error()) }}, 0)
	q := r.newReq(typeIn, 2, 1024)
	if s, _ := r.doSegs(q, q.segs(typeIn)); s != statusOK {
		t.Fatalf("read: status %d", s)
	}
	q = r.newReq(typeOut, 4, 1536)
	if s, _ := r.doSegs(q, q.segs(typeOut)); s != statusIOErr {
		t.Fatalf("failed write: status %d, want IOERR", s)
	}
	// Refused before the Backend: said too, with why.
	q = r.newReq(typeOut, 2047, 1024)
	if s, _ := r.doSegs(q, q.segs(typeOut)); s != statusIOErr {
		t.Fatalf("write past the end: status %d, want IOERR", s)
	}
	want := []string{"virtio-blk: write of 1536 bytes at 2048 failed: no space left on device",
		"virtio-blk: request refused: data not whole sectors, or past the end of the disk"}
	if !slices.Equal(got, want) {
		t.Errorf("reported %q, want %q", got, want)
	}
}

// TestMalformed sends broken requests, each followed by a good read that
// must still work.
func TestMalformed(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	r := newRig(t, Options{Backend: fb}, 0)
	for _, tc := range []struct {
		name   string
		typ    uint32
		n      uint32
		segs   func(q *req) []seg
		status byte // 0xff: untouched
		used   uint32
	}{
		{"no status byte", typeIn, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: q.status, Len: 1}}
		}, 0xff, 0},
		{"status in a readable descriptor after writable data", typeIn, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: q.data, Len: 512, Write: true}, {Addr: q.status, Len: 1}}
		}, 0xff, 0},
		{"header too short", typeIn, 0, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 8}, {Addr: q.status, Len: 1, Write: true}}
		}, statusIOErr, 1},
		{"no header", typeIn, 0, func(q *req) []seg {
			return []seg{{Addr: q.status, Len: 1, Write: true}}
		}, statusIOErr, 1},
		{"read not a multiple of 512", typeIn, 100, nil, statusIOErr, 1},
		{"write not a multiple of 512", typeOut, 1000, nil, statusIOErr, 1},
		{"write with device-writable data", typeOut, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: q.data, Len: 512, Write: true}, {Addr: q.status, Len: 1, Write: true}}
		}, statusIOErr, 1},
		{"read with device-readable data", typeIn, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: q.data, Len: 512}, {Addr: q.status, Len: 1, Write: true}}
		}, statusIOErr, 1},
		{"flush with data", typeFlush, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: q.data, Len: 512}, {Addr: q.status, Len: 1, Write: true}}
		}, statusIOErr, 1},
		{"unknown type", 99, 0, nil, statusUnsupp, 1},
		{"get lifetime", typeGetLifetime, 16, nil, statusUnsupp, 1},
		{"secure erase", typeSecureErase, 0, nil, statusUnsupp, 1},
		{"buffer outside RAM", typeIn, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 16}, {Addr: rigRAM - 256, Len: 512, Write: true}, {Addr: q.status, Len: 1, Write: true}}
		}, 0xff, 0},
		{"header split over two descriptors", typeIn, 512, func(q *req) []seg {
			return []seg{{Addr: q.hdr, Len: 3}, {Addr: q.hdr + 3, Len: 13}, {Addr: q.data, Len: 512, Write: true}, {Addr: q.status, Len: 1, Write: true}}
		}, statusOK, 513},
	} {
		q := r.newReq(tc.typ, 1, tc.n)
		segs := q.segs(tc.typ)
		if tc.segs != nil {
			segs = tc.segs(q)
		}
		s, used := r.doSegs(q, segs)
		if s != tc.status || used != tc.used {
			t.Errorf("%s: status %#x used %d, want %#x used %d", tc.name, s, used, tc.status, tc.used)
		}
		if s, n := r.do(typeIn, 0, nil, 512); s != statusOK || n != 513 {
			t.Fatalf("read after %s: status %d len %d", tc.name, s, n)
		}
	}
	if r.dev.NeedsReset() {
		t.Error("a malformed chain set NEEDS_RESET")
	}
}

// TestBrokenRing: a corrupt available ring stops the queue and reports
// NEEDS_RESET with a configuration change notification; Reset and a new
// activation bring the device back.
func TestBrokenRing(t *testing.T) {
	r := newRig(t, Options{Backend: newFakeBackend(1 << 20)}, 0)
	d := r.drv[0]
	d.SetAvailIdx(d.Size + 1) // more entries than the ring holds
	r.dev.Kick(0)
	deadline := time.Now().Add(5 * time.Second)
	for !r.dev.NeedsReset() {
		if time.Now().After(deadline) {
			t.Fatal("NEEDS_RESET not reported")
		}
		time.Sleep(time.Millisecond)
	}
	if n := r.irq.config.Load(); n != 1 {
		t.Errorf("%d configuration change notifications, want 1", n)
	}
	r.dev.Reset()
	if r.dev.NeedsReset() {
		t.Error("NEEDS_RESET survives Reset")
	}
	r.reactivate()
	if s, _ := r.do(typeIn, 0, nil, 512); s != statusOK {
		t.Errorf("read after reset: status %d", s)
	}
}

// reactivate sets up fresh rings in the same places and activates the
// device again, as a driver does after a reset.
func (r *rig) reactivate() {
	r.t.Helper()
	for i, d := range r.drv {
		clear(r.bytes(d.Desc, d.End()-d.Desc))
		nd := newDriver(r.t, r.mem, d.Size, d.Desc)
		nd.tables, nd.indirect = d.tables, d.indirect
		r.drv[i] = nd
		r.queues[i] = nd.queue(r.feat)
	}
	if err := r.dev.Ack(r.feat); err != nil {
		r.t.Fatal(err)
	}
	if err := r.dev.Activate(r.queues, r.irq); err != nil {
		r.t.Fatal(err)
	}
}

// TestResetWaitsForBackend: Reset does not return while the backend holds
// requests (it writes guest memory until it completes them), and nothing
// is pushed or written to status bytes afterwards.
func TestResetWaitsForBackend(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	fb.hold = true
	r := newRig(t, Options{Backend: fb, Queues: 2, QueueSize: 16}, 0)
	var reqs []*req
	for i := range 8 {
		q := r.newReq(typeIn, uint64(i), 512)
		r.submit(i%2, q, q.segs(typeIn))
		reqs = append(reqs, q)
	}
	deadline := time.Now().Add(5 * time.Second)
	for fb.heldCount() != 8 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests reached the backend, want 8", fb.heldCount())
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { r.dev.Reset(); close(done) }()
	select {
	case <-done:
		t.Fatal("Reset returned with requests in flight")
	case <-time.After(50 * time.Millisecond):
	}
	fb.hold = false
	fb.release()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Reset did not return after the backend completed")
	}
	for i, d := range r.drv {
		if idx := d.UsedIdx(); idx != 0 {
			t.Errorf("queue %d: used idx %d after reset, want 0", i, idx)
		}
	}
	for _, q := range reqs {
		if s := r.bytes(q.status, 1)[0]; s != 0xff {
			t.Errorf("status byte written (%d) for a request reset in flight", s)
		}
	}
	r.reactivate()
	if s, _ := r.do(typeIn, 0, nil, 512); s != statusOK {
		t.Errorf("read after reset: status %d", s)
	}
}

// TestResetInFlight resets with real reads in flight and checks guest
// memory stays still afterwards.
func TestResetInFlight(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			f := diskFile(t, t.TempDir(), diskSize, os.O_RDWR)
			cb := &countingBackend{Backend: openBackend(t, be.name, f, block.Options{Depth: 64, Workers: 1})}
			r := newRig(t, Options{Backend: cb, QueueSize: 64}, 0)
			r.drv[0].indirect = true
			for i := range 64 {
				q := r.newReq(typeIn, uint64(i)*128, 64<<10)
				r.submit(0, q, q.segs(typeIn))
			}
			for cb.submits.Load() < 64 {
				time.Sleep(10 * time.Microsecond)
			}
			r.dev.Reset()
			snap := bytes.Clone(r.mem.Bytes(0, r.mem.Size()))
			time.Sleep(20 * time.Millisecond)
			if !bytes.Equal(snap, r.mem.Bytes(0, r.mem.Size())) {
				t.Fatal("guest memory changed after Reset returned")
			}
			r.reactivate()
			if s, _ := r.do(typeIn, 0, nil, 4096); s != statusOK {
				t.Errorf("read after reset: status %d", s)
			}
		})
	}
}

// countingBackend counts the requests a backend accepted. It declines
// Inline, so that every request is in flight in the backend.
type countingBackend struct {
	block.Backend
	submits atomic.Int64
}

func (c *countingBackend) Inline(*block.Request) (block.Completion, bool) {
	return block.Completion{}, false
}

func (c *countingBackend) Submit(r block.Request) error {
	err := c.Backend.Submit(r)
	if err == nil {
		c.submits.Add(1)
	}
	return err
}

// TestBackendBusy: a backend with fewer slots than requests in flight makes
// requests wait, never fail.
func TestBackendBusy(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	fb.depth = 2
	fb.hold = true
	r := newRig(t, Options{Backend: fb, Queues: 2, QueueSize: 64}, 0)
	var jobs []job
	for i := range 40 {
		q := r.newReq(typeIn, uint64(i), 512)
		jobs = append(jobs, job{q: i % 2, r: q, segs: q.segs(typeIn), typ: typeIn})
	}
	// Complete held requests in the background, a few at a time.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				fb.release()
			}
		}
	}()
	r.runBatch(jobs, statusOK)
}

// TestRateLimit: a burst completes at the limiter's rate, within 10 %.
func TestRateLimit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ops, bytes ratelimit.BucketConfig
		n          int    // requests
		size       uint32 // bytes each
		burst      int    // requests the full bucket lets through at once
		perSecond  float64
	}{
		// 200 IOPS: a bucket of 20 refilled every 100 ms.
		{"iops", ratelimit.BucketConfig{Size: 20, RefillTime: 100 * time.Millisecond}, ratelimit.BucketConfig{}, 420, 512, 20, 200},
		// 400 KiB/s of 4 KiB reads: 100 requests per second.
		{"bytes", ratelimit.BucketConfig{}, ratelimit.BucketConfig{Size: 40 << 10, RefillTime: 100 * time.Millisecond}, 110, 4096, 10, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := ratelimit.New(tc.ops, tc.bytes, nil)
			r := newRig(t, Options{Backend: newFakeBackend(1 << 20), Limiter: lim, QueueSize: 64}, 0)
			r.drv[0].indirect = true
			start := time.Now()
			done := 0
			posted := 0
			for done < tc.n {
				for posted < tc.n && r.drv[0].InFlight() < 64 {
					q := r.newReqReuse(posted, tc.size)
					r.submit(0, q, q.segs(typeIn))
					posted++
				}
				for _, e := range r.wait(0, 1, 10*time.Second) {
					_ = e
					done++
				}
			}
			elapsed := time.Since(start).Seconds()
			rate := float64(tc.n-tc.burst) / elapsed
			t.Logf("%d requests in %.3fs: %.1f/s after the burst (limit %.0f/s)", tc.n, elapsed, rate, tc.perSecond)
			// Above the limit is a limiter bug whatever the load. Below it
			// the limiter may be fine and the test's goroutines late: a
			// 100 ms scheduling stall on a busy 2-core machine (or under
			// -race) costs the 1 s "bytes" case 10%, so the floor is looser.
			if rate > 1.1*tc.perSecond {
				t.Errorf("rate %.1f/s, want at most %.0f + 10%%", rate, tc.perSecond)
			}
			if rate < 0.75*tc.perSecond {
				t.Errorf("rate %.1f/s, want at least %.0f - 25%%", rate, tc.perSecond)
			}
		})
	}
}

// newReqReuse returns read request i of size n, reusing buffers by i modulo
// 64 so long tests do not exhaust fake RAM.
func (r *rig) newReqReuse(i int, n uint32) *req {
	const base = 8 << 20
	slot := uint64(i%64) * 0x2000
	q := &req{hdr: base + slot, status: base + slot + 16, data: base + slot + 0x1000, dataLen: n}
	h := r.bytes(q.hdr, 16)
	binary.LittleEndian.PutUint32(h[0:], typeIn)
	binary.LittleEndian.PutUint64(h[8:], uint64(i%64)*8)
	r.bytes(q.status, 1)[0] = 0xff
	return q
}

// TestKickBounds: kicks for queues the device does not have, or before
// activation, are harmless.
func TestKickBounds(t *testing.T) {
	d, err := New(Options{Backend: newFakeBackend(4096), Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []int{-1, 0, 1, 2, 1 << 30} {
		d.Kick(q)
		d.Kick(q)
	}
	d.Reset()
	if err := d.Activate([]*virtio.Queue{nil}, newFakeIRQ()); err == nil {
		t.Error("Activate with the wrong number of queues succeeded")
	}
}

// TestKickServesInline: with a Backend that takes requests inline, Kick
// itself pops, performs, pushes and interrupts: the request is complete
// when Kick returns, with no goroutine hand-off.
func TestKickServesInline(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	fb.inline = true
	r := newRig(t, Options{Backend: fb, QueueSize: 16}, 0)
	if s, _ := r.do(typeIn, 0, nil, 512); s != statusOK { // the worker's first serve is over
		t.Fatalf("warm-up read: status %d", s)
	}
	time.Sleep(10 * time.Millisecond)
	d := r.drv[0]
	for i := range 8 {
		before := d.UsedIdx()
		q := r.newReq(typeIn, uint64(i), 4096)
		r.submit(0, q, q.segs(typeIn))
		if got := d.UsedIdx(); got != before+1 {
			t.Fatalf("request %d: used idx %d when Kick returned, want %d", i, got, before+1)
		}
		if s := r.bytes(q.status, 1)[0]; s != statusOK {
			t.Fatalf("request %d: status %d", i, s)
		}
		r.drv[0].reap()
	}
	if fb.submits.Load() != 0 || fb.inlined.Load() != 9 {
		t.Errorf("%d submitted, %d inline; want 0 and 9", fb.submits.Load(), fb.inlined.Load())
	}
}
