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

// hugePages decodes the top-level hugepages mapping: how many pages of
// each size the appliance reserves at boot, for the VMs whose RAM is
// backed by them ("hugepages: { 2M: 1024, 1G: 2 }").
func (d *decoder) hugePages(n *yaml.Node) map[Size]int {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "want a mapping (key: value), found %s", kind(n))
		return nil
	}
	m := map[Size]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		size := d.hugePageSize(k)
		if size == 0 {
			continue
		}
		if _, dup := m[size]; dup {
			d.errf(k, "huge page size %s given twice", size)
		}
		if c, ok := d.integer(v); ok && c < 0 {
			d.errf(v, "%d pages: want 0 or more", c)
		} else if ok {
			m[size] = c
		}
	}
	return m
}
