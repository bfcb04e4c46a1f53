package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/hyperroot/hyperroot/init/config"
)

// nodeDir is where the kernel lists the host's NUMA nodes.
var nodeDir = "/sys/devices/system/node"

// checkNUMA says why a VM's NUMA placement cannot be had on this host: a
// host node it names that the host lacks.
func checkNUMA(vm config.VM) error {
	for _, h := range vm.NUMA.HostNodes() {
		if _, err := os.Stat(filepath.Join(nodeDir, "node"+strconv.Itoa(h))); err != nil {
			online, _ := os.ReadFile(filepath.Join(nodeDir, "online"))
			have := strings.TrimSpace(string(online))
			if have == "" {
				have = "none listed"
			}
			return fmt.Errorf("numa: host node %d: this host's NUMA nodes are %s", h, have)
		}
	}
	return nil
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
