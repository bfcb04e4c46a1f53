package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/net/vswitch"
)

func TestPortLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   config.NICLimits
		want vswitch.Limits
	}{
		{"none", config.NICLimits{}, vswitch.Limits{}},
		{"rates, default burst", config.NICLimits{RX: 100e6, TXPPS: 5000},
			vswitch.Limits{Rx: vswitch.Rate{BitsPerSecond: 100e6}, Tx: vswitch.Rate{PacketsPerSecond: 5000}}},
		{"burst as a duration", config.NICLimits{RX: 100e6, RXPPS: 1000, Burst: 100 * time.Millisecond},
			vswitch.Limits{Rx: vswitch.Rate{BitsPerSecond: 100e6, PacketsPerSecond: 1000, BurstBits: 10e6, BurstPackets: 100}}},
		{"burst never below a TSO frame", config.NICLimits{TX: 1e6, Burst: time.Millisecond},
			vswitch.Limits{Tx: vswitch.Rate{BitsPerSecond: 1e6, BurstBits: 8 * (64<<10 + 64)}}},
		{"at least one packet", config.NICLimits{TXPPS: 10, Burst: time.Millisecond},
			vswitch.Limits{Tx: vswitch.Rate{PacketsPerSecond: 10, BurstPackets: 1}}},
	} {
		if got := portLimits(tc.in); got != tc.want {
			t.Errorf("%s: portLimits(%+v) = %+v, want %+v", tc.name, tc.in, got, tc.want)
		}
	}
}

// TestPortPacing: a frontend connecting again and again is served, but
// paced (acceptRate) after its burst, and its connection lines stop after
// connLogBurst with the rest counted at Close.
func TestPortPacing(t *testing.T) {
	_, cfg := extConfig(t)
	dir := t.TempDir()
	var out logLines
	rs, err := startSwitch(cfg, dir, nil, out.logf)
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	burst, perSecond := int(acceptRate.Size), float64(acceptRate.Size)/acceptRate.RefillTime.Seconds()
	start := time.Now()
	for i := range n {
		fe, err := vhostuser.Dial(vmmcli.NICSocket(dir, "a", 0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fe.GetFeatures(); err != nil {
			t.Fatalf("connection %d not served: %v", i, err)
		}
		fe.Close()
	}
	// A lower bound only: a slow machine takes longer, never shorter.
	floor := time.Duration(float64(n-burst-1) / perSecond * float64(time.Second))
	if took := time.Since(start); took < floor {
		t.Errorf("%d connections served in %s: not paced (at least %s after a burst of %d)", n, took, floor, burst)
	}
	rs.Close()
	out.mu.Lock()
	defer out.mu.Unlock()
	shown := 0
	for _, l := range out.lines {
		if strings.HasPrefix(l, "port a.0 connected") || strings.HasPrefix(l, "port a.0 disconnected") {
			shown++
		}
	}
	if shown != connLogBurst {
		t.Errorf("%d connection lines shown for %d connections, want %d", shown, n, connLogBurst)
	}
	if !slices.ContainsFunc(out.lines, func(l string) bool { return strings.Contains(l, "connection lines not shown") }) {
		t.Errorf("no count of the lines left out:\n%s", strings.Join(out.lines, "\n"))
	}
}
