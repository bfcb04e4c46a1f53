package virtio

import (
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"
)

// blkLike sets up a queue with one virtio-blk shaped chain at head 0
// (16-byte header, 4 KiB data, 1-byte status) and returns a function doing
// one request: the driver makes it available, the device pops, walks,
// reads the header, writes the status and pushes it back.
func blkLike(tb testing.TB, features uint64) func() {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(tb, mem, 256, descAt, availAt, 0x3000)
	q := d.queue(features)
	d.SetDesc(0, bufBase, 16, R|N, 1)
	d.SetDesc(1, bufBase+0x1000, 4096, W|N, 2)
	d.SetDesc(2, bufBase+0x100, 1, W, 0)
	var c Chain
	var hdr [16]byte
	status := []byte{0}
	return func() {
		d.Add(0)
		head, ok, err := q.Pop()
		if err != nil || !ok {
			tb.Fatalf("Pop = %v, %v", ok, err)
		}
		if err := q.Walk(head, &c); err != nil {
			tb.Fatal(err)
		}
		if _, err := c.Read(hdr[:]); err != nil {
			tb.Fatal(err)
		}
		if _, err := c.Write(status); err != nil {
			tb.Fatal(err)
		}
		if err := q.Push(head, c.Written()); err != nil {
			tb.Fatal(err)
		}
	}
}

// TestDataPathAllocs holds the per-request path to zero allocations.
func TestDataPathAllocs(t *testing.T) {
	for _, feat := range []uint64{FeatureVersion1, FeatureVersion1 | FeatureRingEventIdx | FeatureRingIndirectDesc} {
		req := blkLike(t, feat)
		req() // the first Walk sizes the Chain's storage
		if n := testing.AllocsPerRun(1000, req); n != 0 {
			t.Errorf("features %#x: %v allocations per request, want 0", feat, n)
		}
	}
}

// BenchmarkPopWalkPush is one virtio-blk shaped request through the queue
// (including the driver's side of making it available).
func BenchmarkPopWalkPush(b *testing.B) {
	req := blkLike(b, FeatureVersion1|FeatureRingEventIdx|FeatureRingIndirectDesc)
	b.ReportAllocs()
	for b.Loop() {
		req()
	}
}

func BenchmarkNeedInterrupt(b *testing.B) {
	for _, tc := range []struct {
		name string
		feat uint64
	}{
		{"flags", FeatureVersion1},
		{"event_idx", FeatureVersion1 | FeatureRingEventIdx},
	} {
		b.Run(tc.name, func(b *testing.B) {
			mem := virtiotest.NewRAM(ramSize)
			d := newDriver(b, mem, 256, descAt, availAt, 0x3000)
			q := d.queue(tc.feat)
			b.ReportAllocs()
			for b.Loop() {
				q.usedIdx++ // as if Push had run, without its cost
				q.NeedInterrupt()
			}
		})
	}
}

// BenchmarkWalk is Pop, Walk and a deferred Push of the chain shapes a
// virtio-net data path sees most, with one PublishUsed per 64 chains: a
// Linux mergeable receive buffer (one writable descriptor) and a transmit
// chain of header and frame (two readable ones).
func BenchmarkWalk(b *testing.B) {
	for _, tc := range []struct {
		name  string
		descs []uint16 // flags of each descriptor
	}{
		{"rx-single", []uint16{W}},
		{"tx-hdr-frame", []uint16{R | N, R}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			mem := virtiotest.NewRAM(ramSize)
			d := newDriver(b, mem, 256, descAt, availAt, 0x3000)
			q := d.queue(FeatureVersion1 | FeatureRingEventIdx | FeatureRingIndirectDesc)
			for h := uint16(0); h < 64; h++ {
				for i, f := range tc.descs {
					idx := h*4 + uint16(i)
					d.SetDesc(idx, bufBase+uint64(idx)*64, 64, f, idx+1)
				}
			}
			var c Chain
			heads := make([]uint16, 64)
			for i := range heads {
				heads[i] = uint16(i) * 4
			}
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				d.Add(heads...)
				for range heads {
					head, ok, err := q.Pop()
					if err != nil || !ok {
						b.Fatalf("Pop = %v, %v", ok, err)
					}
					if err := q.Walk(head, &c); err != nil {
						b.Fatal(err)
					}
					q.PushDeferred(head, c.WriteLen())
				}
				q.PublishUsed()
				n += len(heads)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/chain")
		})
	}
}
