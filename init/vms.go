package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

// Exit codes of `hyperroot vmm`, part of the console contract: the
// supervisor turns them into the reason of "vm <name> exited".
const (
	exitPoweroff = 0 // the guest powered off
	exitError    = 1 // the VMM failed (bad input, KVM error)
	exitUsage    = 2 // bad command line
	exitReboot   = 3 // the guest asked for a reset
	exitCrash    = 4 // the guest crashed: panic reported by pvpanic, triple fault, KVM internal error
)

func exitReason(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed signal=" + unix.SignalName(ws.Signal())
	}
	switch ws.ExitStatus() {
	case exitPoweroff:
		return "poweroff"
	case exitError:
		return "error"
	case exitUsage:
		return "usage"
	case exitReboot:
		return "reboot"
	case exitCrash:
		return "crash"
	case exitStopped:
		return "stopped"
	}
	return "unknown"
}

// exitCode is the code of "vm <name> exited": the exit status, or 128+signal.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// vmArgs is the `hyperroot vmm` command line for a configured VM. Its
// disks are the descriptors 3, 4, ... the child inherits (ExtraFiles).
func vmArgs(vm config.VM) []string {
	args := []string{"vmm", "--name", vm.Name, "--kernel", vm.Kernel, "--cpus", fmt.Sprint(vm.CPUs),
		"--memory", vm.Memory.String(), "--cmdline", vm.Cmdline}
	if vm.Initrd != "" {
		args = append(args, "--initrd", vm.Initrd)
	}
	for i, d := range vm.Disks {
		args = append(args, "--disk", diskArg(3+i, d))
	}
	for i, n := range vm.NICs {
		args = append(args, "--nic", configNICArg(nicSocket(switchDir, vm.Name, i), n))
	}
	return args
}

// fleet supervises the configured VMs: one `hyperroot vmm` child process
// each, its serial console relayed line by line as "<name>| <line>", its
// lifecycle reported on the console, restarted per its policy.
type fleet struct {
	c       *console
	r       *reaper
	oneshot bool // never restart: the appliance powers off when all have exited

	mu       sync.Mutex
	procs    map[string]*vmProc
	stopping bool
	failed   []string // names of VMs whose last exit was not a clean poweroff
	done     sync.WaitGroup
}

type vmProc struct {
	vm    config.VM
	pid   int
	stdin io.WriteCloser
	// begun and dumped receive when the VMM's output relays the first
	// and the last line of a dump (see fleet.Dump).
	begun, dumped chan struct{}
}

func newFleet(c *console, r *reaper, oneshot bool) *fleet {
	return &fleet{c: c, r: r, oneshot: oneshot, procs: map[string]*vmProc{}}
}

// Start launches every VM; each runs (and restarts) on its own goroutine.
func (f *fleet) Start(vms []config.VM) {
	for _, vm := range vms {
		f.done.Add(1)
		go f.run(vm)
	}
}

// Wait returns once every VM has exited for good.
func (f *fleet) Wait() { f.done.Wait() }

// Failed lists the VMs whose last exit was not a clean poweroff.
func (f *fleet) Failed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.failed...)
}

func (f *fleet) run(vm config.VM) {
	defer f.done.Done()
	backoff := time.Second
	for {
		start := time.Now()
		ws, err := f.runOnce(vm)
		f.mu.Lock()
		stopping := f.stopping
		f.mu.Unlock()
		if err != nil {
			f.c.Errorf("vm "+vm.Name, err)
			f.markFailed(vm.Name, true)
			return
		}
		clean := ws.Exited() && ws.ExitStatus() == exitPoweroff
		f.c.Printf("vm %s exited code=%d reason=%s", vm.Name, exitCode(ws), exitReason(ws))
		f.markFailed(vm.Name, !clean)
		restart := !f.oneshot && !stopping && (vm.Restart == config.RestartAlways ||
			(vm.Restart == config.RestartOnFailure && !clean))
		if !restart {
			return
		}
		// A VM that fails at once again and again must not spin: back off
		// up to a minute; a clean poweroff or a long run starts afresh.
		if clean || time.Since(start) > time.Minute {
			backoff = time.Second
		}
		f.c.Printf("vm %s restarting in %s (restart: %s)", vm.Name, backoff, vm.Restart)
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Minute)
	}
}

func (f *fleet) markFailed(name string, failed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.failed[:0]
	for _, n := range f.failed {
		if n != name {
			out = append(out, n)
		}
	}
	f.failed = out
	if failed {
		f.failed = append(f.failed, name)
	}
}

// runOnce starts one VMM process and waits for it, relaying its output.
func (f *fleet) runOnce(vm config.VM) (unix.WaitStatus, error) {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	// Disks are opened here, before anything starts, so that a missing
	// or unusable one stops the VM with an error naming it.
	disks, err := openDisks(vm)
	if err != nil {
		return 0, err
	}
	// The child has its own copies from Start on; ours must not keep the
	// disks (and their locks) alive after it exits.
	defer closeFiles(disks)
	cmd := exec.Command(self, vmArgs(vm)...)
	cmd.ExtraFiles = disks
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return 0, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, outW
	// The VMM dies with the supervisor's intent, not with its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	f.mu.Lock()
	if f.stopping {
		f.mu.Unlock()
		outR.Close()
		outW.Close()
		inR.Close()
		inW.Close()
		return 0, fmt.Errorf("not started: the appliance is powering off")
	}
	wait, err := f.r.Start(cmd)
	inR.Close()
	outW.Close()
	closeFiles(disks)
	if err != nil {
		f.mu.Unlock()
		outR.Close()
		inW.Close()
		return 0, fmt.Errorf("start vmm: %w", err)
	}
	proc := &vmProc{vm: vm, pid: cmd.Process.Pid, stdin: inW, begun: make(chan struct{}, 1), dumped: make(chan struct{}, 1)}
	f.procs[vm.Name] = proc
	f.mu.Unlock()
	f.c.Printf("vm %s started pid=%d cpus=%d memory=%s", vm.Name, cmd.Process.Pid, vm.CPUs, vm.Memory)

	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			f.c.Relay(vm.Name, line)
			if strings.HasPrefix(line, dumpPrefix) {
				notify(proc.begun)
			}
			if line == dumpEndLine {
				notify(proc.dumped)
			}
		}
	}()
	ws := <-wait
	// The VMM is gone; its output pipe drains to EOF unless a grandchild
	// holds it, so do not wait for ever.
	select {
	case <-relayed:
	case <-time.After(2 * time.Second):
	}
	outR.Close()
	inW.Close()
	cmd.Process.Release()
	f.mu.Lock()
	delete(f.procs, vm.Name)
	f.mu.Unlock()
	return ws, nil
}

// Input sends a line typed on the appliance console to a VM's serial port.
func (f *fleet) Input(name, line string) error {
	f.mu.Lock()
	p := f.procs[name]
	f.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no running vm %q", name)
	}
	_, err := io.WriteString(p.stdin, line+"\n")
	return err
}

// Stop asks every VMM to shut its guest down (SIGTERM: the VMM presses the
// guest's ACPI power button), then kills what is left after grace.
func (f *fleet) Stop(grace time.Duration) {
	f.mu.Lock()
	f.stopping = true
	for _, p := range f.procs {
		unix.Kill(p.pid, unix.SIGTERM)
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	f.mu.Lock()
	for name, p := range f.procs {
		f.c.Printf("vm %s did not stop within %s: killing it", name, grace)
		unix.Kill(p.pid, unix.SIGKILL)
	}
	f.mu.Unlock()
	<-done
}

// readConsoleInput routes lines typed on the appliance console: "@<vm> text"
// sends "text" to that VM's serial console; "switch kill" kills the switch
// as a crash would (it is restarted and the VMs reconnect); "dump <vm>"
// (or "dump" for all) makes VMMs print their state (fleet.Dump).
func readConsoleInput(c *console, f *fleet, sw *netSwitch, in io.Reader) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if cmd, arg, _ := strings.Cut(line, " "); cmd == "dump" {
			names := strings.Fields(arg)
			if len(names) == 0 {
				names = f.Running()
			}
			for _, name := range names {
				go func() {
					if err := f.Dump(name, dumpTimeout); err != nil {
						c.Printf("console: dump %s: %v", name, err)
					}
				}()
			}
			continue
		}
		if line == "switch kill" {
			if sw == nil {
				c.Printf("console: no switch is running")
			} else if err := sw.Kill(); err != nil {
				c.Printf("console: %v", err)
			}
			continue
		}
		target, text, _ := strings.Cut(line, " ")
		name, ok := strings.CutPrefix(target, "@")
		if !ok {
			c.Printf("console: type \"@<vm> <text>\" to send a line to a VM's console, \"dump [<vm>...]\" to dump VMMs' state, or \"switch kill\"")
			continue
		}
		if err := f.Input(name, text); err != nil {
			c.Printf("console: %v", err)
		}
	}
}
