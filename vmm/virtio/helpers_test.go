package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// guardLen bytes of a known pattern surround each region of fakeRAM, so a
// test can prove nothing wrote outside guest RAM (the word accessors use
// unsafe pointers; a slice bound would not catch them).
const (
	guardLen  = 64
	guardByte = 0xA5
)

type fakeRegion struct {
	gpa   uint64
	buf   []byte // guard, RAM, guard
	bytes []byte // the RAM part of buf
}

// fakeRAM is guest RAM backed by Go slices: one or more regions with holes
// between them, like memory.Guest around the MMIO hole.
type fakeRAM struct {
	regions []fakeRegion
}

// newFakeRAM makes regions given as gpa, size pairs (both multiples of 4).
func newFakeRAM(pairs ...uint64) *fakeRAM {
	m := &fakeRAM{}
	for i := 0; i+1 < len(pairs); i += 2 {
		buf := make([]byte, guardLen+pairs[i+1]+guardLen)
		for j := range buf {
			buf[j] = guardByte
		}
		ram := buf[guardLen : guardLen+pairs[i+1] : guardLen+pairs[i+1]]
		clear(ram)
		m.regions = append(m.regions, fakeRegion{gpa: pairs[i], buf: buf, bytes: ram})
	}
	return m
}

var errFakeBounds = errors.New("fake: not RAM")

func (m *fakeRAM) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		size := uint64(len(r.bytes))
		if gpa < r.gpa || gpa-r.gpa >= size {
			continue
		}
		off := gpa - r.gpa
		if n == 0 || n > size-off {
			break
		}
		return r.bytes[off : off+n : off+n], nil
	}
	return nil, fmt.Errorf("fake range %#x+%#x: %w", gpa, n, errFakeBounds)
}

// checkGuards fails the test if any guard byte changed.
func (m *fakeRAM) checkGuards(t testing.TB) {
	t.Helper()
	for _, r := range m.regions {
		n := len(r.buf)
		for j := 0; j < guardLen; j++ {
			if r.buf[j] != guardByte || r.buf[n-1-j] != guardByte {
				t.Fatalf("guard byte around region %#x overwritten", r.gpa)
			}
		}
	}
}

// Standard test layout: rings low, buffers from bufBase.
const (
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
	tableAt = 0x4000 // indirect tables
	bufBase = 0x8000
	ramSize = 0x10000
)

// driver plays the guest's virtio driver on a ring in a Memory. It writes
// the shared indices with the same atomic word accessors as the device,
// which is what a real driver's barriers amount to.
type driver struct {
	t                      testing.TB
	mem                    Memory
	size                   uint16
	desc, avail, used      uint64
	availIdx               uint16
	availBase, availOffset int
	availView              []byte
	usedView               []byte
}

func newDriver(t testing.TB, mem Memory, size uint16, desc, avail, used uint64) *driver {
	d := &driver{t: t, mem: mem, size: size, desc: desc, avail: avail, used: used}
	var err error
	d.availOffset = int(avail & 3)
	d.availView, err = mem.Slice(avail&^3, (uint64(d.availOffset)+6+2*uint64(size)+3)&^3)
	if err != nil {
		t.Fatalf("driver: avail view: %v", err)
	}
	d.usedView, err = mem.Slice(used, 8+8*uint64(size))
	if err != nil {
		t.Fatalf("driver: used view: %v", err)
	}
	return d
}

// queue returns an activated queue over the driver's ring.
func (d *driver) queue(features uint64) *Queue {
	d.t.Helper()
	q, err := NewQueue(d.size)
	if err != nil {
		d.t.Fatal(err)
	}
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = d.desc, d.avail, d.used, true
	if err := q.Activate(d.mem, features); err != nil {
		d.t.Fatalf("Activate: %v", err)
	}
	return q
}

func putDesc(t testing.TB, mem Memory, at uint64, addr uint64, length uint32, flags, next uint16) {
	t.Helper()
	b, err := mem.Slice(at, descSize)
	if err != nil {
		t.Fatalf("descriptor at %#x: %v", at, err)
	}
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// setDesc writes descriptor i of the ring's table.
func (d *driver) setDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	d.t.Helper()
	putDesc(d.t, d.mem, d.desc+descSize*uint64(i), addr, length, flags, next)
}

// setAvailIdx publishes idx without adding entries (to fake driver bugs).
func (d *driver) setAvailIdx(idx uint16) {
	d.availIdx = idx
	fieldAt(d.availView, d.availOffset+2).store(idx)
}

// add makes the chains with the given heads available.
func (d *driver) add(heads ...uint16) {
	for _, h := range heads {
		slot := int(d.availIdx & (d.size - 1))
		fieldAt(d.availView, d.availOffset+4+2*slot).store(h)
		d.availIdx++
	}
	fieldAt(d.availView, d.availOffset+2).store(d.availIdx)
}

func (d *driver) setAvailFlags(f uint16) { fieldAt(d.availView, d.availOffset).store(f) }
func (d *driver) setUsedEvent(v uint16) {
	fieldAt(d.availView, d.availOffset+4+2*int(d.size)).store(v)
}
func (d *driver) usedIdx() uint16    { return fieldAt(d.usedView, 2).load() }
func (d *driver) usedFlags() uint16  { return fieldAt(d.usedView, 0).load() }
func (d *driver) availEvent() uint16 { return fieldAt(d.usedView, 4+8*int(d.size)).load() }

// usedElem reads used ring element i (an index, wrapped by the ring size).
func (d *driver) usedElem(i uint16) (id, length uint32) {
	off := 4 + 8*int(i&(d.size-1))
	return binary.LittleEndian.Uint32(d.usedView[off:]), binary.LittleEndian.Uint32(d.usedView[off+4:])
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
