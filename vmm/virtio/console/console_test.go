package console

import (
	"bytes"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// Guest RAM: two rings and the buffers.
const (
	rxAt    = 0x1000
	txAt    = 0x4000
	bufAt   = 0x8000
	ramSize = 0x20000
	qsize   = 8
)

type irqs struct{ used []int }

func (i *irqs) Used(q int) error     { i.used = append(i.used, q); return nil }
func (i *irqs) ConfigChanged() error { return nil }

// guest is the test's driver of both queues.
type guest struct {
	ram    *virtiotest.RAM
	rx, tx *virtiotest.Driver
	irq    *irqs
	out    *bytes.Buffer
}

func setup(t testing.TB, opts Options) (*Device, *guest) {
	t.Helper()
	g := &guest{ram: virtiotest.NewRAM(ramSize), irq: &irqs{}, out: &bytes.Buffer{}}
	var qs []*virtio.Queue
	for _, at := range []uint64{rxAt, txAt} {
		l := virtiotest.Contiguous(at, qsize)
		drv, err := virtiotest.NewDriver(g.ram, l)
		if err != nil {
			t.Fatal(err)
		}
		if at == rxAt {
			g.rx = drv
		} else {
			g.tx = drv
		}
		q, err := virtio.NewQueue(qsize)
		if err != nil {
			t.Fatal(err)
		}
		q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = qsize, l.Desc, l.Avail, l.Used, true
		qs = append(qs, q)
	}
	if opts.Out == nil {
		opts.Out = g.out
	}
	d := New(opts)
	if err := d.Ack(d.Features()); err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if err := q.Activate(g.ram, d.Features()); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Activate(qs, g.irq); err != nil {
		t.Fatal(err)
	}
	return d, g
}

// send puts text in guest memory at addr and posts it on the transmit
// queue as one chain of the given buffer lengths.
func (g *guest) send(t testing.TB, addr uint64, text string, lens ...int) {
	t.Helper()
	copy(g.ram.Bytes(addr, uint64(len(text))), text)
	var bufs []virtiotest.Buf
	for _, n := range lens {
		bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(n)})
		addr += uint64(n)
	}
	if _, ok := g.tx.Post(bufs...); !ok {
		t.Fatal("transmit ring full")
	}
}

func TestTransmit(t *testing.T) {
	d, g := setup(t, Options{})
	g.send(t, bufAt, "hello, ", 7)
	g.send(t, bufAt+0x100, "world\n", 2, 4)
	d.Kick(transmitQ)
	if got := g.out.String(); got != "hello, world\n" {
		t.Errorf("out %q", got)
	}
	if g.tx.UsedIdx() != 2 {
		t.Errorf("used idx %d, want 2", g.tx.UsedIdx())
	}
	if len(g.irq.used) != 1 || g.irq.used[0] != transmitQ {
		t.Errorf("interrupts %v, want one for the transmit queue", g.irq.used)
	}
	// A chain past MaxBuffers or outside RAM is given back unread.
	d2, g2 := setup(t, Options{MaxBuffers: 2})
	g2.send(t, bufAt, "abc", 1, 1, 1)
	if _, ok := g2.tx.Post(virtiotest.Buf{Addr: ramSize - 2, Len: 16}); !ok {
		t.Fatal("ring full")
	}
	g2.send(t, bufAt+0x10, "ok", 2)
	d2.Kick(transmitQ)
	if got := g2.out.String(); got != "ok" {
		t.Errorf("out %q, want only the good chain's", got)
	}
	if g2.tx.UsedIdx() != 3 {
		t.Errorf("used idx %d, want 3: bad chains are given back too", g2.tx.UsedIdx())
	}
}

// TestReceive: input waits for receive buffers, fills them in order across
// chains, and what the backlog cannot hold is dropped and counted.
func TestReceive(t *testing.T) {
	d, g := setup(t, Options{Backlog: 8})
	if n := d.Input([]byte("0123456789")); n != 8 || d.Dropped() != 2 {
		t.Fatalf("Input took %d, dropped %d; want 8 and 2", n, d.Dropped())
	}
	if len(g.irq.used) != 0 {
		t.Fatalf("interrupts %v with no receive buffer", g.irq.used)
	}
	g.rx.Post(virtiotest.Buf{Addr: bufAt, Len: 3, Write: true})
	g.rx.Post(virtiotest.Buf{Addr: bufAt + 0x10, Len: 2, Write: true}, virtiotest.Buf{Addr: bufAt + 0x20, Len: 16, Write: true})
	d.Kick(receiveQ)
	if g.rx.UsedIdx() != 2 {
		t.Fatalf("used idx %d, want 2", g.rx.UsedIdx())
	}
	if _, n := g.rx.UsedElem(0); n != 3 {
		t.Errorf("first buffer: %d bytes, want 3", n)
	}
	if _, n := g.rx.UsedElem(1); n != 5 {
		t.Errorf("second chain: %d bytes, want 5", n)
	}
	got := string(g.ram.Bytes(bufAt, 3)) + string(g.ram.Bytes(bufAt+0x10, 2)) + string(g.ram.Bytes(bufAt+0x20, 3))
	if got != "01234567" {
		t.Errorf("guest got %q", got)
	}
	if len(g.irq.used) != 1 || g.irq.used[0] != receiveQ {
		t.Errorf("interrupts %v, want one for the receive queue", g.irq.used)
	}
	// With buffers waiting, input goes straight in.
	g.rx.Post(virtiotest.Buf{Addr: bufAt + 0x40, Len: 16, Write: true})
	d.Kick(receiveQ) // nothing to give: the chain stays with the device
	if g.rx.UsedIdx() != 2 {
		t.Fatalf("a buffer was used with no input")
	}
	if n := d.Input([]byte("hi\n")); n != 3 || g.rx.UsedIdx() != 3 {
		t.Fatalf("Input took %d, used idx %d; want 3 and 3", n, g.rx.UsedIdx())
	}
	if got := string(g.ram.Bytes(bufAt+0x40, 3)); got != "hi\n" {
		t.Errorf("guest got %q", got)
	}
	// Reset: input waits again; a new Activate delivers it.
	d.Reset()
	d.Input([]byte("x"))
	d.Kick(transmitQ)
	d.Kick(receiveQ)
}

func TestActivateChecks(t *testing.T) {
	d := New(Options{})
	if err := d.Activate(nil, &irqs{}); err == nil {
		t.Error("Activate with no queue succeeded")
	}
	q0, _ := virtio.NewQueue(qsize)
	q1, _ := virtio.NewQueue(qsize)
	if err := d.Activate([]*virtio.Queue{q0, q1}, &irqs{}); err == nil {
		t.Error("Activate with disabled queues succeeded")
	}
	if d.Type() != virtio.TypeConsole || len(d.QueueSizes()) != 2 {
		t.Error("not a console device with two queues")
	}
}

// BenchmarkTransmit is a guest line out: pop, walk, write, push.
func BenchmarkTransmit(b *testing.B) {
	d, g := setup(b, Options{Out: discard{}})
	g.send(b, bufAt, "a console line of some sixty bytes, as a guest prints them\n", 60)
	d.Kick(transmitQ)
	b.ReportAllocs()
	for b.Loop() {
		g.tx.Add(0)
		d.Kick(transmitQ)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
