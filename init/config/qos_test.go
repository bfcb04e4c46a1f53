package config

import (
	"fmt"
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
  - {name: b, kernel: /k}
`))
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.VMs[0].QoS
	if q.CPU.Weight != 300 || q.CPU.Max != 150 || q.Memory.Max != 1200<<20 || q.Memory.High != 1100<<20 || q.Pids != 256 {
		t.Errorf("qos = %+v", q)
	}
	if q := cfg.VMs[1].QoS; q != (QoS{}) {
		t.Errorf("a VM without qos got %+v, want the zero value (no limits)", q)
	}
}

func TestParseQoSErrors(t *testing.T) {
	for _, tc := range []struct{ name, qos, want string }{
		{"unknown key", "{cpus: 2}", `unknown key "cpus" (known: cpu, memory, pids)`},
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
			if !strings.Contains(err.Error(), "c.yaml:2:") {
				t.Errorf("error %v does not say where", err)
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
