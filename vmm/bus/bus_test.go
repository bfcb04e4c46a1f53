package bus

import (
	"bytes"
	"testing"
)

type recorder struct {
	off  uint64
	data []byte
}

func (r *recorder) Read(off uint64, data []byte) {
	r.off = off
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}

func (r *recorder) Write(off uint64, data []byte) {
	r.off = off
	r.data = append(r.data[:0], data...)
}

func TestBus(t *testing.T) {
	var b Bus
	a, c := &recorder{}, &recorder{}
	if err := b.Insert(a, 0x3f8, 8); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(c, 0x60, 1); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]uint64{{0x3f0, 9}, {0x3ff, 1}, {0x3fc, 2}, {0x60, 1}, {0x5f, 2}, {0, 0}, {^uint64(0), 2}} {
		if err := b.Insert(&recorder{}, bad[0], bad[1]); err == nil {
			t.Errorf("Insert(%#x, %#x) overlapped or wrapped but was accepted", bad[0], bad[1])
		}
	}
	if !b.Write(0x3fb, []byte{0x83}) || a.off != 3 || !bytes.Equal(a.data, []byte{0x83}) {
		t.Errorf("write reached off %d data %v", a.off, a.data)
	}
	buf := make([]byte, 2)
	if !b.Read(0x3fe, buf) || a.off != 6 || buf[0] != 6 || buf[1] != 7 {
		t.Errorf("read off %d -> %v", a.off, buf)
	}
	if b.Read(0x3ff, buf) {
		t.Error("read straddling the end of a range was dispatched")
	}
	if b.Write(0x61, []byte{1}) || b.Read(0x1000, buf) {
		t.Error("access to an unclaimed address was dispatched")
	}
	if !b.Write(0x60, []byte{9}) || c.data[0] != 9 {
		t.Error("second device not reached")
	}
	b.Remove(0x60)
	if b.Write(0x60, []byte{9}) {
		t.Error("removed device still reached")
	}
}

// TestDispatchAllocs holds bus dispatch, which every port and MMIO exit
// goes through, to no allocation (BenchmarkDispatch measures it).
func TestDispatchAllocs(t *testing.T) {
	var bus Bus
	for i := uint64(0); i < 16; i++ {
		bus.Insert(&recorder{}, 0x1000*i, 0x100)
	}
	data, buf := []byte{1}, make([]byte, 4)
	if n := testing.AllocsPerRun(1000, func() {
		if !bus.Write(0x7010, data) || !bus.Read(0xa0fc, buf) {
			t.Fatal("not dispatched")
		}
	}); n != 0 {
		t.Errorf("%v allocations per write and read, want 0", n)
	}
}

func BenchmarkDispatch(b *testing.B) {
	var bus Bus
	for i := uint64(0); i < 16; i++ {
		bus.Insert(&recorder{}, 0x1000*i, 0x100)
	}
	data := []byte{1}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		bus.Write(0x7010, data)
	}
}
