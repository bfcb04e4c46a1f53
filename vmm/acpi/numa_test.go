package acpi

import (
	"strings"
	"testing"
)

// TestSRAT parses the SRAT back: every vCPU in its node's proximity
// domain (x2APIC entries past APIC ID 254), every range in its node's.
func TestSRAT(t *testing.T) {
	nodes := []NUMANode{
		{CPUs: []int{0, 1}, Memory: [][2]uint64{{0, 1 << 30}}},
		{CPUs: []int{2, 300}, Memory: [][2]uint64{{1 << 30, 3 << 30}, {4 << 30, 5 << 30}}},
	}
	cpus := make([]int, 0, 301)
	for i := 3; i < 300; i++ {
		cpus = append(cpus, i)
	}
	nodes[0].CPUs = append(nodes[0].CPUs, cpus...)
	p := build(t, Config{CPUs: 301, NUMA: nodes})
	s := p.tables["SRAT"]
	if s == nil || p.tables["SLIT"] == nil {
		t.Fatalf("tables %v lack SRAT or SLIT", p.tables)
	}
	if le.Uint32(s[headerLen:]) != 1 {
		t.Errorf("SRAT reserved field %d, want 1", le.Uint32(s[headerLen:]))
	}
	cpuDom := map[uint32]uint32{}
	var mem [][3]uint64 // domain, base, length
	for e := s[headerLen+12:]; len(e) > 0; e = e[e[1]:] {
		if e[1] == 0 || int(e[1]) > len(e) {
			t.Fatalf("bad entry length %d", e[1])
		}
		switch e[0] {
		case sratLocalAPIC:
			dom := uint32(e[2]) | uint32(e[9])<<8 | uint32(e[10])<<16 | uint32(e[11])<<24
			cpuDom[uint32(e[3])] = dom
		case sratLocalX2APIC:
			cpuDom[le.Uint32(e[8:])] = le.Uint32(e[4:])
			if e[3] != 0 || le.Uint32(e[12:])&sratEnabled == 0 {
				t.Errorf("x2APIC entry % x", e)
			}
		case sratMemory:
			mem = append(mem, [3]uint64{uint64(le.Uint32(e[2:])), le.Uint64(e[8:]), le.Uint64(e[16:])})
		default:
			t.Errorf("entry type %d", e[0])
		}
	}
	if len(cpuDom) != 301 {
		t.Errorf("%d vCPUs in the SRAT, want 301", len(cpuDom))
	}
	for dom, n := range nodes {
		for _, c := range n.CPUs {
			if d, ok := cpuDom[uint32(c)]; !ok || d != uint32(dom) {
				t.Errorf("vCPU %d in domain %d (present %v), want %d", c, d, ok, dom)
			}
		}
	}
	want := [][3]uint64{{0, 0, 1 << 30}, {1, 1 << 30, 2 << 30}, {1, 4 << 30, 1 << 30}}
	if len(mem) != len(want) {
		t.Fatalf("memory entries %v, want %v", mem, want)
	}
	for i := range want {
		if mem[i] != want[i] {
			t.Errorf("memory entry %d: %v, want %v", i, mem[i], want[i])
		}
	}
	l := p.tables["SLIT"]
	if le.Uint64(l[headerLen:]) != 2 || string(l[headerLen+8:]) != "\x0a\x14\x14\x0a" {
		t.Errorf("SLIT % x", l[headerLen:])
	}
}

func TestNUMAErrors(t *testing.T) {
	mem := [][2]uint64{{0, 1 << 20}}
	for _, tc := range []struct {
		nodes []NUMANode
		want  string
	}{
		{[]NUMANode{{CPUs: []int{0}, Memory: mem}}, "vCPU 1 is on no NUMA node"},
		{[]NUMANode{{CPUs: []int{0, 1}, Memory: mem}, {CPUs: []int{1}, Memory: mem}}, "vCPU 1 is on two nodes"},
		{[]NUMANode{{CPUs: []int{0, 2}, Memory: mem}}, "vCPU 2 of 2"},
		{[]NUMANode{{CPUs: []int{0, 1}}}, "has no memory"},
		{[]NUMANode{{CPUs: []int{0, 1}, Memory: [][2]uint64{{5, 5}}}}, "empty memory range"},
		{[]NUMANode{{CPUs: []int{0}, Memory: mem, Distance: []uint8{10, 21}}, {CPUs: []int{1}, Memory: mem}}, "distances given for 1 of 2"},
		{[]NUMANode{{CPUs: []int{0}, Memory: mem, Distance: []uint8{10}}, {CPUs: []int{1}, Memory: mem, Distance: []uint8{21, 10}}}, "1 distances for 2 nodes"},
		{[]NUMANode{{CPUs: []int{0}, Memory: mem, Distance: []uint8{11, 21}}, {CPUs: []int{1}, Memory: mem, Distance: []uint8{21, 10}}}, "distance 11 to itself"},
		{[]NUMANode{{CPUs: []int{0}, Memory: mem, Distance: []uint8{10, 10}}, {CPUs: []int{1}, Memory: mem, Distance: []uint8{21, 10}}}, "distance 10 to node 1"},
		{[]NUMANode{{CPUs: []int{0}, Memory: mem, Distance: []uint8{10, 255}}, {CPUs: []int{1}, Memory: mem, Distance: []uint8{21, 10}}}, "distance 255 to node 1"},
	} {
		_, _, err := Build(Config{CPUs: 2, NUMA: tc.nodes})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.nodes, err, tc.want)
		}
	}
}

// TestSLITDistances: nodes that give their distances get them in the
// SLIT, row by row.
func TestSLITDistances(t *testing.T) {
	mem := [][2]uint64{{0, 1 << 20}}
	p := build(t, Config{CPUs: 2, NUMA: []NUMANode{
		{CPUs: []int{0}, Memory: mem, Distance: []uint8{10, 31}},
		{CPUs: []int{1}, Memory: mem, Distance: []uint8{21, 10}},
	}})
	l := p.tables["SLIT"]
	if le.Uint64(l[headerLen:]) != 2 || string(l[headerLen+8:]) != "\x0a\x1f\x15\x0a" {
		t.Errorf("SLIT % x", l[headerLen:])
	}
}
