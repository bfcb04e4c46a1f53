package vhostuser

import "testing"

// BenchmarkRoundTrip measures one acknowledged control request: the
// frontend sends SET_VRING_NUM with NEED_REPLY, the backend applies it
// (the ring is not running) and acks.
func BenchmarkRoundTrip(b *testing.B) {
	dev := newEcho()
	s := newServer(b, dev)
	f, err := Dial(s.path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.SetProtocolFeatures(ProtocolReplyAck); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := f.SetVringNum(0, 256<<(i&1)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSlice is the per-descriptor cost of a guest memory lookup
// (Queue.Walk calls Slice for every buffer).
func BenchmarkSlice(b *testing.B) {
	g := newGuestRAM(b)
	m, err := Map(g.regions())
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Slice(highBase+0x1000, 1514); err != nil {
			b.Fatal(err)
		}
	}
}
