package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseQoS(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`vms:
  - name: a
    kernel: /k
    qos:
      cpu: {weight: 300, max: 150%}
      memory: {max: 1200M, high: 1100M}
      pids: 256
      io: [{device: /dev/vda, riops: 500, wiops: 400, rbps: 20M, wbps: 10M, weight: 200}, {device: /dev/vdb, riops: 30}]
  - {name: b, kernel: /k}
`))
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.VMs[0].QoS
	if q.CPU.Weight != 300 || q.CPU.Max != 150 || q.Memory.Max != 1200<<20 || q.Memory.High != 1100<<20 || q.Pids != 256 {
		t.Errorf("qos = %+v", q)
	}
	if got, want := fmt.Sprint(q.IO), "[{/dev/vda 500 400 20M 10M 200} {/dev/vdb 30 0 0 0 0}]"; got != want {
		t.Errorf("qos io = %s, want %s", got, want)
	}
	if q := cfg.VMs[1].QoS; fmt.Sprint(q) != fmt.Sprint(QoS{}) {
		t.Errorf("a VM without qos got %+v, want the zero value (no limits)", q)
	}
}

func TestParseQoSErrors(t *testing.T) {
	for _, tc := range []struct{ name, qos, want string }{
		{"unknown key", "{cpus: 2}", `unknown key "cpus" (known: cpu, io, memory, pids)`},
		{"io not a list", "{io: {device: /dev/vda}}", "want a list"},
		{"io no device", "{io: [{riops: 5}]}", "io: each entry needs the device it limits"},
		{"io relative device", "{io: [{device: vda, riops: 5}]}", `path "vda": want an absolute path`},
		{"io twice", "{io: [{device: /dev/vda}, {device: /dev/vda}]}", "device /dev/vda listed twice"},
		{"io zero iops", "{io: [{device: /dev/vda, riops: 0}]}", "riops 0: want a positive number"},
		{"io tiny bps", "{io: [{device: /dev/vda, wbps: 1K}]}", "wbps 1K: want at least 4K"},
		{"io weight", "{io: [{device: /dev/vda, weight: 0}]}", "weight 0: want 1 to 10000"},
		{"io unknown key", "{io: [{device: /dev/vda, iops: 5}]}", `unknown key "iops" (known: device, rbps, riops, wbps, weight, wiops)`},
		{"unknown cpu key", "{cpu: {shares: 2}}", `unknown key "shares" (known: max, weight)`},
		{"weight zero", "{cpu: {weight: 0}}", "weight 0: want 1 to 10000"},
		{"weight high", "{cpu: {weight: 10001}}", "weight 10001: want 1 to 10000"},
		{"max without percent", "{cpu: {max: 1.5}}", `max "1.5": want a percentage of one CPU`},
		{"max zero", "{cpu: {max: 0%}}", "max 0%: want 1% to"},
		{"memory bad size", "{memory: {max: lots}}", `max: size "lots"`},
		{"memory tiny", "{memory: {max: 1M}}", "max 1M: want at least 16M"},
		{"high over max", "{memory: {max: 100M, high: 200M}}", "high 200M is above max 100M"},
		{"pids few", "{pids: 3}", "pids 3: want at least 16"},
		{"not a mapping", "150%", "want a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte("vms:\n  - {name: a, kernel: /k, qos: "+tc.qos+"}\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "c.yaml:2:") || !strings.Contains(err.Error(), ": vm a: ") {
				t.Errorf("error %v does not say where (line and VM)", err)
			}
		})
	}
}

func TestParsePin(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("vms:\n  - {name: a, kernel: /k, cpus: 2, pin: {vcpus: [2, 3], emulator: [0, 2]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.VMs[0].Pin
	if fmt.Sprint(p.VCPUs, p.Emulator, p.CPUs()) != "[2 3] [0 2] [2 3 0]" {
		t.Errorf("pin = %+v, CPUs %v", p, p.CPUs())
	}
	for _, tc := range []struct{ pin, want string }{
		{"{vcpus: [-1]}", "cpu -1: want 0 to 8191"},
		{"{vcpus: []}", "want at least one CPU"},
		{"{cores: [1]}", `unknown key "cores" (known: emulator, vcpus)`},
		{"{vcpus: 1}", "want a list"},
	} {
		_, err := Parse("c.yaml", []byte("vms:\n  - {name: a, kernel: /k, pin: "+tc.pin+"}\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pin %s: error %v, want %q", tc.pin, err, tc.want)
		}
	}
}

func TestParseHugePages(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("hugepages: {2M: 64, 1G: {0: 1, 3: 2}}\nvms:\n  - {name: a, kernel: /k, memory: 128M, hugepages: 2M}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[Size]HugePool{Huge2M: {Pages: 64}, Huge1G: {Pages: 3, Nodes: map[int]int{0: 1, 3: 2}}}
	if !reflect.DeepEqual(cfg.HugePages, want) || cfg.VMs[0].HugePages != Huge2M {
		t.Errorf("hugepages %v, want %v; VM's %v", cfg.HugePages, want, cfg.VMs[0].HugePages)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"hugepages: {4M: 1}\n", `huge page size "4M": want 2M or 1G`},
		{"hugepages: {2M: -1}\n", "-1 pages: want 0 or more"},
		{"hugepages: {2M: 1, 2048K: 2}\n", "huge page size 2M given twice"},
		{"hugepages: [2M]\n", "want a mapping"},
		{"hugepages: {2M: {0: 1, 0: 2}}\n", "2M pages: host node 0 given twice"},
		{"hugepages: {2M: {1024: 1}}\n", "host node 1024: want 0 to 1023"},
		{"hugepages: {2M: {0: -4}}\n", "-4 pages: want 0 or more"},
		{"hugepages: {2M: {0: [1]}}\n", "c.yaml:1:21: want a value, found a list"},
		{"vms:\n  - {name: a, kernel: /k, memory: 1025M, hugepages: 2M}\n", "hugepages 2M: memory 1025M is not a multiple of the page size"},
		{"vms:\n  - {name: a, kernel: /k, hugepages: 64K}\n", `huge page size "64K": want 2M or 1G`},
	} {
		if _, err := Parse("c.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
