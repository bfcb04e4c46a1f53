package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseNUMA(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`vms:
  - {name: a, kernel: /k, cpus: 4, memory: 4G, numa: {nodes: [{cpus: 0-1, memory: 1G, host_node: 1}, {cpus: "2,3", memory: 3G}]}}
  - {name: b, kernel: /k, numa: {node: 0}}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.VMs[0].NUMA, cfg.VMs[1].NUMA
	if len(a.Nodes) != 2 || a.Nodes[0].Memory != 1<<30 || *a.Nodes[0].HostNode != 1 || a.Nodes[1].HostNode != nil ||
		fmt.Sprint(a.Nodes[0].CPUs) != "[0 1]" || fmt.Sprint(a.Nodes[1].CPUs) != "[2 3]" {
		t.Errorf("a: %+v", a)
	}
	if b.Node == nil || *b.Node != 0 || len(b.Nodes) != 0 {
		t.Errorf("b: %+v", b)
	}
	if got := a.HostNodes(); len(got) != 1 || got[0] != 1 {
		t.Errorf("host nodes %v", got)
	}
}

func TestNUMAErrors(t *testing.T) {
	vm := func(cpus, mem, numa string) string {
		return "vms:\n  - {name: v, kernel: /k, cpus: " + cpus + ", memory: " + mem + ", numa: " + numa + "}\n"
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"both", vm("2", "2G", "{node: 0, nodes: [{cpus: 0-1, memory: 2G}]}"), "give one of them"},
		{"vCPU twice", vm("2", "2G", "{nodes: [{cpus: 0-1, memory: 1G}, {cpus: 1, memory: 1G}]}"), "vCPU 1 is on nodes 0 and 1"},
		{"vCPU missing", vm("3", "2G", "{nodes: [{cpus: 0-1, memory: 1G}, {cpus: 1, memory: 1G}]}"), "vCPU 2 is on no node"},
		{"vCPU beyond", vm("2", "2G", "{nodes: [{cpus: 0-2, memory: 2G}]}"), "vCPU 2, but the VM has 2"},
		{"memory sum", vm("2", "2G", "{nodes: [{cpus: 0, memory: 1G}, {cpus: 1, memory: 512M}]}"), "adds up to 1536M, the VM has 2G"},
		{"bad cpus", vm("2", "2G", "{nodes: [{cpus: 1-0, memory: 2G}]}"), `cpus "1-0"`},
		{"host node", vm("1", "1G", "{node: 5000}"), "host node 5000: want 0 to 1023"},
		{"unknown key", vm("1", "1G", "{nodez: 1}"), "nodez"},
		{"required", vm("1", "1G", "{nodes: [{cpus: 0}]}"), "cpus and memory are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v, want %q", err, tc.want)
			}
		})
	}
}
