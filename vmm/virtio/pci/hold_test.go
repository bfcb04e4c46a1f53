package virtiopci

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// BenchmarkHeldQueue is a virtio-blk disk on a tmpfs file behind this
// package's kick loop, driven by a "guest" on a locked thread of its own:
// it keeps depth 4 KiB reads outstanding, spins think for each request it
// sends (the guest's own work for it), kicks only when the device asks
// (EVENT_IDX), and blocks on the interrupt eventfd (as a halted vCPU
// would) when it has nothing to send. With the queue held (poll, the
// default 100 µs at most) and without (off), it reports the kicks and
// interrupts per request and the time per request: what the hold does on
// a host where nothing is emulated, at the depths the appliance benchmark
// uses.
func BenchmarkHeldQueue(b *testing.B) {
	for _, think := range []time.Duration{0, 5 * time.Microsecond} {
		for _, depth := range []int{1, 4, 32} {
			for _, poll := range []bool{false, true} {
				name := fmt.Sprintf("think%v/depth%d/off", think, depth)
				if poll {
					name = fmt.Sprintf("think%v/depth%d/poll", think, depth)
				}
				b.Run(name, func(b *testing.B) { heldQueue(b, depth, think, poll) })
			}
		}
	}
}

// irqfd is an Interrupt that signals an eventfd, as a KVM irqfd does.
type irqfd struct {
	fd int
	n  atomic.Int64
}

func (i *irqfd) Used(int) error       { i.n.Add(1); return eventfd.Signal(i.fd) }
func (i *irqfd) ConfigChanged() error { return nil }

func heldQueue(b *testing.B, depth int, think time.Duration, poll bool) {
	st, err := os.Stat("/dev/shm")
	if err != nil || !st.IsDir() {
		b.Skip("no /dev/shm (tmpfs)")
	}
	f, err := os.CreateTemp("/dev/shm", "held")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	const size = 4 << 20
	if _, err := f.Write(make([]byte, size)); err != nil {
		b.Fatal(err)
	}
	backend, err := block.NewPool(f, block.Options{Depth: 256})
	if err != nil {
		b.Fatal(err)
	}
	defer backend.Close()
	hold := time.Duration(0)
	if poll {
		hold = 100 * time.Microsecond
	}
	dev, err := blk.New(blk.Options{Backend: backend, QueueSize: 256, Holdoff: hold})
	if err != nil {
		b.Fatal(err)
	}
	const qsize = 256
	ram := virtiotest.NewRAM(16 << 20)
	drv, err := virtiotest.NewDriver(ram, virtiotest.Contiguous(0, qsize))
	if err != nil {
		b.Fatal(err)
	}
	feat := virtio.FeatureVersion1 | virtio.FeatureRingEventIdx
	if err := dev.Ack(dev.Features() & (feat | blk.FeatureFlush)); err != nil {
		b.Fatal(err)
	}
	q, err := virtio.NewQueue(qsize)
	if err != nil {
		b.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = drv.Desc, drv.Avail, drv.Used, true
	if err := q.Activate(ram, feat); err != nil {
		b.Fatal(err)
	}
	irqFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking, as KVM_RUN is
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(irqFD)
	irq := &irqfd{fd: irqFD}
	if err := dev.Activate([]*virtio.Queue{q}, irq); err != nil {
		b.Fatal(err)
	}
	defer dev.Reset()
	kick := func(q int) time.Duration { dev.Kick(q); return 0 }
	if poll {
		kick = dev.Poll
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(machineProcs))
	fds := kickLoopPolling(b, 1, true, unix.SYS_EPOLL_PWAIT2, kick)

	// Each request's buffers, by slot: header, 4 KiB of data, status.
	base := uint64(1 << 20)
	post := func(slot int) uint16 {
		hdr := base + uint64(slot)*8192
		h, _ := ram.Slice(hdr, 16)
		clear(h) // VIRTIO_BLK_T_IN, sector 0 + slot*8
		h[8] = byte(slot * 8)
		h[9] = byte(slot * 8 >> 8)
		head, ok := drv.Post(virtiotest.Buf{Addr: hdr, Len: 16},
			virtiotest.Buf{Addr: hdr + 4096, Len: 4096, Write: true},
			virtiotest.Buf{Addr: hdr + 32, Len: 1, Write: true})
		if !ok {
			panic("ring full")
		}
		return head
	}
	slotOf := make(map[uint16]int, depth)
	var kicks int
	send := func(slot int) {
		old := drv.AvailIdx()
		slotOf[post(slot)] = slot
		if think > 0 {
			for start := time.Now(); time.Since(start) < think; {
			}
		}
		// vring_need_event(avail_event, new, old)
		if n := drv.AvailIdx(); n-drv.AvailEvent()-1 < n-old {
			kicks++
			eventfd.Signal(fds[0])
		}
	}
	var reaped []virtiotest.Used
	done := make(chan error)
	irqs0 := irq.n.Load()
	b.ResetTimer()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for i := range depth {
			send(i)
		}
		var c [8]byte
		for finished := 0; finished < b.N; {
			var err error
			if reaped, err = drv.Reap(reaped[:0]); err != nil {
				done <- err
				return
			}
			if len(reaped) == 0 {
				drv.SetUsedEvent(drv.NextUsed())
				if drv.UsedIdx() != drv.NextUsed() {
					continue
				}
				if _, err := unix.Read(irqFD, c[:]); err != nil {
					done <- err
					return
				}
				continue
			}
			for _, u := range reaped {
				finished++
				send(slotOf[u.Head])
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(kicks)/float64(b.N), "kicks/req")
	b.ReportMetric(float64(irq.n.Load()-irqs0)/float64(b.N), "irqs/req")
}
