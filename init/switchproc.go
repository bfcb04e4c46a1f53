package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// netSwitch supervises the `hyperroot switch` child process: started
// before the VMs, its output relayed as "switch| <line>", restarted at once
// whenever it dies (the VMs' NICs reconnect by themselves), stopped last
// at power-off so that its final counters reach the console.
type netSwitch struct {
	c   *console
	sup *child.Supervisor

	// The heartbeat (aliveLine) of the running switch: when the last
	// came, on a monotonic clock (since epoch), 0 until its first; hung
	// is set when the watchdog kills it for its silence, for the exit's
	// reason.
	epoch     time.Time
	lastAlive atomic.Int64
	hung      atomic.Bool
	stopWatch chan struct{}
	stopOnce  sync.Once

	// stats are the ports' counters the switch sent last, for /metrics.
	stats portStats
	// dir is the switch's directory, where its control socket is ("" is
	// switchDir).
	dir string
	// sockLabel is the SELinux context of the sockets PID 1 makes for
	// the switch to serve (its domain's), "" without SELinux.
	sockLabel string
}

// switchHungAfter is how long a switch that has sent its first heartbeat
// may go without another before PID 1 kills it as hung: six of its
// probes (watchEvery), far beyond a late timer on a loaded emulated
// machine, and within what a guest's TCP connection rides out (its
// retransmissions go on for minutes).
const switchHungAfter = 6 * watchEvery

// minSwitchHung is the shortest hung timeout the command line may set
// (hyperroot.switch.hung=): two heartbeats, so that one late timer is not
// taken for a hang.
const minSwitchHung = 2 * watchEvery

// switchStart is how the supervisor runs the switch.
type switchStart struct {
	cfgPath string
	cfg     *config.Config // what cfgPath holds: its namespaces and jail id follow from it
	seccomp *seccompLog    // its filter's mode, and the kernel's record of a kill
	// unjailed starts it as a plain child with this process's environment
	// (init's tests' fake switches, which read it).
	unjailed bool
	// hungAfter replaces switchHungAfter (hyperroot.switch.hung=, tests).
	hungAfter time.Duration
	// path is the binary to run as the switch, dir its directory; "" is
	// this binary, and switchDir (tests run their own).
	path, dir string
	// leased, if set, hears of each new or changed lease the switch
	// reports, after the switch has written its lease file.
	leased func(network string)
	// cgroup, if set, is the switch's group's directory (open for PID
	// 1's life): each start is cloned straight into it.
	cgroup *os.File
}

// args are the switch's command line: it jails itself as the range's
// switch id once set up (switchjail.go).
func (s switchStart) args() []string {
	dir := s.dir
	if dir == "" {
		dir = switchDir
	}
	args := []string{"switch", "--config", s.cfgPath, "--dir", dir}
	mode := s.seccomp.Mode()
	if mode == "" {
		mode = vmmcli.DefaultSeccomp
	}
	args = append(args, "--seccomp", mode)
	if s.unjailed {
		return args
	}
	var ids config.IDRange
	if s.cfg != nil {
		ids = s.cfg.Jail.IDs
	}
	if ids == (config.IDRange{}) { // a Config not from Parse
		ids = config.DefaultJailIDs
	}
	return append(args, "--jail", strconv.Itoa(ids.SwitchID()))
}

// attr are the switch's namespaces (jail.Attr): the host's network
// namespace stays its own only when it has a tap or an uplink to open
// there (switchNeedsHostNetwork).
func (s switchStart) attr() *syscall.SysProcAttr {
	if s.unjailed {
		return nil
	}
	a := jail.Attr()
	if switchNeedsHostNetwork(s.cfg) {
		a = jail.AttrHostNetwork()
	}
	if s.cgroup != nil {
		a.UseCgroupFD, a.CgroupFD = true, int(s.cgroup.Fd())
	}
	return a
}

// needsSwitch reports whether cfg has anything for a switch to do.
func needsSwitch(cfg *config.Config) bool {
	if len(cfg.Networks) > 0 {
		return true
	}
	for _, vm := range cfg.VMs {
		if len(vm.NICs) > 0 {
			return true
		}
	}
	return false
}

// startNetSwitch starts the switch as st says and waits until it serves
// its sockets (or timeout). Jailed, it starts in namespaces of its own
// with no environment and no descriptor but its standard streams.
func startNetSwitch(c *console, r child.Starter, st switchStart, timeout time.Duration) (*netSwitch, error) {
	ready := make(chan struct{}) // closed at the first "ready" line
	var readyOnce sync.Once
	var pid atomic.Int64 // of the running switch, for its exit's report
	s := &netSwitch{c: c, epoch: time.Now(), stopWatch: make(chan struct{}), dir: st.dir}
	path := st.path
	if path == "" {
		path = selfPath()
	}
	s.sup = child.Supervise(child.Run{
		Start: func() (*child.Process, error) {
			spec := child.Spec{
				Path: path, Args: st.args(), Attr: st.attr(),
				Started: func(p int) {
					s.lastAlive.Store(0) // watched from its first heartbeat
					s.hung.Store(false)
					pid.Store(int64(p))
					st.seccomp.TrackSwitch(p)
					c.Printf("switch started pid=%d", p)
				},
				Line: guardLines(c, "switch output", func(line string) {
					if line == aliveLine {
						s.lastAlive.Store(int64(max(time.Since(s.epoch), 1)))
						return
					}
					if stats, ok := strings.CutPrefix(line, statsPrefix); ok {
						s.stats.update(stats)
						return
					}
					if port, ok := removedPort(line); ok {
						// After its last stats line (reportPorts).
						s.stats.forget(port)
					}
					if strings.HasPrefix(line, "ready ") {
						readyOnce.Do(func() { close(ready) })
					}
					if nw, ok := leaseNetwork(line); ok && st.leased != nil {
						st.leased(nw)
					}
					c.Relay("switch", line)
				}),
			}
			if !st.unjailed {
				// In its PID namespace, a SIGTERM it does not handle
				// yet is lost.
				spec.Env = []string{}
				spec.StopReady = func(pid int) bool { return ignores(pid, stopReadySignal) }
			}
			return child.Start(r, spec)
		},
		Exited: func(ws unix.WaitStatus, _ time.Duration) bool {
			// One killed by SIGSYS was killed by its seccomp filter:
			// the reason names the call, from the kernel's record.
			reason, p := vmmcli.Reason(ws), int(pid.Load())
			if s.hung.Load() {
				reason = "hung"
			}
			if ws.Signaled() && ws.Signal() == unix.SIGSYS {
				reason = vmmcli.SeccompReason(st.seccomp.Killed(p))
			} else {
				st.seccomp.Forget(p)
			}
			c.Printf("switch exited code=%d reason=%s", vmmcli.Code(ws), reason)
			return true
		},
		Restarting: func(d time.Duration) { c.Printf("switch restarting in %s", d) },
		Backoff:    child.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second, Reset: time.Minute},
	})
	goGuarded(c, "switch", func() {
		if err := s.sup.Err(); err != nil {
			c.Errorf("switch", err)
		}
	})
	hungAfter := st.hungAfter
	if hungAfter == 0 {
		hungAfter = switchHungAfter
	}
	goLoop(c, "switch watchdog", func() { s.watch(hungAfter) })
	select {
	case <-ready:
		return s, nil
	case <-s.sup.Done():
		return s, fmt.Errorf("switch exited before it was ready")
	case <-time.After(timeout):
		return s, fmt.Errorf("switch not ready after %s", timeout)
	}
}

// watch kills the running switch when its heartbeat has been missing for
// hungAfter since the last one (a switch not yet heard from is left to the
// start-up timeout): a stopped or starved process answers no probe of its
// own, and its VMs' networking is down until it is replaced.
func (s *netSwitch) watch(hungAfter time.Duration) {
	tick := time.NewTicker(max(hungAfter/10, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.stopWatch:
			return
		case <-s.sup.Done():
			return
		case <-tick.C:
		}
		last := s.lastAlive.Load()
		if last == 0 || s.hung.Load() {
			continue
		}
		silent := time.Since(s.epoch) - time.Duration(last)
		if silent < hungAfter {
			continue
		}
		p := s.sup.Process()
		if p == nil {
			continue
		}
		s.hung.Store(true)
		round := time.Second
		if silent < 10*time.Second {
			round = time.Millisecond
		}
		s.c.Printf("switch hung: no heartbeat for %s: killing it", silent.Round(round))
		p.Signal(unix.SIGKILL)
	}
}

// Kill kills the running switch with SIGKILL, as a crash would: the
// supervisor restarts it and the VMs reconnect (console command "switch
// kill", used by the tests).
func (s *netSwitch) Kill() error {
	p := s.sup.Process()
	if p == nil {
		return fmt.Errorf("switch is not running")
	}
	return p.Signal(unix.SIGKILL)
}

// Stop asks the switch to finish (SIGTERM: it reports its counters) and
// waits for it, killing it after grace.
func (s *netSwitch) Stop(grace time.Duration) {
	s.stopOnce.Do(func() { close(s.stopWatch) })
	s.sup.Stop(grace, func() { s.c.Printf("switch did not stop within %s: killing it", grace) })
}

// removedPort reads the switch's line saying it took a port off.
func removedPort(line string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "port ")
	name, ok2 := strings.CutSuffix(rest, " removed")
	return name, ok && ok2 && !strings.Contains(name, " ")
}
