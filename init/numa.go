package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/idlist"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// maxHostID bounds the host CPU and node numbers read from sysfs.
const maxHostID = 1 << 16

// nodeDir is where the kernel lists the host's NUMA nodes.
var nodeDir = "/sys/devices/system/node"

// checkNUMA says why a VM's NUMA placement cannot be had on this host: a
// host node it names that the host lacks.
func checkNUMA(vm config.VM) error {
	for _, h := range vm.NUMA.HostNodes() {
		if err := hostNodeExists(h); err != nil {
			return fmt.Errorf("numa: %w", err)
		}
	}
	return nil
}

// hostNodeExists says so when the host has no NUMA node h, naming those
// it has.
func hostNodeExists(h int) error {
	if _, err := os.Stat(hostNodePath(h)); err == nil {
		return nil
	}
	online, _ := os.ReadFile(filepath.Join(nodeDir, "online"))
	have := strings.TrimSpace(string(online))
	if have == "" {
		have = "none listed"
	}
	return fmt.Errorf("host node %d: this host's NUMA nodes are %s", h, have)
}

// hostNodePath is node h's directory in sysfs.
func hostNodePath(h int) string {
	return filepath.Join(nodeDir, "node"+strconv.Itoa(h))
}

// numaCPUSet is what the VM's cgroup's cpuset holds for its NUMA
// placement: the host nodes its RAM comes from (cpuset.mems, "" when it
// names none) and, for a VM bound to one node as a whole, that node's CPUs
// (cpuset.cpus; "" for a node without CPUs or a guest topology, whose
// vCPUs may run anywhere).
func numaCPUSet(u config.NUMA) (mems, cpus string, err error) {
	hosts := u.HostNodes()
	if len(hosts) == 0 {
		return "", "", nil
	}
	w := make([]string, len(hosts))
	for i, h := range hosts {
		w[i] = strconv.Itoa(h)
	}
	if u.Node != nil {
		b, err := os.ReadFile(filepath.Join(nodeDir, "node"+strconv.Itoa(*u.Node), "cpulist"))
		if err != nil {
			return "", "", fmt.Errorf("numa: host node %d: %w", *u.Node, err)
		}
		cpus = strings.TrimSpace(string(b))
	}
	return strings.Join(w, ","), cpus, nil
}

// placeVCPUs fills in, for each guest NUMA node of args that lives on a
// host node, the host CPUs its vCPU threads run on: that node's (none for
// a node without CPUs). A VM pinned with pin: vcpus keeps its pinning.
func placeVCPUs(args *vmmcli.Args) error {
	if len(args.PinVCPUs) > 0 {
		return nil
	}
	for i, n := range args.NUMANodes {
		if n.Host == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(nodeDir, "node"+strconv.Itoa(*n.Host), "cpulist"))
		if err != nil {
			return fmt.Errorf("numa: host node %d: %w", *n.Host, err)
		}
		list := strings.TrimSpace(string(b))
		if list == "" {
			continue // a node of memory alone
		}
		cpus, err := idlist.Parse(list, maxHostID)
		if err != nil {
			return fmt.Errorf("numa: host node %d: CPUs %q: %w", *n.Host, list, err)
		}
		args.NUMANodes[i].HostCPUs = cpus
	}
	return nil
}

// guestDistances is the SLIT of a VM's guest NUMA topology, row by row
// (vmmcli's --numa-distances), from the host's distances between the nodes
// its guest nodes live on (/sys/devices/system/node/node<n>/distance): a
// guest whose nodes sit on two sockets should see what the host sees
// between them. Two guest nodes on one host node, or one without a host
// node, are 11 (the least a SLIT allows between two nodes) and 20 (the
// default) apart. nil, the VMM's default, when no guest node names a host
// node.
func guestDistances(u config.NUMA) ([]int, error) {
	if len(u.HostNodes()) == 0 || len(u.Nodes) == 0 {
		return nil, nil
	}
	// A node's distance file lists its distance to each online node, in
	// the order of the online list (node numbers may have gaps).
	b, err := os.ReadFile(filepath.Join(nodeDir, "online"))
	if err != nil {
		return nil, fmt.Errorf("numa: %w", err)
	}
	online, err := idlist.Parse(strings.TrimSpace(string(b)), maxHostID)
	if err != nil {
		return nil, fmt.Errorf("numa: the host's online nodes %q: %w", b, err)
	}
	dist := map[[2]int]int{} // host node pair -> distance
	for _, h := range u.HostNodes() {
		b, err := os.ReadFile(filepath.Join(nodeDir, "node"+strconv.Itoa(h), "distance"))
		if err != nil {
			return nil, fmt.Errorf("numa: host node %d: %w", h, err)
		}
		f := strings.Fields(string(b))
		if len(f) != len(online) {
			return nil, fmt.Errorf("numa: host node %d: %d distances for %d online nodes", h, len(f), len(online))
		}
		for k, v := range f {
			d, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("numa: host node %d: distance %q", h, v)
			}
			dist[[2]int{h, online[k]}] = d
		}
	}
	n := len(u.Nodes)
	out := make([]int, 0, n*n)
	for i, a := range u.Nodes {
		for j, b := range u.Nodes {
			d := 20
			switch {
			case i == j:
				d = 10
			case a.HostNode == nil || b.HostNode == nil:
			case *a.HostNode == *b.HostNode:
				d = 11
			default:
				if hd, ok := dist[[2]int{*a.HostNode, *b.HostNode}]; ok {
					d = min(max(hd, 11), 254)
				}
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// guestRAMNodes reports where the kernel put the guest RAM of VMM pid, from
// its numa_maps: "ram-nodes N0=<pages> N1=<pages> ram-policy=bind:1,bind:0",
// the pages touched on each host node, summed over the memfd's mappings,
// and the mappings' policies in address order (a guest topology's nodes
// are separate mappings, each bound to its host node); "" when there is
// none to read, or all of it is on one node with no policy (a VM without
// numa: on a host of one node says nothing more than before).
func guestRAMNodes(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/numa_maps", pid))
	if err != nil {
		return ""
	}
	return parseRAMNodes(string(b))
}

// guestRAMFile is the guest RAM memfd's name in numa_maps (vmm/memory).
const guestRAMFile = "file=/memfd:hyperroot-guest-ram"

func parseRAMNodes(maps string) string {
	pages := map[int]uint64{}
	var policies []string
	for _, l := range strings.Split(maps, "\n") {
		if !strings.Contains(l, guestRAMFile) {
			continue
		}
		if f := strings.Fields(l); len(f) > 1 && (len(policies) == 0 || policies[len(policies)-1] != f[1]) {
			policies = append(policies, f[1])
		}
		for _, f := range strings.Fields(l) {
			k, v, ok := strings.Cut(f, "=")
			if !ok || len(k) < 2 || k[0] != 'N' {
				continue
			}
			node, err1 := strconv.Atoi(k[1:])
			n, err2 := strconv.ParseUint(v, 10, 64)
			if err1 == nil && err2 == nil {
				pages[node] += n
			}
		}
	}
	if len(pages) == 0 || len(pages) == 1 && len(policies) == 1 && policies[0] == "default" {
		return "" // nothing NUMA to tell: one node, no policy
	}
	nodes := make([]int, 0, len(pages))
	for n := range pages {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	w := []string{"ram-nodes"}
	for _, n := range nodes {
		w = append(w, fmt.Sprintf("N%d=%d", n, pages[n]))
	}
	return strings.Join(w, " ") + " ram-policy=" + strings.Join(policies, ",")
}
