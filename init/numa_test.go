package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// fakeNodes points nodeDir at a host with nodes 0 (CPUs 0-1) and 1 (no
// CPUs).
func fakeNodes(t *testing.T) {
	dir := t.TempDir()
	for node, cpus := range map[string]string{"node0": "0-1\n", "node1": "\n"} {
		os.Mkdir(filepath.Join(dir, node), 0o755)
		os.WriteFile(filepath.Join(dir, node, "cpulist"), []byte(cpus), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "online"), []byte("0-1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "node0", "distance"), []byte("10 31\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "node1", "distance"), []byte("21 10\n"), 0o644)
	old := nodeDir
	nodeDir = dir
	t.Cleanup(func() { nodeDir = old })
}

func TestNUMAPlacement(t *testing.T) {
	fakeNodes(t)
	zero, one, two := 0, 1, 2
	for _, tc := range []struct {
		name            string
		numa            config.NUMA
		err, mems, cpus string
	}{
		{"none", config.NUMA{}, "", "", ""},
		{"whole VM on node 0", config.NUMA{Node: &zero}, "", "0", "0-1"},
		{"whole VM on a node without CPUs", config.NUMA{Node: &one}, "", "1", ""},
		{"guest topology", config.NUMA{Nodes: []config.VNode{{HostNode: &one}, {HostNode: &zero}, {}}}, "", "1,0", ""},
		{"a node the host lacks", config.NUMA{Nodes: []config.VNode{{HostNode: &two}}},
			"numa: host node 2: this host's NUMA nodes are 0-1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkNUMA(config.VM{Name: "v", NUMA: tc.numa})
			if (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
				t.Fatalf("checkNUMA: %v, want %q", err, tc.err)
			}
			if err != nil {
				return
			}
			mems, cpus, err := numaCPUSet(tc.numa)
			if err != nil || mems != tc.mems || cpus != tc.cpus {
				t.Errorf("numaCPUSet = %q, %q, %v; want %q, %q", mems, cpus, err, tc.mems, tc.cpus)
			}
		})
	}
}

func TestParseRAMNodes(t *testing.T) {
	maps := strings.Join([]string{
		"7f0000000000 bind:0 file=/memfd:hyperroot-guest-ram\\040(deleted) dirty=10 N0=10 kernelpagesize_kB=4",
		"7f0000a00000 bind:1 file=/memfd:hyperroot-guest-ram\\040(deleted) dirty=7 N1=5 N0=2 kernelpagesize_kB=4",
		"7f0001000000 default anon=3 dirty=3 N0=3 kernelpagesize_kB=4",
		"7f0002000000 default file=/memfd:hyperroot-guest-ram\\040(deleted) Nx=4 N1=bad",
	}, "\n")
	if got := parseRAMNodes(maps); got != "ram-nodes N0=12 N1=5 ram-policy=bind:0,bind:1,default" {
		t.Errorf("parseRAMNodes = %q", got)
	}
	if got := parseRAMNodes("7f00 default anon=1 N0=1\n"); got != "" {
		t.Errorf("no guest RAM: %q", got)
	}
	if got := parseRAMNodes("7f00 default file=/memfd:hyperroot-guest-ram N0=5\n7f10 default file=/memfd:hyperroot-guest-ram N0=2\n"); got != "" {
		t.Errorf("all on one node, no policy: %q", got)
	}
	if got := parseRAMNodes("7f00 bind:0 file=/memfd:hyperroot-guest-ram N0=5\n"); got != "ram-nodes N0=5 ram-policy=bind:0" {
		t.Errorf("bound on a host of one node: %q", got)
	}
}

// TestGuestDistances: a guest topology's SLIT follows the host's distances
// between the nodes its guest nodes live on.
func TestGuestDistances(t *testing.T) {
	fakeNodes(t)
	zero, one := 0, 1
	for _, tc := range []struct {
		name string
		numa config.NUMA
		want []int
	}{
		{"no topology", config.NUMA{Node: &one}, nil},
		{"no host nodes", config.NUMA{Nodes: []config.VNode{{}, {}}}, nil},
		{"across host nodes", config.NUMA{Nodes: []config.VNode{{HostNode: &one}, {HostNode: &zero}}}, []int{10, 21, 31, 10}},
		{"one host node, and one anywhere", config.NUMA{Nodes: []config.VNode{{HostNode: &zero}, {HostNode: &zero}, {}}},
			[]int{10, 11, 20, 11, 10, 20, 20, 20, 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := guestDistances(tc.numa)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("guestDistances = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	os.WriteFile(filepath.Join(nodeDir, "node1", "distance"), []byte("21\n"), 0o644)
	if _, err := guestDistances(config.NUMA{Nodes: []config.VNode{{HostNode: &one}}}); err == nil || !strings.Contains(err.Error(), "1 distances for 2 online nodes") {
		t.Errorf("a short distance row: %v", err)
	}
}

// TestPlaceVCPUs: a guest node's vCPUs run on its host node's CPUs; a node
// of memory alone, a node with no host node and a pinned VM say nothing.
func TestPlaceVCPUs(t *testing.T) {
	fakeNodes(t)
	zero, one := 0, 1
	a := vmmcli.Args{NUMANodes: []vmmcli.NUMANode{{CPUs: []int{0}, Host: &zero}, {CPUs: []int{1}, Host: &one}, {CPUs: []int{2}}}}
	if err := placeVCPUs(&a); err != nil {
		t.Fatal(err)
	}
	if got := a.NUMANodes; !slices.Equal(got[0].HostCPUs, []int{0, 1}) || got[1].HostCPUs != nil || got[2].HostCPUs != nil {
		t.Errorf("host CPUs %v, %v, %v; want [0 1], none, none", got[0].HostCPUs, got[1].HostCPUs, got[2].HostCPUs)
	}
	if vcpuPlacement(a) == nil {
		t.Error("no placement for a node with host CPUs")
	}
	pinned := vmmcli.Args{PinVCPUs: []int{3}, NUMANodes: []vmmcli.NUMANode{{CPUs: []int{0}, Host: &zero}}}
	if err := placeVCPUs(&pinned); err != nil || pinned.NUMANodes[0].HostCPUs != nil {
		t.Errorf("a pinned VM got host CPUs %v (%v)", pinned.NUMANodes[0].HostCPUs, err)
	}
	if vcpuPlacement(vmmcli.Args{NUMANodes: []vmmcli.NUMANode{{CPUs: []int{0}}}}) != nil {
		t.Error("a placement without pinning or host CPUs")
	}
}
