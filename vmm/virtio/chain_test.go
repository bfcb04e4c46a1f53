package virtio

import (
	"bytes"
	"errors"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"io"
	"slices"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/memory"
)

const (
	R = 0          // device-readable
	W = descFWrite // device-writable
	N = descFNext
	I = descFIndirect
)

func TestWalk(t *testing.T) {
	const top = ramSize
	type desc struct {
		addr        uint64
		len         uint32
		flags, next uint16
	}
	for _, tc := range []struct {
		name     string
		noIndir  bool            // do not negotiate INDIRECT_DESC
		descs    map[uint16]desc // main table
		table    []desc          // indirect table at tableAt
		head     uint16
		wantR    []uint32 // lengths of readable buffers
		wantW    []uint32 // lengths of writable buffers
		wantErr  bool
		errBound bool // the error is a bounds error from Memory
	}{
		{name: "single readable", descs: map[uint16]desc{0: {bufBase, 16, R, 0}}, wantR: []uint32{16}},
		{name: "single writable", descs: map[uint16]desc{5: {bufBase, 512, W, 0}}, head: 5, wantW: []uint32{512}},
		{name: "header, data, status", head: 2, descs: map[uint16]desc{
			2: {bufBase, 16, R | N, 7}, 7: {bufBase + 0x100, 4096, W | N, 1}, 1: {bufBase + 0x2000, 1, W, 0}},
			wantR: []uint32{16}, wantW: []uint32{4096, 1}},
		{name: "next ignored without NEXT flag", descs: map[uint16]desc{0: {bufBase, 8, R, 0}}, wantR: []uint32{8}},
		{name: "zero-length buffers skipped", descs: map[uint16]desc{
			0: {bufBase, 0, R | N, 1}, 1: {0xdead_0000_0000, 0, W | N, 2}, 2: {bufBase, 4, W, 0}},
			wantW: []uint32{4}},
		{name: "whole queue as one chain", descs: func() map[uint16]desc {
			m := map[uint16]desc{}
			for i := range uint16(16) {
				m[i] = desc{bufBase + 16*uint64(i), 16, R | N, i + 1}
			}
			m[15] = desc{bufBase + 16*15, 16, R, 0}
			return m
		}(), wantR: slices.Repeat([]uint32{16}, 16)},
		{name: "buffer ends at the end of RAM", descs: map[uint16]desc{0: {top - 64, 64, W, 0}}, wantW: []uint32{64}},
		{name: "buffer in second region", descs: map[uint16]desc{0: {0x20000, 0x10000, R, 0}}, wantR: []uint32{0x10000}},

		{name: "indirect", descs: map[uint16]desc{3: {tableAt, 3 * 16, I, 0}}, head: 3,
			table: []desc{{bufBase, 16, R | N, 1}, {bufBase + 16, 100, W | N, 2}, {bufBase + 200, 1, W, 0}},
			wantR: []uint32{16}, wantW: []uint32{100, 1}},
		{name: "indirect out of order", descs: map[uint16]desc{0: {tableAt, 4 * 16, I, 0}},
			table: []desc{{bufBase, 1, W, 0}, {}, {bufBase, 2, R | N, 3}, {bufBase, 3, R | N, 0}},
			head:  0, wantR: nil, wantW: []uint32{1}},
		{name: "indirect write flag on pointer ignored", descs: map[uint16]desc{0: {tableAt, 16, I | W, 0}},
			table: []desc{{bufBase, 8, R, 0}}, wantR: []uint32{8}},
		{name: "direct then indirect", descs: map[uint16]desc{0: {bufBase, 16, R | N, 1}, 1: {tableAt, 32, I, 0}},
			table: []desc{{bufBase + 16, 32, R | N, 1}, {bufBase + 64, 8, W, 0}},
			wantR: []uint32{16, 32}, wantW: []uint32{8}},
		{name: "indirect table of queue size", descs: map[uint16]desc{0: {tableAt, 16 * 16, I, 0}},
			table: func() []desc {
				d := make([]desc, 16)
				for i := range d {
					d[i] = desc{bufBase, 1, W | N, uint16(i + 1)}
				}
				d[15].flags = W
				return d
			}(), wantW: slices.Repeat([]uint32{1}, 16)},

		{name: "head beyond size", head: 16, wantErr: true},
		{name: "buffer outside RAM", descs: map[uint16]desc{0: {0x1_0000_0000, 16, R, 0}}, wantErr: true, errBound: true},
		{name: "buffer in the hole", descs: map[uint16]desc{0: {0x18000, 16, R, 0}}, wantErr: true, errBound: true},
		{name: "buffer straddles the end of RAM", descs: map[uint16]desc{0: {top - 8, 16, W, 0}}, wantErr: true, errBound: true},
		{name: "buffer spans the hole", descs: map[uint16]desc{0: {top - 8, 0x10010, W, 0}}, wantErr: true, errBound: true},
		{name: "address wraps 2^64", descs: map[uint16]desc{0: {^uint64(0) - 7, 16, R, 0}}, wantErr: true, errBound: true},
		{name: "huge length", descs: map[uint16]desc{0: {bufBase, 0xffff_ffff, R, 0}}, wantErr: true, errBound: true},
		{name: "bad buffer late in chain", descs: map[uint16]desc{0: {bufBase, 16, R | N, 1}, 1: {top, 1, W, 0}}, wantErr: true, errBound: true},
		{name: "next beyond table", descs: map[uint16]desc{0: {bufBase, 16, R | N, 16}}, wantErr: true},
		{name: "self loop", descs: map[uint16]desc{4: {bufBase, 16, R | N, 4}}, head: 4, wantErr: true},
		{name: "loop back to head", descs: map[uint16]desc{
			0: {bufBase, 16, R | N, 1}, 1: {bufBase, 16, R | N, 2}, 2: {bufBase, 16, R | N, 0}}, wantErr: true},
		{name: "loop of zero-length buffers", descs: map[uint16]desc{0: {0, 0, R | N, 1}, 1: {0, 0, R | N, 0}}, wantErr: true},
		{name: "readable after writable", descs: map[uint16]desc{
			0: {bufBase, 16, W | N, 1}, 1: {bufBase, 16, R, 0}}, wantErr: true},
		{name: "readable after writable in indirect", descs: map[uint16]desc{0: {bufBase, 16, W | N, 1}, 1: {tableAt, 16, I, 0}},
			table: []desc{{bufBase, 4, R, 0}}, wantErr: true},

		{name: "indirect not negotiated", noIndir: true, descs: map[uint16]desc{0: {tableAt, 16, I, 0}},
			table: []desc{{bufBase, 4, R, 0}}, wantErr: true},
		{name: "nested indirect", descs: map[uint16]desc{0: {tableAt, 32, I, 0}},
			table: []desc{{bufBase, 4, R | N, 1}, {tableAt, 32, I, 0}}, wantErr: true},
		{name: "indirect with NEXT", descs: map[uint16]desc{0: {tableAt, 16, I | N, 1}, 1: {bufBase, 4, W, 0}},
			table: []desc{{bufBase, 4, R, 0}}, wantErr: true},
		{name: "indirect empty table", descs: map[uint16]desc{0: {tableAt, 0, I, 0}}, wantErr: true},
		{name: "indirect length not multiple of 16", descs: map[uint16]desc{0: {tableAt, 24, I, 0}},
			table: []desc{{bufBase, 4, R, 0}, {bufBase, 4, R, 0}}, wantErr: true},
		{name: "indirect table larger than queue", descs: map[uint16]desc{0: {tableAt, 17 * 16, I, 0}},
			table: []desc{{bufBase, 4, R, 0}}, wantErr: true},
		{name: "indirect table outside RAM", descs: map[uint16]desc{0: {top - 16, 32, I, 0}}, wantErr: true, errBound: true},
		{name: "indirect table in hole", descs: map[uint16]desc{0: {0x18000, 32, I, 0}}, wantErr: true, errBound: true},
		{name: "indirect next beyond table", descs: map[uint16]desc{0: {tableAt, 32, I, 0}},
			table: []desc{{bufBase, 4, R | N, 2}, {bufBase, 4, R, 0}}, wantErr: true},
		{name: "indirect loop", descs: map[uint16]desc{0: {tableAt, 32, I, 0}},
			table: []desc{{bufBase, 4, R | N, 1}, {bufBase, 4, R | N, 0}}, wantErr: true},
		{name: "indirect self loop", descs: map[uint16]desc{0: {tableAt, 16, I, 0}},
			table: []desc{{bufBase, 4, R | N, 0}}, wantErr: true},
		{name: "indirect buffer outside RAM", descs: map[uint16]desc{0: {tableAt, 16, I, 0}},
			table: []desc{{0x1_0000_0000, 4, R, 0}}, wantErr: true, errBound: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := twoRegions()
			d := newDriver(t, mem, 16, descAt, availAt, usedAt)
			feat := FeatureVersion1 | FeatureRingIndirectDesc
			if tc.noIndir {
				feat = FeatureVersion1
			}
			q := d.queue(feat)
			for i, x := range tc.descs {
				d.SetDesc(i, x.addr, x.len, x.flags, x.next)
			}
			for j, x := range tc.table {
				putDesc(t, mem, tableAt+16*uint64(j), x.addr, x.len, x.flags, x.next)
			}
			var c Chain
			// Leave something in c to prove Walk starts afresh.
			c.bufs = append(c.bufs, make([]byte, 3))
			c.nr, c.readLen = 1, 3
			err := q.Walk(tc.head, &c)
			if c.Head != tc.head {
				t.Errorf("Head = %d, want %d", c.Head, tc.head)
			}
			if tc.wantErr {
				if !errors.Is(err, ErrChain) {
					t.Fatalf("Walk = %v, want an ErrChain error", err)
				}
				if tc.errBound != errors.Is(err, virtiotest.ErrNotRAM) {
					t.Fatalf("Walk = %v: bounds error %v, want %v", err, !tc.errBound, tc.errBound)
				}
				return
			}
			if err != nil {
				t.Fatalf("Walk: %v", err)
			}
			lens := func(bufs [][]byte) []uint32 {
				var l []uint32
				for _, b := range bufs {
					l = append(l, uint32(len(b)))
				}
				return l
			}
			if got := lens(c.Readable()); !slices.Equal(got, tc.wantR) {
				t.Errorf("readable = %v, want %v", got, tc.wantR)
			}
			if got := lens(c.Writable()); !slices.Equal(got, tc.wantW) {
				t.Errorf("writable = %v, want %v", got, tc.wantW)
			}
			var sr, sw uint32
			for _, l := range tc.wantR {
				sr += l
			}
			for _, l := range tc.wantW {
				sw += l
			}
			if c.ReadLen() != sr || c.WriteLen() != sw {
				t.Errorf("ReadLen/WriteLen = %d/%d, want %d/%d", c.ReadLen(), c.WriteLen(), sr, sw)
			}
			checkGuards(t, mem)
		})
	}
}

// TestWalkTotalOverflow needs buffers that really are in RAM and add up to
// more than 4 GiB: a sparse real guest (nothing is touched but the rings).
func TestWalkTotalOverflow(t *testing.T) {
	g, err := memory.New(5<<30, memory.Options{})
	if err != nil {
		t.Fatalf("memory.New: %v", err)
	}
	defer g.Close()
	d := newDriver(t, g, 16, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1 | FeatureRingIndirectDesc)
	const high = 0x1_0000_0000 // first byte of RAM above the hole
	for _, tc := range []struct {
		name  string
		a, b  uint32 // readable at 1 MiB (low RAM), writable at 4 GiB
		ok    bool
		bound bool // fails the bounds check rather than the total
	}{
		{"exactly 4 GiB - 1", 0xbff0_0000, 0x400f_ffff, true, false},
		{"4 GiB", 0xbff0_0000, 0x4010_0000, false, false},
		{"two huge buffers", 0xbff0_0000, 0x8000_0000, false, false},
		{"second exceeds RAM and total", 0xbff0_0000, 0xffff_ffff, false, false},
		{"second exceeds RAM only", 0x1000, 0x8000_0001, false, true},
	} {
		d.SetDesc(0, 0x100000, tc.a, R|N, 1)
		d.SetDesc(1, high, tc.b, W, 0)
		var c Chain
		err := q.Walk(0, &c)
		if tc.ok != (err == nil) {
			t.Errorf("%s: Walk = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err == nil && (c.ReadLen() != tc.a || c.WriteLen() != tc.b) {
			t.Errorf("%s: lengths %d/%d", tc.name, c.ReadLen(), c.WriteLen())
		}
		if err != nil && (!errors.Is(err, ErrChain) || errors.Is(err, memory.ErrBounds) != tc.bound) {
			t.Errorf("%s: error %v: want ErrChain, bounds error %v", tc.name, err, tc.bound)
		}
	}
}

func TestChainReadWrite(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 8, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	// Readable 5 + 0 + 7 bytes, writable 3 + 6 bytes.
	d.SetDesc(0, bufBase, 5, R|N, 1)
	d.SetDesc(1, bufBase+0x100, 0, R|N, 2)
	d.SetDesc(2, bufBase+0x200, 7, R|N, 3)
	d.SetDesc(3, bufBase+0x300, 3, W|N, 4)
	d.SetDesc(4, bufBase+0x400, 6, W, 0)
	fill(t, mem, bufBase, 5, 10)
	fill(t, mem, bufBase+0x200, 7, 50)
	var c Chain
	if err := q.Walk(0, &c); err != nil {
		t.Fatal(err)
	}
	want := []byte{10, 11, 12, 13, 14, 50, 51, 52, 53, 54, 55, 56}
	var got []byte
	p := make([]byte, 2) // odd-sized reads cross buffer boundaries
	for {
		n, err := c.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read % x, want % x", got, want)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}

	if n, err := c.Write([]byte{1, 2, 3, 4}); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := c.Write([]byte{5, 6, 7, 8, 9, 10, 11}); n != 5 || err != io.ErrShortWrite {
		t.Fatalf("Write past the end = %d, %v; want 5, ErrShortWrite", n, err)
	}
	if c.Written() != 9 {
		t.Fatalf("Written = %d, want 9", c.Written())
	}
	w1, _ := mem.Slice(bufBase+0x300, 3)
	w2, _ := mem.Slice(bufBase+0x400, 6)
	if !bytes.Equal(w1, []byte{1, 2, 3}) || !bytes.Equal(w2, []byte{4, 5, 6, 7, 8, 9}) {
		t.Fatalf("guest got % x and % x", w1, w2)
	}
	// The readable buffers are untouched by writes.
	r, _ := mem.Slice(bufBase, 5)
	if !bytes.Equal(r, want[:5]) {
		t.Fatalf("readable buffer changed: % x", r)
	}

	// A fresh Walk rewinds the cursors and counters.
	if err := q.Walk(0, &c); err != nil {
		t.Fatal(err)
	}
	if c.Written() != 0 {
		t.Fatal("Written not reset by Walk")
	}
	all, err := io.ReadAll(&c)
	if err != nil || !bytes.Equal(all, want) {
		t.Fatalf("ReadAll = % x, %v", all, err)
	}
	checkGuards(t, mem)
}

func TestChainNoWritable(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 2, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	d.SetDesc(0, bufBase, 4, R, 0)
	var c Chain
	if err := q.Walk(0, &c); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Write([]byte{1}); n != 0 || err != io.ErrShortWrite {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(c.Writable()) != 0 || len(c.Readable()) != 1 {
		t.Fatalf("buffers: %d readable, %d writable", len(c.Readable()), len(c.Writable()))
	}
}

// TestWalkFailureAfterSuccess checks that a Chain reused for a walk that
// fails exposes nothing of the previous request: Walk truncates rather
// than clears its storage.
func TestWalkFailureAfterSuccess(t *testing.T) {
	for _, bad := range []struct {
		name        string
		flags, next uint16
		addr        uint64
	}{
		{"single buffer outside RAM", W, 0, 0xdead_0000_0000},
		{"chain into a loop", R | N, 1, bufBase},
	} {
		mem := virtiotest.NewRAM(ramSize)
		d := newDriver(t, mem, 4, descAt, availAt, usedAt)
		q := d.queue(FeatureVersion1)
		d.SetDesc(0, bufBase, 16, R|N, 2)
		d.SetDesc(2, bufBase+0x100, 64, W, 0)
		d.SetDesc(1, bad.addr, 8, bad.flags, bad.next)
		var c Chain
		if err := q.Walk(0, &c); err != nil || len(c.Readable()) != 1 || len(c.Writable()) != 1 {
			t.Fatalf("%s: good walk = %v, %d/%d buffers", bad.name, err, len(c.Readable()), len(c.Writable()))
		}
		if err := q.Walk(1, &c); !errors.Is(err, ErrChain) {
			t.Fatalf("%s: Walk = %v, want ErrChain", bad.name, err)
		}
		if c.Head != 1 || c.ReadLen() != 0 || c.WriteLen() != 0 || len(c.Readable()) != 0 || len(c.Writable()) != 0 {
			t.Errorf("%s: failed walk left head %d, lengths %d/%d, %d/%d buffers", bad.name,
				c.Head, c.ReadLen(), c.WriteLen(), len(c.Readable()), len(c.Writable()))
		}
		if n, err := c.Write(make([]byte, 8)); n != 0 || err == nil {
			t.Errorf("%s: Write after a failed walk = %d, %v", bad.name, n, err)
		}
	}
}
