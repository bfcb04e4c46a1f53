package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// netSwitch supervises the `hyperroot switch` child process: started
// before the VMs, its output relayed as "switch| <line>", restarted at once
// whenever it dies (the VMs' NICs reconnect by themselves), stopped last
// at power-off so that its final counters reach the console.
type netSwitch struct {
	c       *console
	r       *reaper
	cfgPath string

	mu       sync.Mutex
	pid      int
	stopping bool
	ready    chan struct{} // closed at the first "ready" line
	done     chan struct{} // closed when the supervision loop ends
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
func startNetSwitch(c *console, r *reaper, cfgPath string, timeout time.Duration) (*netSwitch, error) {
	s := &netSwitch{c: c, r: r, cfgPath: cfgPath, ready: make(chan struct{}), done: make(chan struct{})}
	go s.supervise()
	select {
	case <-s.ready:
		return s, nil
	case <-s.done:
		return s, fmt.Errorf("switch exited before it was ready")
	case <-time.After(timeout):
		return s, fmt.Errorf("switch not ready after %s", timeout)
	}
}

func (s *netSwitch) supervise() {
	defer close(s.done)
	var readyOnce sync.Once
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		ws, err := s.runOnce(func() { readyOnce.Do(func() { close(s.ready) }) })
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		if err != nil {
			s.c.Errorf("switch", err)
			return
		}
		s.c.Printf("switch exited code=%d reason=%s", vmmcli.Code(ws), vmmcli.Reason(ws))
		if stopping {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		s.c.Printf("switch restarting in %s", backoff)
		time.Sleep(backoff)
		backoff = min(2*backoff, 10*time.Second)
	}
}

// runOnce runs the switch until it exits, relaying its output; ready is
// called when it reports that it serves its sockets.
func (s *netSwitch) runOnce(ready func()) (unix.WaitStatus, error) {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self, "switch", "--config", s.cfgPath, "--dir", switchDir)
	out, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		out.Close()
		w.Close()
		return 0, fmt.Errorf("not started: the appliance is powering off")
	}
	wait, err := s.r.Start(cmd)
	w.Close()
	if err != nil {
		s.mu.Unlock()
		out.Close()
		return 0, fmt.Errorf("start switch: %w", err)
	}
	s.pid = cmd.Process.Pid
	s.mu.Unlock()
	s.c.Printf("switch started pid=%d", cmd.Process.Pid)
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ready ") {
				ready()
			}
			s.c.Relay("switch", line)
		}
	}()
	ws := <-wait
	select {
	case <-relayed:
	case <-time.After(2 * time.Second):
	}
	out.Close()
	cmd.Process.Release()
	s.mu.Lock()
	s.pid = 0
	s.mu.Unlock()
	return ws, nil
}

// Kill kills the running switch with SIGKILL, as a crash would: the
// supervisor restarts it and the VMs reconnect (console command "switch
// kill", used by the tests).
func (s *netSwitch) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pid == 0 {
		return fmt.Errorf("switch is not running")
	}
	return unix.Kill(s.pid, unix.SIGKILL)
}

// Stop asks the switch to finish (SIGTERM: it reports its counters) and
// waits for it, killing it after grace.
func (s *netSwitch) Stop(grace time.Duration) {
	s.mu.Lock()
	s.stopping = true
	pid := s.pid
	s.mu.Unlock()
	if pid != 0 {
		unix.Kill(pid, unix.SIGTERM)
	}
	select {
	case <-s.done:
		return
	case <-time.After(grace):
	}
	s.mu.Lock()
	if s.pid != 0 {
		s.c.Printf("switch did not stop within %s: killing it", grace)
		unix.Kill(s.pid, unix.SIGKILL)
	}
	s.mu.Unlock()
	<-s.done
}
