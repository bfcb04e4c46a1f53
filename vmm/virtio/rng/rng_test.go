package rng

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// Guest RAM layout of the test ring.
const (
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	bufAt   = 0x8000
	ramSize = 0x10000
	qsize   = 8

	flagWrite = virtiotest.DescWrite
)

// counter is a deterministic Source: 0, 1, 2, ... (mod 256).
type counter struct{ n byte }

func (c *counter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n++
	}
	return len(p), nil
}

type failing struct{}

func (failing) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

type irqs struct{ used []int }

func (i *irqs) Used(q int) error     { i.used = append(i.used, q); return nil }
func (i *irqs) ConfigChanged() error { return nil }

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
}

// ring is the test's guest: RAM and the driver of the device's one queue.
type ring struct {
	ram *virtiotest.RAM
	drv *virtiotest.Driver
}

// setup activates a device on a ring holding one chain per element of
// chains.
func setup(t *testing.T, opts Options, chains ...[]desc) (*Device, ring, *irqs) {
	t.Helper()
	r := ring{ram: virtiotest.NewRAM(ramSize)}
	var err error
	r.drv, err = virtiotest.NewDriver(r.ram, virtiotest.Layout{Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chains {
		var bufs []virtiotest.Buf
		for _, d := range c {
			bufs = append(bufs, virtiotest.Buf{Addr: d.addr, Len: d.len, Write: d.flags&flagWrite != 0})
		}
		if _, ok := r.drv.Post(bufs...); !ok {
			t.Fatal("test ring full")
		}
	}
	q, err := virtio.NewQueue(qsize)
	if err != nil {
		t.Fatal(err)
	}
	q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = qsize, descAt, availAt, usedAt, true
	d := New(opts)
	if err := d.Ack(d.Features()); err != nil {
		t.Fatal(err)
	}
	if err := q.Activate(r.ram, d.Features()); err != nil {
		t.Fatal(err)
	}
	irq := &irqs{}
	if err := d.Activate([]*virtio.Queue{q}, irq); err != nil {
		t.Fatal(err)
	}
	return d, r, irq
}

func TestFill(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   int
		chain []desc
		want  uint32 // used length
	}{
		{"one buffer", 0, []desc{{bufAt, 64, flagWrite}}, 64},
		{"two buffers", 0, []desc{{bufAt, 16, flagWrite}, {bufAt + 0x100, 100, flagWrite}}, 116},
		{"bounded", 50, []desc{{bufAt, 16, flagWrite}, {bufAt + 0x100, 100, flagWrite}}, 50},
		{"readable only", 0, []desc{{bufAt, 32, 0}}, 0},
		{"buffer outside RAM", 0, []desc{{ramSize - 8, 64, flagWrite}}, 0},
		{"at MaxBuffers", 0, []desc{{bufAt, 1, flagWrite}, {bufAt + 1, 1, flagWrite}, {bufAt + 2, 1, flagWrite}, {bufAt + 3, 1, flagWrite}}, 4},
		{"past MaxBuffers", 0, []desc{{bufAt, 1, flagWrite}, {bufAt + 1, 1, flagWrite}, {bufAt + 2, 1, flagWrite}, {bufAt + 3, 1, flagWrite}, {bufAt + 4, 1, flagWrite}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ram, irq := setup(t, Options{Source: &counter{}, MaxRequest: tc.max, MaxBuffers: 4}, tc.chain)
			d.Kick(0)
			if idx := ram.drv.UsedIdx(); idx != 1 {
				t.Fatalf("used idx %d, want 1", idx)
			}
			if id, n := ram.drv.UsedElem(0); id != 0 || n != tc.want {
				t.Errorf("used element (%d, %d), want (0, %d)", id, n, tc.want)
			}
			// The bytes the source gave, in order, across the buffers.
			var got []byte
			for _, b := range tc.chain {
				if b.flags&flagWrite != 0 && b.addr+uint64(b.len) <= ramSize {
					got = append(got, ram.ram.Bytes(b.addr, uint64(b.len))...)
				}
			}
			want := make([]byte, len(got))
			(&counter{}).Read(want[:tc.want])
			if !bytes.Equal(got, want) {
				t.Errorf("buffers hold % x\nwant % x", got, want)
			}
			if len(irq.used) != 1 || irq.used[0] != 0 {
				t.Errorf("interrupts %v, want one for queue 0", irq.used)
			}
		})
	}
}

func TestSeveralRequestsAndFailingSource(t *testing.T) {
	d, ram, irq := setup(t, Options{Source: failing{}},
		[]desc{{bufAt, 8, flagWrite}}, []desc{{bufAt + 8, 8, flagWrite}})
	d.Kick(0)
	if idx := ram.drv.UsedIdx(); idx != 2 {
		t.Fatalf("used idx %d, want 2", idx)
	}
	for i := 0; i < 2; i++ {
		if _, n := ram.drv.UsedElem(uint16(i)); n != 0 {
			t.Errorf("request %d used length %d with a failing source, want 0", i, n)
		}
	}
	if len(irq.used) != 1 {
		t.Errorf("%d interrupts for one batch, want 1", len(irq.used))
	}
	// Kicks of other queues or after Reset do nothing.
	d.Kick(1)
	d.Reset()
	d.Kick(0)
}

func TestRealSource(t *testing.T) {
	d, ram, _ := setup(t, Options{}, []desc{{bufAt, 256, flagWrite}})
	d.Kick(0)
	if _, n := ram.drv.UsedElem(0); n != 256 {
		t.Fatalf("used length %d, want 256", n)
	}
	if bytes.Equal(ram.ram.Bytes(bufAt, 256), make([]byte, 256)) {
		t.Error("256 bytes from crypto/rand are all zero")
	}
}

func TestActivateChecks(t *testing.T) {
	d := New(Options{})
	if err := d.Activate(nil, &irqs{}); err == nil {
		t.Error("Activate with no queue succeeded")
	}
	q, _ := virtio.NewQueue(qsize)
	if err := d.Activate([]*virtio.Queue{q}, &irqs{}); err == nil {
		t.Error("Activate with a disabled queue succeeded")
	}
	if err := d.Ack(virtio.FeatureVersion1 | 1<<3); err == nil {
		t.Error("Ack of a feature not offered succeeded")
	}
	if d.Type() != virtio.TypeEntropy || len(d.QueueSizes()) != 1 {
		t.Error("not an entropy device with one queue")
	}
}

// BenchmarkKick is the per-request path: pop, walk, fill 64 bytes, push.
func BenchmarkKick(b *testing.B) {
	t := &testing.T{}
	d, ram, _ := setup(t, Options{Source: &counter{}}, []desc{{bufAt, 64, flagWrite}})
	d.Kick(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Make the same chain available again.
		ram.drv.Add(0)
		d.Kick(0)
	}
}
