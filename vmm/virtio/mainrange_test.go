package virtio

import (
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"
)

// regionPair is guest RAM in two ranges with a hole between them, the
// second (larger) one its MainRange.
type regionPair struct {
	lowGPA, mainGPA uint64
	low, main       []byte
}

func (m *regionPair) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range []struct {
		gpa uint64
		b   []byte
	}{{m.lowGPA, m.low}, {m.mainGPA, m.main}} {
		if gpa < r.gpa || gpa-r.gpa >= uint64(len(r.b)) {
			continue
		}
		off := gpa - r.gpa
		if n == 0 || n > uint64(len(r.b))-off {
			break
		}
		return r.b[off : off+n : off+n], nil
	}
	return nil, errors.New("out of bounds")
}

func (m *regionPair) MainRange() (uint64, []byte) { return m.mainGPA, m.main }

// TestSliceMainRange: the queue's inline check of the main range answers
// exactly as the Memory does, at and across every edge of both ranges,
// for hostile addresses and lengths too (wrapping sums, zero lengths).
func TestSliceMainRange(t *testing.T) {
	m := &regionPair{lowGPA: 0x1000, mainGPA: 0x100000, low: make([]byte, 0x10000), main: make([]byte, 0x20000)}
	q := &Queue{mem: m}
	q.ramGPA, q.ram = m.MainRange()
	var addrs, lens []uint64
	for _, e := range []uint64{0, m.lowGPA, m.lowGPA + uint64(len(m.low)), m.mainGPA, m.mainGPA + uint64(len(m.main)), 1 << 63, ^uint64(0)} {
		for _, d := range []uint64{0, 1, 2, 4095, 4096} {
			addrs = append(addrs, e+d, e-d)
		}
	}
	for _, n := range []uint64{0, 1, 2, 4096, 0x10000, 0x1ffff, 0x20000, 0x20001, 1 << 63, ^uint64(0)} {
		lens = append(lens, n)
	}
	inline := 0
	for _, gpa := range addrs {
		for _, n := range lens {
			want, werr := m.Slice(gpa, n)
			got, gerr := q.slice(gpa, n)
			if (werr == nil) != (gerr == nil) || len(got) != len(want) || cap(got) != cap(want) ||
				(len(want) > 0 && unsafe.SliceData(got) != unsafe.SliceData(want)) {
				t.Fatalf("slice(%#x, %#x) = len %d, %v; the Memory says len %d, %v", gpa, n, len(got), gerr, len(want), werr)
			}
			if gerr == nil && gpa >= m.mainGPA && gpa < m.mainGPA+uint64(len(m.main)) {
				inline++
			}
		}
	}
	if inline == 0 {
		t.Fatal("no case inside the main range: the inline path was not tested")
	}
}

// TestWalkDirect: Walk's one-descriptor fast path takes exactly the
// direct, non-empty buffers inside the main range, each as the view the
// full walk gives, and leaves every other descriptor (hostile addresses
// and lengths, chains, indirect tables, buffers past RAM's end) to the
// full walk with the chain untouched.
func TestWalkDirect(t *testing.T) {
	m := &regionPair{lowGPA: 0x1000, mainGPA: 0x100000, low: make([]byte, 0x10000), main: make([]byte, 0x20000)}
	const size = 4
	q := &Queue{mem: m, active: true, size: size, desc: make([]byte, size*descSize)}
	q.ramGPA, q.ram = m.MainRange()
	end := m.mainGPA + uint64(len(m.main))
	direct := 0
	for _, gpa := range []uint64{0, m.lowGPA, m.mainGPA - 1, m.mainGPA, m.mainGPA + 1, end - 4096, end - 1, end, 1 << 63, ^uint64(0)} {
		for _, n := range []uint32{0, 1, 4096, 0x20000, 0x20001, 1 << 31, ^uint32(0)} {
			for _, flags := range []uint16{0, descFWrite, descFNext, descFIndirect, descFWrite | descFNext} {
				d := q.desc[:descSize]
				binary.LittleEndian.PutUint64(d[0:], gpa)
				binary.LittleEndian.PutUint32(d[8:], n)
				binary.LittleEndian.PutUint16(d[12:], flags)
				binary.LittleEndian.PutUint16(d[14:], 1) // next: descriptor 1, all zeros
				var fast, full Chain
				fast.reset(0)
				ok := q.walkDirect(0, &fast)
				inside := gpa >= m.mainGPA && gpa < end && n > 0 && uint64(n) <= end-gpa
				if want := inside && flags&(descFNext|descFIndirect) == 0; ok != want {
					t.Fatalf("walkDirect(gpa %#x, len %#x, flags %#x) = %v, want %v", gpa, n, flags, ok, want)
				}
				if !ok {
					if len(fast.bufs) != 0 || fast.readLen != 0 || fast.writeLen != 0 || fast.nr != 0 {
						t.Fatalf("walkDirect(gpa %#x, len %#x, flags %#x) refused but changed the chain", gpa, n, flags)
					}
					continue
				}
				direct++
				full.reset(0)
				if err := q.walk(0, &full); err != nil {
					t.Fatalf("gpa %#x, len %#x, flags %#x: walkDirect took what walk refuses: %v", gpa, n, flags, err)
				}
				if len(fast.bufs) != 1 || len(full.bufs) != 1 || unsafe.SliceData(fast.bufs[0]) != unsafe.SliceData(full.bufs[0]) ||
					len(fast.bufs[0]) != len(full.bufs[0]) || cap(fast.bufs[0]) != cap(full.bufs[0]) ||
					fast.readLen != full.readLen || fast.writeLen != full.writeLen || fast.nr != full.nr {
					t.Fatalf("gpa %#x, len %#x, flags %#x: walkDirect's chain differs from walk's", gpa, n, flags)
				}
			}
		}
	}
	if direct == 0 {
		t.Fatal("no descriptor took the fast path")
	}
}
