package virtio

import (
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
