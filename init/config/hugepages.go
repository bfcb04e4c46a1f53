package config

import (
	"go.yaml.in/yaml/v3"
)

// Huge page sizes a configuration may name (x86-64's).
const (
	Huge2M Size = 2 << 20
	Huge1G Size = 1 << 30
)

// hugePageSize reads "2M" or "1G".
func (d *decoder) hugePageSize(v *yaml.Node) Size {
	s, err := ParseSize(d.str(v))
	if v.Kind == yaml.ScalarNode && (err != nil || (s != Huge2M && s != Huge1G)) {
		d.errf(v, "huge page size %q: want 2M or 1G", v.Value)
		return 0
	}
	return s
}

// HugePool is what the appliance reserves of one huge page size.
type HugePool struct {
	// Pages is how many pages in all.
	Pages int
	// Nodes, when not nil, is how many of them on each host NUMA node
	// (Pages is their sum); nil leaves the spreading to the kernel, which
	// deals them round-robin over the nodes that have memory. A VM bound
	// to a node (numa:) takes its pages from that node only.
	Nodes map[int]int
}

// hugePages decodes the top-level hugepages mapping: how many pages of
// each size the appliance reserves at boot, for the VMs whose RAM is
// backed by them, in all or per host NUMA node
// ("hugepages: { 2M: 1024, 1G: { 0: 1, 1: 1 } }").
func (d *decoder) hugePages(n *yaml.Node) map[Size]HugePool {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "want a mapping (key: value), found %s", kind(n))
		return nil
	}
	m := map[Size]HugePool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		size := d.hugePageSize(k)
		if size == 0 {
			continue
		}
		if _, dup := m[size]; dup {
			d.errf(k, "huge page size %s given twice", size)
		}
		if v.Kind != yaml.MappingNode {
			if c, ok := d.pageCount(v); ok {
				m[size] = HugePool{Pages: c}
			}
			continue
		}
		p := HugePool{Nodes: map[int]int{}}
		for j := 0; j+1 < len(v.Content); j += 2 {
			h := d.hostNode(v.Content[j])
			if h == nil {
				continue
			}
			if _, dup := p.Nodes[*h]; dup {
				d.errf(v.Content[j], "%s pages: host node %d given twice", size, *h)
			}
			if c, ok := d.pageCount(v.Content[j+1]); ok {
				p.Nodes[*h] = c
				p.Pages += c
			}
		}
		m[size] = p
	}
	return m
}

// pageCount reads a number of huge pages.
func (d *decoder) pageCount(v *yaml.Node) (int, bool) {
	c, ok := d.integer(v)
	if ok && c < 0 {
		d.errf(v, "%d pages: want 0 or more", c)
		return 0, false
	}
	return c, ok
}
