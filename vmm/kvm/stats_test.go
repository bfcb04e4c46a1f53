package kvm

import (
	"encoding/binary"
	"strings"
	"testing"
)

// statsDesc builds one struct kvm_stats_desc with a name field of nameSize.
func statsDesc(name string, size uint16, off uint32, nameSize int) []byte {
	b := make([]byte, statsDescSize+nameSize)
	binary.LittleEndian.PutUint16(b[6:], size)
	binary.LittleEndian.PutUint32(b[8:], off)
	copy(b[statsDescSize:], name)
	return b
}

func TestParseStatsDescs(t *testing.T) {
	h := statsHeader{NameSize: 48, NumDesc: 3}
	descs := append(append(statsDesc("exits", 1, 0, 48), statsDesc("halt_wait_hist", 32, 8, 48)...),
		statsDesc("io_exits", 1, 264, 48)...)
	shapes, end, err := parseStatsDescs(descs, h)
	if err != nil {
		t.Fatal(err)
	}
	want := []statShape{{"exits", 0, 1}, {"halt_wait_hist", 8, 32}, {"io_exits", 264, 1}}
	if len(shapes) != len(want) || end != 272 {
		t.Fatalf("got %v, block of %d bytes; want %v, 272", shapes, end, want)
	}
	for i := range want {
		if shapes[i] != want[i] {
			t.Errorf("counter %d: %+v, want %+v", i, shapes[i], want[i])
		}
	}
	// A header that claims more counters than there are bytes for reads
	// only the whole ones.
	h.NumDesc = 9
	if shapes, _, err := parseStatsDescs(descs[:len(descs)-1], h); err != nil || len(shapes) != 2 {
		t.Errorf("truncated descriptors: %v, %v; want the 2 whole ones", shapes, err)
	}
	for _, bad := range [][]byte{
		statsDesc("none", 0, 0, 48),
		statsDesc("misaligned", 1, 4, 48),
		statsDesc("far", 1, statsMaxData, 48),
		statsDesc("huge", 0xffff, statsMaxData-8, 48),
	} {
		if _, _, err := parseStatsDescs(bad, statsHeader{NameSize: 48, NumDesc: 1}); err == nil || !strings.Contains(err.Error(), "kvm: stats counter") {
			t.Errorf("%q: %v, want an error", bad[statsDescSize:statsDescSize+8], err)
		}
	}
}

func TestStatsGet(t *testing.T) {
	s := Stats{{"exits", []uint64{7}}, {"hist", nil}, {"exits", []uint64{9}}}
	if v, ok := s.Get("exits"); !ok || v != 7 {
		t.Errorf("exits: %d, %v", v, ok)
	}
	if _, ok := s.Get("hist"); ok {
		t.Error("a counter without values has none")
	}
	if _, ok := s.Get("missing"); ok {
		t.Error("missing counter found")
	}
}
