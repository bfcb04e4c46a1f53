package main

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// netSwitch supervises the `hyperroot switch` child process: started
// before the VMs, its output relayed as "switch| <line>", restarted at once
// whenever it dies (the VMs' NICs reconnect by themselves), stopped last
// at power-off so that its final counters reach the console.
type netSwitch struct {
	c   *console
	sup *child.Supervisor
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

// startNetSwitch starts the switch for the configuration file at cfgPath
// and waits until it serves its sockets (or timeout).
func startNetSwitch(c *console, r child.Starter, cfgPath string, timeout time.Duration) (*netSwitch, error) {
	ready := make(chan struct{}) // closed at the first "ready" line
	var readyOnce sync.Once
	s := &netSwitch{c: c}
	s.sup = child.Supervise(child.Run{
		Start: func() (*child.Process, error) {
			return child.Start(r, child.Spec{
				Path: selfPath(), Args: []string{"switch", "--config", cfgPath, "--dir", switchDir},
				Started: func(pid int) { c.Printf("switch started pid=%d", pid) },
				Line: guardLines(c, "switch output", func(line string) {
					if strings.HasPrefix(line, "ready ") {
						readyOnce.Do(func() { close(ready) })
					}
					c.Relay("switch", line)
				}),
			})
		},
		Exited: func(ws unix.WaitStatus, _ time.Duration) bool {
			c.Printf("switch exited code=%d reason=%s", vmmcli.Code(ws), vmmcli.Reason(ws))
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
	select {
	case <-ready:
		return s, nil
	case <-s.sup.Done():
		return s, fmt.Errorf("switch exited before it was ready")
	case <-time.After(timeout):
		return s, fmt.Errorf("switch not ready after %s", timeout)
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
	s.sup.Stop(grace, func() { s.c.Printf("switch did not stop within %s: killing it", grace) })
}
