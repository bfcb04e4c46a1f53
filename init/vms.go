package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// fleet supervises the configured VMs: one `hyperroot vmm` child process
// each, its serial console relayed line by line as "<name>| <line>", its
// lifecycle reported on the console, restarted per its policy.
type fleet struct {
	c       *console
	r       child.Starter
	oneshot bool // never restart: the appliance powers off when all have exited
	// unjailed starts VMMs as plain children with this process's
	// environment (tests of the fleet, whose fake VMMs are not jailed and
	// read their part from the environment).
	unjailed bool

	disks diskOwners // which VM each disk file is

	mu       sync.Mutex
	vms      map[string]*vmEntry
	stopping bool
	failed   []string // names of VMs whose last exit was not a clean poweroff
	done     sync.WaitGroup
}

// vmEntry is one configured VM: its supervision, and what a dump of its
// VMM waits for.
type vmEntry struct {
	sup *child.Supervisor
	// begun and dumped receive when the VMM's output relays the first
	// and the last line of a dump (see fleet.Dump).
	begun, dumped chan struct{}
}

func newFleet(c *console, r child.Starter, oneshot bool) *fleet {
	return &fleet{c: c, r: r, oneshot: oneshot, vms: map[string]*vmEntry{}}
}

// Start launches every VM; each runs (and restarts) on its own goroutine.
func (f *fleet) Start(vms []config.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopping {
		return
	}
	for _, vm := range vms {
		e := &vmEntry{begun: make(chan struct{}, 1), dumped: make(chan struct{}, 1)}
		e.sup = child.Supervise(child.Run{
			Start:  func() (*child.Process, error) { return f.startVM(vm, e) },
			Exited: func(ws unix.WaitStatus, _ time.Duration) bool { return f.exited(vm, ws) },
			Restarting: func(d time.Duration) {
				f.c.Printf("vm %s restarting in %s (restart: %s)", vm.Name, d, vm.Restart)
			},
			// A VM that keeps dying waits 1 s, doubling up to a minute;
			// a clean poweroff or a run of a minute starts afresh.
			Backoff: child.Backoff{Min: time.Second, Max: time.Minute, Reset: time.Minute},
		})
		f.vms[vm.Name] = e
		f.done.Add(1)
		goGuarded(f.c, "vm "+vm.Name, func() {
			defer f.done.Done()
			if err := e.sup.Err(); err != nil {
				f.c.Errorf("vm "+vm.Name, err)
				f.markFailed(vm.Name, true)
			}
		})
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

// startVM starts one VMM process for vm.
func (f *fleet) startVM(vm config.VM, e *vmEntry) (*child.Process, error) {
	// Disks are opened here, before anything starts, so that a missing
	// or unusable one stops the VM with an error naming it.
	disks, err := openDisks(vm)
	if err != nil {
		return nil, err
	}
	// The child has its own copies once started; ours must not keep the
	// disks (and their locks) alive after it exits.
	defer closeFiles(disks)
	if err := f.disks.claim(vm.Name, vm.Disks, disks); err != nil {
		return nil, err
	}
	args := vmmcli.ForVM(vm, switchDir)
	// Inherited from PID 1, which the kernel gives unknown NAME=value
	// command-line words as environment; the VMM itself gets none.
	args.Trace = os.Getenv("HYPERROOT_VMM_TRACE") == "1"
	spec := child.Spec{
		Path: selfPath(), Args: args.Argv(),
		// The VMM jails itself once set up (--jail): it starts in
		// namespaces of its own, with no environment and no descriptor
		// but its disks and standard streams.
		Env: []string{}, Attr: jail.Attr(),
		// In its PID namespace, a SIGTERM it does not handle yet is lost.
		StopReady:  func(pid int) bool { return ignores(pid, stopReadySignal) },
		ExtraFiles: disks, Stdin: true,
		Started: func(pid int) {
			f.c.Printf("vm %s started pid=%d cpus=%d memory=%s", vm.Name, pid, vm.CPUs, vm.Memory)
		},
		Line: guardLines(f.c, "vm "+vm.Name+" console", func(line string) {
			f.c.Relay(vm.Name, line)
			if strings.HasPrefix(line, dumpPrefix) {
				notify(e.begun)
			}
			if line == dumpEndLine {
				notify(e.dumped)
			}
		}),
	}
	if f.unjailed {
		spec.Env, spec.Attr, spec.StopReady = nil, nil, nil
	}
	return child.Start(f.r, spec)
}

// exited reports a VMM's exit and says whether its policy restarts it.
func (f *fleet) exited(vm config.VM, ws unix.WaitStatus) bool {
	clean := vmmcli.Clean(ws)
	f.c.Printf("vm %s exited code=%d reason=%s", vm.Name, vmmcli.Code(ws), vmmcli.Reason(ws))
	f.markFailed(vm.Name, !clean)
	return !f.oneshot && (vm.Restart == config.RestartAlways ||
		(vm.Restart == config.RestartOnFailure && !clean))
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

// Input sends a line typed on the appliance console to a VM's serial port.
func (f *fleet) Input(name, line string) error {
	p := f.process(name)
	if p == nil {
		return fmt.Errorf("no running vm %q", name)
	}
	_, err := p.Write([]byte(line + "\n"))
	return err
}

// process is VM name's running VMM, or nil.
func (f *fleet) process(name string) *child.Process {
	f.mu.Lock()
	e := f.vms[name]
	f.mu.Unlock()
	if e == nil {
		return nil
	}
	return e.sup.Process()
}

// Stop asks every VMM to shut its guest down (SIGTERM: the VMM presses the
// guest's ACPI power button), then kills what is left after grace.
func (f *fleet) Stop(grace time.Duration) {
	f.mu.Lock()
	f.stopping = true
	var wg sync.WaitGroup
	for name, e := range f.vms {
		wg.Add(1)
		goGuarded(f.c, "stop vm "+name, func() {
			defer wg.Done()
			e.sup.Stop(grace, func() { f.c.Printf("vm %s did not stop within %s: killing it", name, grace) })
		})
	}
	f.mu.Unlock()
	wg.Wait()
	f.Wait()
}

// selfPath is the hyperroot binary, which the supervisor runs again for
// each of its roles.
func selfPath() string {
	if self, err := os.Executable(); err == nil {
		return self
	}
	return "/proc/self/exe"
}

// readConsoleInput routes lines typed on the appliance console: "@<vm> text"
// sends "text" to that VM's serial console; "switch kill" kills the switch
// as a crash would (it is restarted and the VMs reconnect); "dump <vm>"
// (or "dump" for all) makes VMMs print their state (fleet.Dump).
func readConsoleInput(c *console, f *fleet, sw *netSwitch, in io.Reader) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		// Control characters are not commands: a terminal's stray ones, or
		// the Ctrl-Q the test harness types to nudge a 1-vCPU TCG appliance
		// (tools/qemu), should the tty pass it on.
		line := strings.TrimSpace(strings.Map(func(r rune) rune {
			if r < 0x20 && r != '\t' || r == 0x7f {
				return -1
			}
			return r
		}, sc.Text()))
		if line == "" {
			continue
		}
		if cmd, arg, _ := strings.Cut(line, " "); cmd == "dump" {
			names := strings.Fields(arg)
			if len(names) == 0 {
				names = f.Running()
			}
			for _, name := range names {
				goGuarded(c, "dump "+name, func() {
					if err := f.Dump(name, dumpTimeout); err != nil {
						c.Printf("console: dump %s: %v", name, err)
					}
				})
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
