package main

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/metricstest"
)

// TestMetrics: /metrics in the text format, as Prometheus parses it: a
// VM's state, starts and exits move with its lifecycle, and the switch's
// port counters are the last its stats lines gave.
func TestMetrics(t *testing.T) {
	f, _, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop()
	waitFor(t, out, "t| ready networks=0 ports=0")
	sw := &netSwitch{}
	leases := []api.Lease{{Network: "lan", IP: "10.20.0.100"}, {Network: "lan", IP: "10.20.0.101"}, {Network: "dmz", IP: "10.30.0.100"}}
	h := metricsHandler(f, sw, func() ([]api.Lease, error) { return leases, nil })
	get := func() metricstest.Families {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
		}
		fams, err := metricstest.Parse(rec.Body)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		return fams
	}
	m := get()
	for name, want := range map[string]float64{
		"hyperroot_vm_running":                 1,
		"hyperroot_vm_starts_total":            1,
		"hyperroot_vm_vcpus":                   1,
		"hyperroot_vm_memory_configured_bytes": 128 << 20,
	} {
		if got := m.Value(name, "vm=t"); got != want {
			t.Errorf("%s{vm=t} = %v, want %v", name, got, want)
		}
	}
	if lan, dmz := m.Value("hyperroot_network_leases", "network=lan"), m.Value("hyperroot_network_leases", "network=dmz"); lan != 2 || dmz != 1 {
		t.Errorf("leases: lan %v, dmz %v; want 2 and 1", lan, dmz)
	}
	if m.Value("hyperroot_init_process_resident_memory_bytes") <= 0 {
		t.Error("no PID 1 process metrics")
	}
	if err := f.StopVM("t"); err != nil {
		t.Fatal(err)
	}
	sw.stats.update("port t.0 rx=10/6400 tx=12/7000 spoofed_mac=3")
	m = get()
	if got := m.Value("hyperroot_vm_running", "vm=t"); got != 0 {
		t.Errorf("running after stop = %v", got)
	}
	if exits := m.Sum("hyperroot_vm_exits_total"); exits != 1 {
		t.Errorf("exits after one stop = %v", exits)
	}
	// KVM's counts as a VMM reports them.
	st, ok := parseKVMStats(" exits=100 io_exits=30 mmio_exits=20 halt_exits=5 signal_exits=9 irq_injections=7")
	if !ok {
		t.Fatal("a VMM's stats line did not parse")
	}
	f.mu.Lock()
	e := f.vms["t"]
	f.mu.Unlock()
	e.mu.Lock()
	e.kvm = st
	e.mu.Unlock()
	m = get()
	for labels, want := range map[[2]string]float64{{"vm=t", "reason=io"}: 30, {"vm=t", "reason=mmio"}: 20, {"vm=t", "reason=halt"}: 5, {"vm=t", "reason=other"}: 45} {
		if got := m.Value("hyperroot_vm_kvm_exits_total", labels[0], labels[1]); got != want {
			t.Errorf("hyperroot_vm_kvm_exits_total%v = %v, want %v", labels, got, want)
		}
	}
	if got := m.Value("hyperroot_vm_kvm_events_total", "vm=t", "event=irq_injections"); got != 7 {
		t.Errorf("irq_injections = %v", got)
	}
	if got := m.Value("hyperroot_vm_kvm_events_total", "vm=t", "event=signal_exits"); got != 9 {
		t.Errorf("signal_exits = %v, want it among the events (not an exit reason)", got)
	}
	if ports := (apiBackend{f: f, sw: sw}).Ports(); len(ports) != 1 || ports[0].Name != "t.0" || ports[0].RxPackets != 10 ||
		ports[0].TxBytes != 7000 || len(ports[0].Drops) != 1 || ports[0].Drops["spoofed_mac"] != 3 {
		t.Errorf("ports: %+v", ports)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hyperroot_switch_port_packets_total", []string{"port=t.0", "dir=rx"}, 10},
		{"hyperroot_switch_port_bytes_total", []string{"port=t.0", "dir=tx"}, 7000},
		{"hyperroot_switch_port_drops_total", []string{"port=t.0", "reason=spoofed_mac"}, 3},
		{"hyperroot_switch_port_drops_total", []string{"port=t.0", "reason=rate_limit"}, 0},
	} {
		if got := m.Value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func TestParseIOStat(t *testing.T) {
	got := parseIOStat("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=x wios=5\n\n")
	if len(got) != 2 || got[0] != (ioDevice{"254:0", 4096, 8192, 1, 2}) || got[1] != (ioDevice{dev: "8:0", wios: 5}) {
		t.Errorf("got %+v", got)
	}
}

func TestParseKVMStats(t *testing.T) {
	for line, ok := range map[string]bool{
		" exits=1 io_exits=2":            true,
		"":                               true,
		" exits=1 exits=2":               false, // twice
		" exits=-1":                      false,
		" exits=1x":                      false,
		" cr3_loads=5":                   false, // not one of ours
		" exits":                         false,
		" exits=99999999999999999999999": false,
	} {
		if _, got := parseKVMStats(line); got != ok {
			t.Errorf("%q: parsed %v, want %v", line, got, ok)
		}
	}
}

func FuzzParseKVMStats(f *testing.F) {
	f.Add(" exits=100 io_exits=30 mmio_exits=20")
	f.Add(" halt_exits=1 halt_exits=1")
	f.Add(strings.Repeat(" exits=1", 100))
	f.Fuzz(func(t *testing.T, s string) {
		st, ok := parseKVMStats(s)
		if !ok {
			return
		}
		if len(st) > len(kvmReported) {
			t.Fatalf("%d counters from %q", len(st), s)
		}
		for name := range st {
			if !slices.Contains(kvmReported, name) {
				t.Fatalf("counter %q from %q", name, s)
			}
		}
	})
}
