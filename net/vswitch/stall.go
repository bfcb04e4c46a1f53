package vswitch

import (
	"sync/atomic"
	"time"
)

// busyWatch counts entries into and exits from a port's delivery critical
// section (a virtio port's receive lock, a frame port's write): two
// uncontended atomic adds per batch, and enough for Stalled to tell a
// delivery that never ends from a busy port.
type busyWatch struct {
	in, out atomic.Uint64
	// Stalled's previous sample; guarded by Switch.stallMu.
	lastIn   uint64
	lastBusy bool
}

func (w *busyWatch) enter() { w.in.Add(1) }
func (w *busyWatch) exit()  { w.out.Add(1) }

// Stalled is a cheap liveness probe for a supervisor. Called every few
// seconds, it returns the ports into which one and the same delivery has
// been in progress since the previous call: a sender stuck in a port
// (a receive lock never released, a frame port whose write never returns)
// stalls every other port forwarding to it, while the process looks
// alive. A supervisor can restart the switch when a port stays stalled
// (the VMMs reconnect and replay their rings). The first call only takes
// a sample.
func (s *Switch) Stalled() []string {
	s.mu.Lock()
	ports := append([]*Port(nil), s.ports...)
	s.mu.Unlock()
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	var out []string
	for _, p := range ports {
		w := &p.busy
		o := w.out.Load() // before in: out <= in
		in := w.in.Load()
		busy := in != o
		if busy && w.lastBusy && in == w.lastIn {
			out = append(out, p.name)
		}
		w.lastIn, w.lastBusy = in, busy
	}
	return out
}

// Watch probes the switch with Stalled every interval until stop is closed,
// and calls stuck (once, and returns) with the ports in which one delivery
// stayed in progress for rounds probes in a row: a switch that looks alive
// but no longer forwards. A probe that does not return within an interval
// (the switch's port table held by a stuck goroutine) counts as stalled,
// as port "(switch)". The switch process exits on it, so that its
// supervisor restarts it like a dead one (the VMMs reconnect and replay
// their rings). After each probe that found nothing stalled Watch calls
// healthy (if not nil): the heartbeat a supervisor outside the process
// watches for, which catches what no probe inside it can (a process
// stopped, or starved of its threads).
func (s *Switch) Watch(stop <-chan struct{}, interval time.Duration, rounds int, stuck func(ports []string), healthy func()) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	streak := map[string]int{}
	probe := make(chan []string, 1)
	pending := false // a probe still running: its answer comes on probe
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		var stalled []string
		if !pending {
			go func() { probe <- s.Stalled() }()
			pending = true
		}
		select {
		case stalled = <-probe:
			pending = false
		case <-time.After(interval):
			stalled = []string{"(switch)"}
		case <-stop:
			return
		}
		next := map[string]int{}
		var out []string
		for _, name := range stalled {
			next[name] = streak[name] + 1
			if next[name] >= rounds {
				out = append(out, name)
			}
		}
		streak = next
		if len(out) > 0 {
			stuck(out)
			return
		}
		if len(stalled) == 0 && healthy != nil {
			healthy()
		}
	}
}
