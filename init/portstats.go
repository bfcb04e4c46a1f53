package main

import (
	"maps"
	"strconv"
	"strings"
	"sync"

	"github.com/hyperroot/hyperroot/net/vswitch"
)

// The switch sends each port's counters with every heartbeat, as a line
// "stats port <name> rx=<p>/<b> tx=<p>/<b> [<reason>=<n>...] [cutoffs=<n>]"
// (portReport); PID 1 keeps the last of each port for /metrics. The
// switch runs jailed and may have been taken over by a guest, so its lines
// are parsed as hostile input: a line that does not parse is dropped, and
// the number of ports kept is bounded.

// maxStatsPorts bounds the ports PID 1 keeps counters of: far above any
// configuration's (each is a VM NIC, the host port or an uplink).
const maxStatsPorts = 4096

// portStats holds the switch's latest counters by port name.
type portStats struct {
	mu    sync.Mutex
	ports map[string]vswitch.Counters
}

// update takes one stats line (without statsPrefix).
func (s *portStats) update(line string) {
	name, c, ok := parsePortReport(line)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports == nil {
		s.ports = map[string]vswitch.Counters{}
	}
	if _, known := s.ports[name]; known || len(s.ports) < maxStatsPorts {
		s.ports[name] = c
	}
}

// forget drops a port the switch no longer has (its VM was removed).
func (s *portStats) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ports, name)
}

// snapshot returns a copy of the counters by port.
func (s *portStats) snapshot() map[string]vswitch.Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.ports)
}

// parsePortReport reads a portReport line back.
func parsePortReport(line string) (name string, c vswitch.Counters, ok bool) {
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "port" || len(f[1]) > 64 {
		return "", c, false
	}
	name = f[1]
	pair := func(kv, key string) (a, b uint64, ok bool) {
		v, found := strings.CutPrefix(kv, key+"=")
		x, y, found2 := strings.Cut(v, "/")
		if !found || !found2 {
			return 0, 0, false
		}
		a, err1 := strconv.ParseUint(x, 10, 64)
		b, err2 := strconv.ParseUint(y, 10, 64)
		return a, b, err1 == nil && err2 == nil
	}
	var ok1, ok2 bool
	c.RxPackets, c.RxBytes, ok1 = pair(f[2], "rx")
	c.TxPackets, c.TxBytes, ok2 = pair(f[3], "tx")
	if !ok1 || !ok2 {
		return "", c, false
	}
	for _, kv := range f[4:] {
		k, v, found := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if !found || err != nil {
			return "", c, false
		}
		switch k {
		case "cutoffs":
			c.CutOffs = n
			continue
		case "queued":
			c.RxQueued = n
			continue
		}
		r := dropReason(k)
		if r < 0 {
			return "", c, false
		}
		c.Drops[r] = n
	}
	return name, c, true
}

// dropReason is the reason of that name, or -1.
func dropReason(name string) vswitch.DropReason {
	for r := range vswitch.NumDropReasons {
		if r.String() == name {
			return r
		}
	}
	return -1
}
