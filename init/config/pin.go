package config

import "go.yaml.in/yaml/v3"

// Pin places a VM's threads on host CPUs:
//
//	pin: { vcpus: [2, 3], emulator: [0] }
//
// vCPU i runs on VCPUs[i] (the list wraps around when shorter than the
// vCPUs); the VMM's other threads (device emulation, disk I/O, the Go
// runtime) run on Emulator. The VM's cgroup gets both sets as its cpuset.
// The CPUs are checked against the appliance's at start.
type Pin struct {
	VCPUs    []int
	Emulator []int
}

// MaxHostCPU bounds the CPU numbers a configuration may name.
const MaxHostCPU = 8191

func (d *decoder) pin(n *yaml.Node) Pin {
	var p Pin
	cpus := func(dst *[]int) func(*yaml.Node) {
		return func(v *yaml.Node) {
			d.sequence(v, func(item *yaml.Node) {
				if c, ok := d.integer(item); ok && (c < 0 || c > MaxHostCPU) {
					d.errf(item, "cpu %d: want 0 to %d", c, MaxHostCPU)
				} else if ok {
					*dst = append(*dst, c)
				}
			})
			if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
				d.errf(v, "want at least one CPU")
			}
		}
	}
	d.mapping(n, map[string]func(*yaml.Node){
		"vcpus":    cpus(&p.VCPUs),
		"emulator": cpus(&p.Emulator),
	})
	return p
}

// CPUs is every CPU p names, in order, once each.
func (p Pin) CPUs() []int {
	seen := map[int]bool{}
	var all []int
	for _, c := range append(append([]int(nil), p.VCPUs...), p.Emulator...) {
		if !seen[c] {
			seen[c] = true
			all = append(all, c)
		}
	}
	return all
}
