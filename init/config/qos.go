package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// QoS are a VM's resource controls, enforced by the kernel on the VM's
// cgroup (one per VM; see internal/cgroup). The zero value of each field
// means no limit (or the kernel's default share).
//
//	qos:
//	  cpu: { weight: 100, max: 150% }   # share against other VMs; at most 1.5 CPUs
//	  memory: { max: 1200M, high: 1100M }
//	  pids: 256
//	  io: [{ device: /dev/vda, riops: 500, wiops: 500, rbps: 20M, wbps: 20M, weight: 100 }]
type QoS struct {
	CPU struct {
		// Weight is the VM's share of CPU time against the other VMs
		// when CPUs are contended, 1-10000 (cgroup cpu.weight; the
		// kernel's default is 100).
		Weight int
		// Max is the most CPU time the VMM (vCPUs and device threads
		// together) may use, in per cent of one CPU: 150 is one and a
		// half CPUs. It is checked against the host's CPUs at start.
		Max int
	}
	Memory struct {
		// Max is the hard limit on the VMM's memory, guest RAM included:
		// past it the kernel's OOM killer ends the VMM (reason=oom).
		Max Size
		// High is where the kernel starts reclaiming from the VMM and
		// throttling its allocations.
		High Size
	}
	// Pids bounds the VMM's processes and threads (Go runtime threads
	// and one per vCPU included).
	Pids int
	// IO bounds what the VMM may read and write on block devices of the
	// appliance (cgroup io.max and io.weight), one entry per device.
	IO []IOLimit
}

// IsZero reports whether q sets no limit at all.
func (q QoS) IsZero() bool {
	return q.CPU.Weight == 0 && q.CPU.Max == 0 && q.Memory.Max == 0 && q.Memory.High == 0 && q.Pids == 0 && len(q.IO) == 0
}

// IOLimit bounds a VM's I/O on one block device of the appliance: its disk
// when the disk is a device, or the device under a disk image's file
// system. The kernel counts what reaches the device: a disk with
// `direct: true` (no page cache) is limited exactly; cached reads are not
// counted, writes are when they are written back. Zero means no limit.
type IOLimit struct {
	Device     string // absolute path of a block device (a partition means its disk)
	ReadIOPS   int    // riops
	WriteIOPS  int    // wiops
	ReadBytes  Size   // rbps: bytes per second
	WriteBytes Size   // wbps
	// Weight is the VM's share of the device against the other VMs when
	// it is contended, 1-10000 (io.weight; the kernel's iocost controller,
	// which PID 1 turns on for the device).
	Weight int
}

// qos decodes a VM's qos mapping.
func (d *decoder) qos(n *yaml.Node) QoS {
	var q QoS
	d.mapping(n, map[string]func(*yaml.Node){
		"cpu": func(v *yaml.Node) {
			d.mapping(v, map[string]func(*yaml.Node){
				"weight": func(v *yaml.Node) {
					if w, ok := d.integer(v); ok && (w < 1 || w > 10000) {
						d.errf(v, "weight %d: want 1 to 10000 (100 is the default share)", w)
					} else if ok {
						q.CPU.Weight = w
					}
				},
				"max": func(v *yaml.Node) {
					s := d.str(v)
					p, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
					switch {
					case v.Kind != yaml.ScalarNode:
					case !strings.HasSuffix(s, "%") || err != nil:
						d.errf(v, "max %q: want a percentage of one CPU, such as 50%% or 150%%", s)
					case p < 1 || p > MaxVCPUs*100:
						d.errf(v, "max %s: want 1%% to %d%%", s, MaxVCPUs*100)
					default:
						q.CPU.Max = p
					}
				},
			})
		},
		"memory": func(v *yaml.Node) {
			d.mapping(v, map[string]func(*yaml.Node){
				"max":  d.sizeAtLeast("max", 16<<20, "", &q.Memory.Max),
				"high": d.sizeAtLeast("high", 16<<20, "", &q.Memory.High),
			})
			if q.Memory.Max != 0 && q.Memory.High > q.Memory.Max {
				d.errf(v, "memory: high %s is above max %s", q.Memory.High, q.Memory.Max)
			}
		},
		"io": func(v *yaml.Node) {
			seen := map[string]bool{}
			d.sequence(v, func(item *yaml.Node) {
				l := d.ioLimit(item)
				if l.Device != "" && seen[l.Device] {
					d.errf(item, "io: device %s listed twice", l.Device)
				}
				seen[l.Device] = true
				q.IO = append(q.IO, l)
			})
		},
		"pids": func(v *yaml.Node) {
			if p, ok := d.integer(v); ok && p < 16 {
				d.errf(v, "pids %d: want at least 16 (the VMM's runtime needs threads of its own)", p)
			} else if ok {
				q.Pids = p
			}
		},
	})
	return q
}

// sizeAtLeast decodes a size into dst, refusing one below least; unit
// follows least in the error ("" or " bytes per second").
func (d *decoder) sizeAtLeast(key string, least Size, unit string, dst *Size) func(*yaml.Node) {
	return func(v *yaml.Node) {
		s, err := ParseSize(d.str(v))
		switch {
		case v.Kind != yaml.ScalarNode:
		case err != nil:
			d.errf(v, "%s: %v", key, err)
		case s < least:
			d.errf(v, "%s %s: want at least %s%s (leave it out for no limit)", key, s, least, unit)
		default:
			*dst = s
		}
	}
}

// ioLimit decodes one entry of a VM's qos io list.
func (d *decoder) ioLimit(n *yaml.Node) IOLimit {
	var l IOLimit
	ops := func(key string, dst *int) func(*yaml.Node) {
		return func(v *yaml.Node) {
			if x, ok := d.integer(v); ok && x < 1 {
				d.errf(v, "%s %d: want a positive number of requests per second (leave it out for no limit)", key, x)
			} else if ok {
				*dst = x
			}
		}
	}
	d.mapping(n, map[string]func(*yaml.Node){
		"device": func(v *yaml.Node) { l.Device = d.path(v) },
		"riops":  ops("riops", &l.ReadIOPS),
		"wiops":  ops("wiops", &l.WriteIOPS),
		"rbps":   d.sizeAtLeast("rbps", 4096, " bytes per second", &l.ReadBytes),
		"wbps":   d.sizeAtLeast("wbps", 4096, " bytes per second", &l.WriteBytes),
		"weight": func(v *yaml.Node) {
			if w, ok := d.integer(v); ok && (w < 1 || w > 10000) {
				d.errf(v, "weight %d: want 1 to 10000 (100 is the default share)", w)
			} else if ok {
				l.Weight = w
			}
		},
	})
	if n.Kind == yaml.MappingNode && l.Device == "" {
		d.errf(n, "io: each entry needs the device it limits")
	}
	return l
}

// ParseQoS reads a VM's qos as the configuration writes it (a YAML flow
// mapping such as "{cpu: {max: 50%}}"), for changing it while the VM runs.
// Errors name where as "<what>:line:column".
func ParseQoS(what, text string) (QoS, error) {
	d := &decoder{file: what}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text), &root); err != nil {
		return QoS{}, fmt.Errorf("%s: %w", what, err)
	}
	if len(root.Content) == 0 {
		return QoS{}, nil
	}
	q := d.qos(root.Content[0])
	return q, errors.Join(d.errs...)
}
