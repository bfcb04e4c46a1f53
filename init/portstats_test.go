package main

import (
	"fmt"
	"testing"

	"github.com/hyperroot/hyperroot/net/vswitch"
)

func TestParsePortReport(t *testing.T) {
	name, c, ok := parsePortReport("port web.0 rx=2/684 tx=3/584 spoofed_ip=1 rate_limit=7 cutoffs=2 queued=9")
	if !ok || name != "web.0" || c.RxPackets != 2 || c.RxBytes != 684 || c.TxPackets != 3 || c.TxBytes != 584 ||
		c.Drops[vswitch.DropSpoofedIP] != 1 || c.Drops[vswitch.DropRateLimit] != 7 || c.CutOffs != 2 || c.RxQueued != 9 {
		t.Errorf("got %q %+v %v", name, c, ok)
	}
	for _, bad := range []string{
		"", "port", "port a rx=1/2", "port a rx=1 tx=1/2", "port a rx=1/2 tx=x/2",
		"port a rx=1/2 tx=1/2 surprise=1", "port a rx=1/2 tx=1/2 no_buffer=-1", "lease a rx=1/2 tx=1/2",
		"port a rx=1/2 tx=1/2 no_buffer", "port a rx=18446744073709551616/0 tx=0/0",
	} {
		if _, _, ok := parsePortReport(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestPortStatsBounded: a switch cannot make PID 1 keep unbounded ports.
func TestPortStatsBounded(t *testing.T) {
	var s portStats
	for i := range maxStatsPorts + 10 {
		s.update(fmt.Sprintf("port p%d rx=1/1 tx=1/1", i))
	}
	s.update("port p0 rx=5/5 tx=1/1")
	got := s.snapshot()
	if len(got) != maxStatsPorts || got["p0"].RxPackets != 5 {
		t.Errorf("%d ports kept, p0 %+v", len(got), got["p0"])
	}
}

func FuzzParsePortReport(f *testing.F) {
	f.Add("port web.0 rx=2/684 tx=3/584 spoofed_ip=1 cutoffs=2")
	f.Add("port host rx=0/0 tx=0/0")
	f.Fuzz(func(t *testing.T, line string) {
		name, c, ok := parsePortReport(line)
		if !ok {
			return
		}
		// What parsed, printed as the switch prints it, parses the same.
		again := formatPortReport(name, c)
		if name2, c2, ok := parsePortReport(again); !ok || name2 != name || c2 != c {
			t.Errorf("%q -> %q does not parse back: %q %+v", line, again, name2, c2)
		}
	})
}
