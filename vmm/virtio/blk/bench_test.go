package blk

import (
	"fmt"
	"os"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/block"
)

// loop drives depth 4 KiB reads on queue 0 of r, each re-posted as soon
// as it completes, the way a guest with a queue depth of depth does; each
// call of the returned function waits for one completion and re-posts it.
// It uses EVENT_IDX as Linux does (used_event is the last index seen), and
// sleeps on the interrupt, so a lost notification would hang it.
func loop(tb testing.TB, r *rig, depth int) func() {
	return loopOf(tb, r, depth, typeIn)
}

// loopOf is loop with requests of type typ (typeIn or typeOut).
func loopOf(tb testing.TB, r *rig, depth int, typ uint32) func() {
	d := r.drv[0]
	heads := make([]uint16, depth)
	for i := range heads {
		q := r.newReq(typ, uint64(i)*8, 4096)
		h, ok := d.post(q.segs(typ)...)
		if !ok {
			tb.Fatal("ring full")
		}
		heads[i] = h
	}
	r.dev.Kick(0)
	last := uint16(0)
	return func() {
		for {
			d.SetUsedEvent(last)
			if d.UsedIdx() != last {
				break
			}
			<-r.irq.wake
		}
		id, _ := d.UsedElem(last)
		last++
		d.Add(uint16(id)) // the same chain again, without the driver's bookkeeping
		r.dev.Kick(0)
	}
}

// TestDataPathAllocs holds a request's trip through the device (pop, walk,
// validate, submit, complete, push, notify) to zero allocations, on the
// asynchronous path (completions from the backend's goroutine) and on the
// inline one (served on the kicking goroutine).
func TestDataPathAllocs(t *testing.T) {
	for _, inline := range []bool{false, true} {
		fb := newFakeBackend(1 << 20)
		fb.inline = inline
		r := newRig(t, Options{Backend: fb, QueueSize: 64}, 0)
		step := loop(t, r, 4)
		for range 100 { // size the chains' storage
			step()
		}
		if n := testing.AllocsPerRun(1000, step); n != 0 {
			t.Errorf("inline=%v: %v allocations per request, want 0", inline, n)
		}
		if inline != (fb.inlined.Load() > 0) {
			t.Errorf("inline=%v: %d requests served inline", inline, fb.inlined.Load())
		}
	}
}

// BenchmarkRead4K is a 4 KiB read end to end through the device (from the
// kick to the interrupt) and each backend, on a tmpfs file so the disk
// does not dominate: per request with one in flight (latency), four (the
// appliance benchmark's queue depth) and 32 (throughput). The "-async"
// backends decline Inline, as for a file whose data is not cached.
func BenchmarkRead4K(b *testing.B) { benchIO(b, typeIn) }

// BenchmarkWrite4K is BenchmarkRead4K with 4 KiB writes.
func BenchmarkWrite4K(b *testing.B) { benchIO(b, typeOut) }

func benchIO(b *testing.B, typ uint32) {
	st, err := os.Stat("/dev/shm")
	testenv.Need(b, err == nil && st.IsDir(), "/dev/shm (tmpfs)")
	for _, be := range backends {
		for _, depth := range []int{1, 4, 32} {
			b.Run(fmt.Sprintf("%s/depth%d", be.name, depth), func(b *testing.B) {
				dir, err := os.MkdirTemp("/dev/shm", "blkbench")
				if err != nil {
					b.Fatal(err)
				}
				defer os.RemoveAll(dir)
				f := diskFile(b, dir, 1<<20, os.O_RDWR)
				backend := openBackend(b, be.name, f, block.Options{Depth: 256})
				r := newRig(b, Options{Backend: backend, QueueSize: 256}, 0)
				step := loopOf(b, r, depth, typ)
				for range 100 {
					step()
				}
				b.SetBytes(4096)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					step()
				}
			})
		}
	}
}
