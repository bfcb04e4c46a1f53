package memory

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/layout"
)

func TestNodeRanges(t *testing.T) {
	const g = 1 << 30
	low := uint64(layout.MMIO32Start)
	size := low + 2*g // spans the hole
	got := NodeRanges(size, []Node{{Size: g}, {Size: low}, {Size: g}})
	want := [][][2]uint64{
		{{0, g}},
		{{g, low}, {layout.RAM64Start, layout.RAM64Start + g}},
		{{layout.RAM64Start + g, layout.RAM64Start + 2*g}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("NodeRanges = %x, want %x", got, want)
	}
}

// TestBindNodes binds a guest's RAM to this host's node 0 and finds the
// policy in the kernel's account of the mapping; bad node layouts fail.
func TestBindNodes(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system/node/node0"); err != nil {
		t.Skip("no NUMA node 0 on this host")
	}
	g, err := New(8<<20, Options{Nodes: []Node{{Size: 4 << 20, HostNode: -1}, {Size: 4 << 20, HostNode: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	maps, err := os.ReadFile("/proc/self/numa_maps")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("%x bind:0 file=/memfd:hyperroot-guest-ram", g.regions[0].Host+4<<20)
	if !strings.Contains(string(maps), addr) {
		t.Errorf("numa_maps lacks %q:\n%s", addr, maps)
	}
	for _, tc := range []struct {
		nodes []Node
		want  string
	}{
		{[]Node{{Size: 4 << 20, HostNode: -1}}, "hold 0x400000 bytes of the guest's 0x800000"},
		{[]Node{{Size: 12 << 20, HostNode: -1}}, "hold more than"},
		{[]Node{{Size: 3 << 10, HostNode: -1}}, "not a non-zero multiple"},
		{[]Node{{Size: 8 << 20, HostNode: 5000}}, "host node 5000"},
	} {
		if _, err := New(8<<20, Options{Nodes: tc.nodes}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.nodes, err, tc.want)
		}
	}
}
