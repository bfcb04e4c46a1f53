package config

import (
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/internal/idlist"
)

// NUMA is where a VM's memory lives on a host with several NUMA nodes,
// and what NUMA topology its guest sees.
type NUMA struct {
	// Node, when not nil, binds all of the VM's RAM to that host node,
	// and its threads to the node's CPUs (its cgroup's cpuset): the
	// guest sees no NUMA topology.
	Node *int
	// Nodes, when not empty, gives the guest a NUMA topology of its own
	// (virtual NUMA): node i holds Nodes[i]'s vCPUs and RAM, the RAM
	// allocated on its host node when one is named.
	Nodes []VNode
}

// VNode is one node of a guest's NUMA topology.
type VNode struct {
	CPUs     []int // vCPU numbers
	Memory   Size
	HostNode *int // nil: wherever the host allocates
}

// MaxHostNode bounds a host NUMA node number (the kernel's limit on
// x86-64 is 1024 nodes).
const MaxHostNode = 1023

// maxVNodes bounds a guest's NUMA nodes.
const maxVNodes = 64

// HostNodes are the host nodes n names, in order, once each.
func (n NUMA) HostNodes() []int {
	var all []int
	add := func(h *int) {
		if h != nil && !slices.Contains(all, *h) {
			all = append(all, *h)
		}
	}
	add(n.Node)
	for _, v := range n.Nodes {
		add(v.HostNode)
	}
	return all
}

func (d *decoder) numa(n *yaml.Node) NUMA {
	var u NUMA
	d.mapping(n, map[string]func(*yaml.Node){
		"node": func(v *yaml.Node) { u.Node = d.hostNode(v) },
		"nodes": func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) {
				var vn VNode
				d.mapping(item, map[string]func(*yaml.Node){
					"cpus":      func(c *yaml.Node) { vn.CPUs = d.cpuRanges(c) },
					"memory":    d.sizeAtLeast("memory", 2<<20, "", &vn.Memory),
					"host_node": func(h *yaml.Node) { vn.HostNode = d.hostNode(h) },
				})
				if item.Kind == yaml.MappingNode && (len(vn.CPUs) == 0 || vn.Memory == 0) {
					d.errf(item, "numa node: cpus and memory are required")
				}
				u.Nodes = append(u.Nodes, vn)
			})
			if len(u.Nodes) > maxVNodes {
				d.errf(v, "numa: %d nodes, want at most %d", len(u.Nodes), maxVNodes)
			}
		},
	})
	if u.Node != nil && len(u.Nodes) > 0 {
		d.errf(n, "numa: node binds the whole VM, nodes gives its guest a topology: give one of them")
	}
	return u
}

func (d *decoder) hostNode(v *yaml.Node) *int {
	h, ok := d.integer(v)
	if !ok {
		return nil
	}
	if h < 0 || h > MaxHostNode {
		d.errf(v, "host node %d: want 0 to %d", h, MaxHostNode)
		return nil
	}
	return &h
}

// cpuRanges reads vCPU numbers as "0-1,4" or a single number.
func (d *decoder) cpuRanges(v *yaml.Node) []int {
	cpus, err := idlist.Parse(d.str(v), MaxVCPUs)
	if err != nil {
		if v.Kind == yaml.ScalarNode {
			d.errf(v, "cpus %q: want vCPU numbers such as 0-1,4", v.Value)
		}
		return nil
	}
	return cpus
}

// checkNUMA checks a VM's virtual NUMA nodes against its vCPUs and RAM:
// every vCPU on exactly one node, the nodes' memory adding up to the VM's,
// each a multiple of its page size.
func (d *decoder) checkNUMA(n *yaml.Node, vm VM) {
	if len(vm.NUMA.Nodes) == 0 {
		return
	}
	page := Size(4 << 10)
	if vm.HugePages != 0 {
		page = vm.HugePages
	}
	seen := map[int]int{}
	var total Size
	for i, vn := range vm.NUMA.Nodes {
		for _, c := range vn.CPUs {
			if c >= vm.CPUs {
				d.errf(n, "numa node %d: vCPU %d, but the VM has %d", i, c, vm.CPUs)
			} else if j, ok := seen[c]; ok {
				d.errf(n, "numa: vCPU %d is on nodes %d and %d", c, j, i)
			}
			seen[c] = i
		}
		if vn.Memory%page != 0 {
			d.errf(n, "numa node %d: memory %s is not a multiple of the %s page size", i, vn.Memory, page)
		}
		total += vn.Memory
	}
	for c := 0; c < vm.CPUs; c++ {
		if _, ok := seen[c]; !ok {
			d.errf(n, "numa: vCPU %d is on no node", c)
			break
		}
	}
	if total != vm.Memory {
		d.errf(n, "numa: the nodes' memory adds up to %s, the VM has %s", total, vm.Memory)
	}
}
