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
			size := func(key string, dst *Size) func(*yaml.Node) {
				return func(v *yaml.Node) {
					s, err := ParseSize(d.str(v))
					switch {
					case v.Kind != yaml.ScalarNode:
					case err != nil:
						d.errf(v, "%s: %v", key, err)
					case s < 16<<20:
						d.errf(v, "%s %s: want at least 16M (leave it out for no limit)", key, s)
					default:
						*dst = s
					}
				}
			}
			d.mapping(v, map[string]func(*yaml.Node){
				"max":  size("max", &q.Memory.Max),
				"high": size("high", &q.Memory.High),
			})
			if q.Memory.Max != 0 && q.Memory.High > q.Memory.Max {
				d.errf(v, "memory: high %s is above max %s", q.Memory.High, q.Memory.Max)
			}
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
