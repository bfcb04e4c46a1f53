package e2e

import (
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestNUMA: on an appliance with two NUMA nodes (QEMU's, one vCPU each),
// a VM bound to node 1 has all its guest RAM there (the kernel's
// numa_maps of its VMM, through the console's qos command) and its
// threads on node 1's CPU; a VM with a NUMA topology of its own sees two
// nodes with the vCPUs and memory the configuration gives them and the
// host's distance between them, each node's RAM on its host node and its
// vCPU threads on that node's CPUs; a VM naming a node the host lacks
// does not start, with an error naming it, as do VMs asking for more
// CPU time or other CPUs than the appliance has. Huge pages reserved per host
// node are taken from the node a VM is bound to, and a VM needing more
// than its node has does not start, with an error naming the node.
func TestNUMA(t *testing.T) {
	parallel(t)
	cfg := configFile(t, "hugepages: {2M: {0: 16, 1: 64}}\nvms:\n"+
		loadVM("bound", "echo", 1, "128M", "    numa: {node: 1}\n")+
		loadVM("hugebound", "echo", 1, "96M", "    numa: {node: 1}\n    hugepages: 2M\n")+
		loadVM("hugeshort", "echo", 1, "64M", "    numa: {node: 0}\n    hugepages: 2M\n")+
		loadVM("vnuma", "numa", 2, "256M", "    numa: {nodes: [{cpus: 0, memory: 96M, host_node: 1}, {cpus: 1, memory: 160M, host_node: 0}]}\n",
			"hyperroot.numa=hold")+
		loadVM("nowhere", "echo", 1, "64M", "    numa: {node: 7}\n")+
		// Resources the appliance lacks: each VM refused at its start,
		// by name, the others untouched.
		loadVM("greedy", "echo", 1, "64M", "    qos: {cpu: {max: 800%}}\n")+
		loadVM("offcpu", "echo", 1, "64M", "    pin: {vcpus: [7]}\n"))
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr, CPUs: 2, Memory: "2G", NUMANodes: 2, NUMADistance: 21})
		seen(t, m, `hyperroot: error: vm nowhere: numa: host node 7: this host's NUMA nodes are 0-1$`)
		seen(t, m, `hyperroot: error: vm greedy: .*cpu max 800% is more than the appliance's 2 CPUs \(200%\)$`)
		seen(t, m, `hyperroot: error: vm offcpu: .*pin: CPU 7 is not one of the appliance's 2 CPUs$`)
		// Huge pages reserved per host node, and taken from the node a VM
		// is bound to: 48 of node 1's 64 for hugebound; hugeshort's 32
		// on node 0 are more than its 16, though the host has 32 free
		// in all even once hugebound has its own.
		if l := expect(t, m, `hyperroot: (error: )?hugepages: `); !strings.HasSuffix(l, "hyperroot: hugepages: 2M total=80 free=80 node0=16/16 node1=64/64") {
			t.Errorf("reserving 16 and 64 pages of 2M on nodes 0 and 1: %s", l)
		}
		seen(t, m, `hyperroot: error: vm hugeshort: hugepages: 64M of RAM bound to host node 0 needs 32 pages of 2M, 16 free there \(of 16 reserved on it`)
		seen(t, m, `^hugebound\| guest: action echo`)
		fmt.Fprintln(pw, "hugepages")
		expect(t, m, `hyperroot: hugepages: 2M total=80 free=32 node0=16/16 node1=16/64$`)
		// The topology the guest kernel found, from the SRAT, and its
		// distances, from the SLIT: the host's 21 between its nodes (not
		// the default 20), since the guest's nodes live on both.
		mem := map[string]uint64{}
		for _, node := range []struct{ name, dist string }{{"node0 cpus=0", "10,21"}, {"node1 cpus=1", "21,10"}} {
			l := seen(t, m, `^vnuma\| guest: numa `+node.name+` memtotal_kb=\d+ distance=\S*$`)
			g := regexp.MustCompile(`memtotal_kb=(\d+) distance=(\S*)$`).FindStringSubmatch(l)
			kb, _ := strconv.ParseUint(g[1], 10, 64)
			mem[node.name[:5]] = kb
			if g[2] != node.dist {
				t.Errorf("guest %s: distances %s, want %s (the host's)", node.name[:5], g[2], node.dist)
			}
		}
		seen(t, m, `^vnuma\| guest: numa nodes=2$`)
		// MemTotal counts what the kernel manages: a node's RAM less what
		// firmware areas and the kernel itself took.
		if mem["node0"] < 32<<10 || mem["node0"] > 96<<10 || mem["node1"] < 120<<10 || mem["node1"] > 160<<10 {
			t.Errorf("guest nodes' MemTotal %v KiB, want about 96 MiB and 160 MiB", mem)
		}
		seen(t, m, `^bound\| guest: action echo`)
		fmt.Fprintln(pw, "qos bound")
		l := expect(t, m, `hyperroot: qos bound cpu\.usage=`)
		pages := regexp.MustCompile(`\bram-nodes((?: N\d+=\d+)+)`).FindStringSubmatch(l)
		if pages == nil || strings.Contains(pages[1], "N0=") || !strings.Contains(pages[1], "N1=") || !strings.HasSuffix(l, " ram-policy=bind:1") {
			t.Errorf("bound VM's guest RAM not all on node 1: %s", l)
		}
		if !regexp.MustCompile(`\baffinity other=1 vcpu0=1\b`).MatchString(l) {
			t.Errorf("bound VM's threads not on node 1's CPU: %s", l)
		}
		// The guest's node 0 (96 MiB) on host node 1, its node 1 (160
		// MiB) on host node 0: the pages touched so far on each host
		// node, at most what the guest node there holds (4 KiB pages).
		fmt.Fprintln(pw, "qos vnuma")
		l = expect(t, m, `hyperroot: qos vnuma cpu\.usage=`)
		nodes := regexp.MustCompile(`\bram-nodes N0=(\d+) N1=(\d+) ram-policy=bind:1,bind:0$`).FindStringSubmatch(l)
		if nodes == nil {
			t.Fatalf("guest RAM of the vNUMA VM not on both host nodes: %s", l)
		}
		// Each guest node's vCPU runs on its host node's CPU: vCPU 0
		// (guest node 0) on host node 1's CPU 1, vCPU 1 on CPU 0.
		if !regexp.MustCompile(`\baffinity .*\bvcpu0=1\b`).MatchString(l) || !regexp.MustCompile(`\baffinity .*\bvcpu1=0\b`).MatchString(l) {
			t.Errorf("vNUMA VM's vCPU threads not on their host nodes' CPUs: %s", l)
		}
		n0, _ := strconv.Atoi(nodes[1])
		n1, _ := strconv.Atoi(nodes[2])
		if n0 > 160<<8 || n1 > 96<<8 || n0 == 0 || n1 == 0 {
			t.Errorf("host node 0 holds %d pages (guest node 1: 160 MiB), host node 1 %d (guest node 0: 96 MiB): %s", n0, n1, l)
		}
		fmt.Fprintln(pw, "@vnuma poweroff")
		fmt.Fprintln(pw, "@bound poweroff")
		fmt.Fprintln(pw, "@hugebound poweroff")
		r := m.Wait()
		if !r.PowerOff {
			t.Fatalf("no clean power-off: %+v", r)
		}
		wantLines(t, r.Lines, "hyperroot: vm vnuma exited code=0 reason=poweroff", "hyperroot: vm bound exited code=0 reason=poweroff",
			"hyperroot: vm hugebound exited code=0 reason=poweroff")
	})
}
