package main

import (
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
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
