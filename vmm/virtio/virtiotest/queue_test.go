package virtiotest_test

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// activate programs and activates a virtio.Queue on d's ring, as a
// transport does at DRIVER_OK.
func activate(t *testing.T, mem virtio.Memory, d *virtiotest.Driver, features uint64) *virtio.Queue {
	t.Helper()
	q, err := virtio.NewQueue(d.Size)
	if err != nil {
		t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = d.Desc, d.Avail, d.Used, true
	if err := q.Activate(mem, features); err != nil {
		t.Fatal(err)
	}
	return q
}

// TestAgainstQueue checks the kit's driver against the real device side:
// what Post makes available, virtio.Queue pops and walks as the same
// buffers (direct and indirect), and what the queue pushes, Reap returns.
func TestAgainstQueue(t *testing.T) {
	ram := virtiotest.NewRAM(0x20000)
	d, err := virtiotest.NewDriver(ram, virtiotest.Contiguous(0x1000, 16))
	if err != nil {
		t.Fatal(err)
	}
	q := activate(t, ram, d, virtio.FeatureVersion1|virtio.FeatureRingIndirectDesc)
	copy(ram.Bytes(0x8000, 4), "ping")
	h1, _ := d.Post(virtiotest.Buf{Addr: 0x8000, Len: 4}, virtiotest.Buf{Addr: 0x9000, Len: 64, Write: true})
	h2, _, err := d.PostIndirect(0xa000, virtiotest.Buf{Addr: 0x8000, Len: 2}, virtiotest.Buf{Addr: 0x8002, Len: 2},
		virtiotest.Buf{Addr: 0x9100, Len: 8, Write: true})
	if err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	for i, want := range []uint16{h1, h2} {
		head, ok, err := q.Pop()
		if err != nil || !ok || head != want {
			t.Fatalf("Pop %d = %d, %v, %v; want head %d", i, head, ok, err, want)
		}
		if err := q.Walk(head, &c); err != nil {
			t.Fatalf("Walk %d: %v", i, err)
		}
		got := make([]byte, 8)
		n, _ := c.Read(got)
		if !bytes.Equal(got[:n], []byte("ping")) {
			t.Errorf("chain %d reads %q", i, got[:n])
		}
		c.Write([]byte(fmt.Sprint("pong", i)))
		q.Push(head, c.Written())
	}
	used, err := d.Reap(nil)
	if err != nil || len(used) != 2 || used[0] != (virtiotest.Used{Head: h1, Len: 5}) || used[1] != (virtiotest.Used{Head: h2, Len: 5}) {
		t.Fatalf("Reap = %+v, %v", used, err)
	}
	if got := ram.Bytes(0x9100, 5); string(got) != "pong1" {
		t.Errorf("indirect chain's writable buffer holds %q", got)
	}
	if d.InFlight() != 0 {
		t.Errorf("%d chains in flight after Reap", d.InFlight())
	}
	if err := ram.CheckGuards(); err != nil {
		t.Fatal(err)
	}
}

// serve plays the device on a goroutine of its own: it pops and walks
// chains until total were served, pushing each with the length used
// returns. The returned func waits for it.
func serve(t *testing.T, q *virtio.Queue, total int, used func(served int, c *virtio.Chain) uint32) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		var c virtio.Chain
		for served := 0; served < total; {
			head, ok, err := q.Pop()
			if err != nil {
				t.Error(err)
				return
			}
			if !ok {
				runtime.Gosched() // a real device sleeps on its kick eventfd
				continue
			}
			if err := q.Walk(head, &c); err != nil {
				t.Error(err)
				return
			}
			q.Push(head, used(served, &c))
			served++
		}
	})
	return wg.Wait
}

// TestConcurrentDevice runs the device on its own goroutine while the
// driver posts and reaps, as in every device test: under -race it checks
// that the kit's accesses to the shared ring words are ordered.
func TestConcurrentDevice(t *testing.T) {
	ram := virtiotest.NewRAM(0x20000)
	d, err := virtiotest.NewDriver(ram, virtiotest.Contiguous(0x1000, 8))
	if err != nil {
		t.Fatal(err)
	}
	q := activate(t, ram, d, virtio.FeatureVersion1)
	const total = 2000
	wait := serve(t, q, total, func(served int, c *virtio.Chain) uint32 {
		c.Write([]byte{byte(served)})
		return c.Written()
	})
	var used []virtiotest.Used
	for posted, reaped := 0, 0; reaped < total; {
		if posted < total {
			slot := uint64(posted%8) * 0x100
			if _, ok := d.Post(virtiotest.Buf{Addr: 0x8000 + slot, Len: 1, Write: true}); ok {
				posted++
			}
		}
		used, err = d.Reap(used[:0])
		if err != nil {
			t.Fatal(err)
		}
		reaped += len(used)
	}
	wait()
	if d.InFlight() != 0 {
		t.Errorf("%d chains in flight at the end", d.InFlight())
	}
}

// TestConcurrentBursts is TestConcurrentDevice with chains posted in
// bursts (PostDeferred, one PublishAvail each) of lengths that start
// bursts on either half of a ring word, on an available ring aligned to
// 4 and to 2 bytes: the device pops every head in the order posted, and
// under -race the plain stores of entry pairs never meet its loads.
func TestConcurrentBursts(t *testing.T) {
	for _, l := range []virtiotest.Layout{
		virtiotest.Contiguous(0x1000, 8),
		{Size: 16, Desc: 0x1000, Avail: 0x2002, Used: 0x3000},
	} {
		t.Run(fmt.Sprintf("size%d-avail%#x", l.Size, l.Avail), func(t *testing.T) {
			ram := virtiotest.NewRAM(0x20000)
			d, err := virtiotest.NewDriver(ram, l)
			if err != nil {
				t.Fatal(err)
			}
			q := activate(t, ram, d, virtio.FeatureVersion1)
			const total = 3000
			popped := make(chan uint16, total)
			wait := serve(t, q, total, func(_ int, c *virtio.Chain) uint32 {
				popped <- c.Head
				return 0
			})
			var posted []uint16
			var used []virtiotest.Used
			for burst, reaped := 1, 0; reaped < total; burst = burst%5 + 1 {
				for i := 0; i < burst && len(posted) < total; i++ {
					head, ok := d.PostDeferred(virtiotest.Buf{Addr: 0x8000 + 0x100*uint64(len(posted)%16), Len: 1})
					if !ok {
						break
					}
					posted = append(posted, head)
				}
				d.PublishAvail()
				used, err = d.Reap(used[:0])
				if err != nil {
					t.Fatal(err)
				}
				reaped += len(used)
			}
			wait()
			close(popped)
			i := 0
			for head := range popped {
				if head != posted[i] {
					t.Fatalf("device popped head %d as chain %d, driver posted %d", head, i, posted[i])
				}
				i++
			}
		})
	}
}
