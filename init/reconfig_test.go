package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/child"
)

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Parse("c.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPlanConfig(t *testing.T) {
	cur := parse(t, `networks:
  - {name: lan, subnet: 10.20.0.0/24}
vms:
  - {name: same, kernel: /k}
  - {name: limited, kernel: /k, qos: {cpu: {max: 50%}}}
  - {name: bigger, kernel: /k}
  - {name: gone, kernel: /k}
  - {name: wired, kernel: /k, nics: [{network: lan}]}
  - {name: throttled, kernel: /k, nics: [{network: lan}, {network: lan, limits: {tx: 10M}}]}
  - {name: both, kernel: /k, nics: [{network: lan}]}
  - {name: rebuilt, kernel: /k, nics: [{network: lan}]}
`)
	next := parse(t, `networks:
  - {name: lan, subnet: 10.20.0.0/24}
vms:
  - {name: same, kernel: /k}
  - {name: limited, kernel: /k, qos: {cpu: {max: 20%}}}
  - {name: bigger, kernel: /k, memory: 512M}
  - {name: new, kernel: /k}
  - {name: wired, kernel: /k, nics: [{network: lan}]}
  - {name: throttled, kernel: /k, nics: [{network: lan}, {network: lan, limits: {tx: 20M, burst: 10ms}}]}
  - {name: both, kernel: /k, nics: [{network: lan, limits: {rx: 1M}}], qos: {cpu: {max: 50%}}}
  - {name: rebuilt, kernel: /k, memory: 512M, nics: [{network: lan, limits: {rx_pps: 100}}]}
`)
	p, err := planConfig(cur, next)
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][]string{"start": p.start, "stop": p.stop, "restart": p.restart, "qos": p.qos, "same": p.same, "nic limits": p.nicLimits} {
		want := map[string][]string{"start": {"new"}, "stop": {"gone"}, "restart": {"bigger", "rebuilt"}, "qos": {"limited", "both"},
			"same": {"same", "wired"}, "nic limits": {"throttled", "both", "rebuilt"}}[what]
		if !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
	for _, tc := range []struct{ name, next, want string }{
		{"networks", "networks: [{name: lan, subnet: 10.30.0.0/24}]\nvms: [{name: wired, kernel: /k, nics: [{network: lan}]}]\n", "networks: changed"},
		{"api", "networks: [{name: lan, subnet: 10.20.0.0/24}]\napi: {listen: \":8443\", tokens: [{name: a, sha256: " + strings.Repeat("ab", 32) + "}]}\nvms: []\n", "api: changed"},
	} {
		if _, err := planConfig(cur, parse(t, tc.next)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	// After a configuration that did not load (the zero one), a good
	// one is no jail change.
	if _, err := planConfig(newLiveConfig(&config.Config{}, "").cfg, parse(t, "vms: [{name: a, kernel: /k}]\n")); err != nil {
		t.Errorf("after a failed load: %v", err)
	}
	// Nothing and an empty list are the same.
	if _, err := planConfig(parse(t, "vms: []\n"), parse(t, "networks: []\nvms: []\n")); err != nil {
		t.Errorf("networks: [] against none: %v", err)
	}
}

// TestPlanConfigPorts: NICs are switch ports, added for a new VM, taken
// off for a removed one, and both for a VM whose NICs changed (which
// restarts).
func TestPlanConfigPorts(t *testing.T) {
	cur := parse(t, `networks:
  - {name: lan, subnet: 10.20.0.0/24}
vms:
  - {name: wired, kernel: /k, nics: [{network: lan}]}
  - {name: rewired, kernel: /k, nics: [{network: lan}]}
  - {name: unplugged, kernel: /k, nics: [{network: lan}]}
  - {name: gone, kernel: /k, nics: [{network: lan}]}
`)
	next := parse(t, `networks:
  - {name: lan, subnet: 10.20.0.0/24}
vms:
  - {name: wired, kernel: /k, nics: [{network: lan}]}
  - {name: rewired, kernel: /k, nics: [{network: lan, mac: "52:54:00:00:00:01"}]}
  - {name: unplugged, kernel: /k}
  - {name: more, kernel: /k, nics: [{network: lan}, {network: lan}]}
`)
	p, err := planConfig(cur, next)
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][]string{"start": p.start, "stop": p.stop, "restart": p.restart, "same": p.same, "drop": p.dropPorts, "add": p.addPorts} {
		want := map[string][]string{"start": {"more"}, "stop": {"gone"}, "restart": {"rewired", "unplugged"}, "same": {"wired"},
			"drop": {"rewired", "unplugged", "gone"}, "add": {"rewired", "more"}}[what]
		if !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
}

// TestConfigPut: a configuration put through the API over a fleet of fake
// VMMs: a dropped VM is stopped and forgotten, a changed one restarted, a
// new one started; one that changes what is made at boot is refused whole.
func TestConfigPut(t *testing.T) {
	fake(t, "serve")
	out := &syncBuffer{}
	c := newConsole(out)
	f := newFleet(c, child.Direct{}, false)
	f.unjailed = true
	text := "vms:\n  - {name: a, kernel: /k, restart: always}\n  - {name: b, kernel: /k, restart: always}\n"
	cfg := parse(t, text)
	f.Start(cfg.VMs)
	defer f.Stop()
	b := apiBackend{f: f, kvm: "test", live: newLiveConfig(cfg, "")}
	b.live.text = text
	if b.Config() != text {
		t.Errorf("config %q", b.Config())
	}
	vmB, _ := b.VM("b")
	next := "vms:\n  - {name: b, kernel: /k, restart: always, cmdline: console=ttyS0 quiet}\n  - {name: c, kernel: /k, restart: always}\n"
	r, err := b.PutConfig(next)
	if err != nil || r.String() != "started c stopped a restarted b" {
		t.Fatalf("put: %q, %v", r, err)
	}
	if vms := b.VMs(); len(vms) != 2 || vms[0].Name != "b" || vms[0].State != api.StateRunning || vms[0].PID == vmB.PID || vms[1].Name != "c" || vms[1].State != api.StateRunning {
		t.Errorf("after: %+v (b was pid %d)", vms, vmB.PID)
	}
	if b.Config() != next {
		t.Errorf("config after: %q", b.Config())
	}
	if _, err := b.PutConfig("vms: [\n"); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "config:") {
		t.Errorf("bad YAML: %v", err)
	}
	if _, err := b.PutConfig("networks: [{name: lan, subnet: 10.20.0.0/24}]\nvms: []\n"); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "networks: changed") {
		t.Errorf("networks: %v", err)
	}
	if vms := b.VMs(); len(vms) != 2 {
		t.Errorf("a refused config changed the VMs: %+v", vms)
	}
	c.Flush(5 * time.Second)
	waitFor(t, out, "hyperroot: vm a removed")
}

// TestCreateDeleteVM: a VM added through the API is in the configuration
// (whose comments stay) and runs; one deleted is gone from both; a name
// taken, or a VM that does not decode, changes nothing.
func TestCreateDeleteVM(t *testing.T) {
	fake(t, "serve")
	f := newFleet(newConsole(&syncBuffer{}), child.Direct{}, false)
	f.unjailed = true
	text := "# the fleet\nvms:\n  - {name: a, kernel: /k, restart: always} # the first\n"
	cfg := parse(t, text)
	f.Start(cfg.VMs)
	defer f.Stop()
	b := apiBackend{f: f, kvm: "test", live: &liveConfig{cfg: cfg, text: text}}
	vm, err := b.CreateVM(`{"name": "b", "kernel": "/k", "restart": "always"}`)
	if err != nil || vm.Name != "b" || vm.State != api.StateRunning {
		t.Fatalf("create: %+v, %v", vm, err)
	}
	got := b.Config()
	for _, want := range []string{"# the fleet", "# the first", "name: b"} {
		if !strings.Contains(got, want) {
			t.Errorf("config after create has no %q:\n%s", want, got)
		}
	}
	if _, err := b.CreateVM(`{"name": "b", "kernel": "/k"}`); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `duplicate VM name "b"`) {
		t.Errorf("create b again: %v", err)
	}
	if _, err := b.CreateVM(`[1]`); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("create of a list: %v", err)
	}
	if err := b.DeleteVM("a"); err != nil {
		t.Fatal(err)
	}
	if vms := b.VMs(); len(vms) != 1 || vms[0].Name != "b" {
		t.Errorf("after delete: %+v", vms)
	}
	if strings.Contains(b.Config(), "name: a") {
		t.Errorf("a still configured:\n%s", b.Config())
	}
	if err := b.DeleteVM("a"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("delete a again: %v", err)
	}
}
