package virtio

import (
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// Standard test layout: rings low, buffers from bufBase.
const (
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	tableAt = 0x4000 // indirect tables
	bufBase = 0x8000
	ramSize = 0x10000
)

// twoRegions is guest RAM with a hole: [0, ramSize) and [0x20000, 0x30000).
func twoRegions() *virtiotest.RAM {
	return virtiotest.NewRAMAt(virtiotest.Span{GPA: 0, Size: ramSize}, virtiotest.Span{GPA: 0x20000, Size: 0x10000})
}

// driver is the test kit's driver with the test that owns it, so a queue
// can be made over its ring in one call.
type driver struct {
	*virtiotest.Driver
	t   testing.TB
	mem Memory
}

func newDriver(t testing.TB, mem Memory, size uint16, desc, avail, used uint64) *driver {
	t.Helper()
	d, err := virtiotest.NewDriver(mem, virtiotest.Layout{Size: size, Desc: desc, Avail: avail, Used: used})
	if err != nil {
		t.Fatalf("driver: %v", err)
	}
	return &driver{Driver: d, t: t, mem: mem}
}

// queue returns an activated queue over the driver's ring.
func (d *driver) queue(features uint64) *Queue {
	d.t.Helper()
	q, err := NewQueue(d.Size)
	if err != nil {
		d.t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = d.Desc, d.Avail, d.Used, true
	if err := q.Activate(d.mem, features); err != nil {
		d.t.Fatalf("Activate: %v", err)
	}
	return q
}

// putDesc writes a descriptor outside the ring's table (indirect tables).
func putDesc(t testing.TB, mem Memory, at uint64, addr uint64, length uint32, flags, next uint16) {
	t.Helper()
	if err := virtiotest.WriteDesc(mem, at, addr, length, flags, next); err != nil {
		t.Fatal(err)
	}
}

// checkGuards fails the test if anything wrote outside the fake RAM.
func checkGuards(t testing.TB, mem *virtiotest.RAM) {
	t.Helper()
	if err := mem.CheckGuards(); err != nil {
		t.Fatal(err)
	}
}

// fill writes a recognisable pattern into [gpa, gpa+n).
func fill(t testing.TB, mem Memory, gpa uint64, n int, seed byte) {
	t.Helper()
	b, err := mem.Slice(gpa, uint64(n))
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = seed + byte(i)
	}
}
