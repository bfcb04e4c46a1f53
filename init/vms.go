package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/cgroup"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
)

// fleet supervises the configured VMs: one `hyperroot vmm` child process
// each, its serial console relayed line by line as "<name>| <line>", its
// lifecycle reported on the console, restarted per its policy.
type fleet struct {
	c       *console
	r       child.Starter
	oneshot bool     // never restart: the appliance powers off when all have exited
	cg      *cgroups // nil: no cgroup v2 (VMs with QoS do not start)
	// unjailed starts VMMs as plain children with this process's
	// environment (tests of the fleet, whose fake VMMs are not jailed and
	// read their part from the environment).
	unjailed bool

	disks   diskOwners   // which VM each disk file is
	devices deviceOwners // which VM each passed-through PCI device is
	// consoles fans the VMs' console lines out to the API's readers.
	consoles *consoleHub

	// seccomp is the VMMs' seccomp mode and what the kernel logged of
	// their filters' actions; nil: the VMMs' default, no log.
	seccomp *seccompLog
	sv      *sVirt // nil without SELinux

	mu       sync.Mutex
	vms      map[string]*vmEntry
	stopping bool
	quit     chan struct{} // closed when stopping
	dataDisk bool          // a data disk is mounted (diskimage.go keeps images there)
	failed   []string      // names of VMs whose last exit was not a clean poweroff
	done     sync.WaitGroup
}

// otherDisks maps the disks of every configured VM but vm to their VM,
// leaving out the paths some VM names as a base: those are shared.
func (f *fleet) otherDisks(vm string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	others, bases := map[string]string{}, map[string]bool{}
	for name, e := range f.vms {
		for _, d := range e.vm.Disks {
			if d.Base != "" {
				bases[filepath.Clean(d.Base)] = true
			}
			if name != vm {
				others[filepath.Clean(d.Path)] = name
			}
		}
	}
	for b := range bases {
		delete(others, b)
	}
	return others
}

// vmEntry is one configured VM: its supervision, and what a dump of its
// VMM waits for.
type vmEntry struct {
	vm  config.VM // as configured
	sup *child.Supervisor
	// begun and dumped receive when the VMM's output relays the first
	// and the last line of a dump (see fleet.Dump).
	begun, dumped chan struct{}

	mu    sync.Mutex
	qos   config.QoS    // as configured, then as changed live (the "qos" command)
	group *cgroup.Group // the running VMM's cgroup, nil when none
	oom   uint64        // its OOM kill count when the VMM started
	pid   atomic.Int64  // of its VMM, last started
	// starts counts its VMM's starts, exits its exits by reason (the
	// reason's first word: "seccomp", not the call), for /metrics.
	starts atomic.Uint64
	exits  map[string]uint64
	// kvm are KVM's counts of the running VMM's vCPUs as it last
	// reported them (statsEvery), from its start on; nil before.
	kvm map[string]uint64
	// disks are the running VMM's disk counters by disk index, as it
	// last reported them.
	disks map[int]blk.Stats
	// unlabel undoes the SELinux labels of the running VMM's disks and
	// frees its category pair; nil when there is nothing to undo.
	unlabel func()
}

func newFleet(c *console, r child.Starter, oneshot bool) *fleet {
	return &fleet{c: c, r: r, oneshot: oneshot, vms: map[string]*vmEntry{}, quit: make(chan struct{}), consoles: newConsoleHub()}
}

// Start launches every VM; each runs (and restarts) on its own goroutine.
// First starts go in the order vms lists them, one after the other: a
// VM's disks are claimed and labelled, and its VMM started, before the
// next VM's start begins, so that what a VM finds of those listed before
// it does not depend on the scheduler. Restarts are not ordered.
func (f *fleet) Start(vms []config.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopping {
		return
	}
	if escapeTally != nil {
		escapeTally.Expect(vms)
	}
	prev := make(chan struct{})
	close(prev)
	for _, vm := range vms {
		started := make(chan struct{})
		f.supervise(&vmEntry{vm: vm, qos: vm.QoS}, prev, started)
		prev = started
	}
}

// supervise runs e's VM (and restarts it as its policy says) on a
// goroutine of its own, its first start once turn is closed; started is
// closed when that start is over. Called with f.mu held.
func (f *fleet) supervise(e *vmEntry, turn <-chan struct{}, started chan struct{}) {
	vm := e.vm
	e.begun, e.dumped = make(chan struct{}, 1), make(chan struct{}, 1)
	first := true
	// Closed after the first start, or when the supervision ends
	// before it (stopped while waiting for its turn): the next VM's
	// first start, and a stop of it, wait for this.
	startedOnce := sync.OnceFunc(func() { close(started) })
	e.sup = child.Supervise(child.Run{
		Start: func() (*child.Process, error) {
			if first { // only ever on the supervision's goroutine
				first = false
				defer startedOnce()
				select {
				case <-turn:
				case <-f.quit: // a start the stop will undo
				}
			}
			return f.startVM(vm, e)
		},
		Exited: func(ws unix.WaitStatus, _ time.Duration) bool { return f.exited(vm, e, ws) },
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
		defer startedOnce()
		// Gone for good: its devices go back to their drivers.
		defer f.devices.release(f.c, vm.Name)
		if err := e.sup.Err(); err != nil {
			f.c.Errorf("vm "+vm.Name, err)
			f.markFailed(vm.Name, true)
		}
	})
}

// entry is VM name's entry, or an error naming the VMs there are.
func (f *fleet) entry(name string) (*vmEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.vms[name]; e != nil {
		return e, nil
	}
	names := slices.Sorted(maps.Keys(f.vms))
	return nil, fmt.Errorf("no vm %q (have %s)", name, orNone(names))
}

// StopVM stops VM name and keeps it stopped, whatever its restart policy,
// until StartVM: its VMM gets SIGTERM (the guest's ACPI power button) and
// its stop timeout to end, then SIGKILL.
func (f *fleet) StopVM(name string) error {
	e, err := f.entry(name)
	if err != nil {
		return err
	}
	select {
	case <-e.sup.Done():
		return fmt.Errorf("vm %s is not running", name)
	default:
	}
	f.stopEntry(name, e)
	f.c.Printf("vm %s stopped (start %s starts it again)", name, name)
	return nil
}

// StartVM starts VM name again once it has stopped (StopVM, or ended with
// no restart due), with its limits as last set.
func (f *fleet) StartVM(name string) error {
	e, err := f.entry(name)
	if err != nil {
		return err
	}
	select {
	case <-e.sup.Done():
	default:
		return fmt.Errorf("vm %s is running", name)
	}
	e.mu.Lock()
	next := &vmEntry{vm: e.vm, qos: e.qos, exits: maps.Clone(e.exits)}
	e.mu.Unlock()
	next.starts.Store(e.starts.Load())
	return f.startNow(next, func() error {
		if f.vms[name] != e {
			return fmt.Errorf("vm %s is being started already", name)
		}
		return nil
	})
}

// startNow supervises e, its first start at once, unless the appliance is
// stopping or may (called with f.mu held) refuses, and returns once that
// start is over: with the VMM running, so that the caller (the API) sees
// it running, or with the start's error. Process waits for the supervisor
// to record the process the start returned.
func (f *fleet) startNow(e *vmEntry, may func() error) error {
	started := make(chan struct{})
	err := func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.stopping {
			return errors.New("the appliance is stopping")
		}
		if err := may(); err != nil {
			return err
		}
		now := make(chan struct{})
		close(now)
		f.supervise(e, now, started)
		return nil
	}()
	if err != nil {
		return err
	}
	<-started
	if e.sup.Process() == nil {
		// The start failed (the supervision ends with its error) or
		// the VMM is gone already (and its exit was reported).
		select {
		case <-e.sup.Done():
			return e.sup.Err()
		case <-time.After(5 * time.Second):
		}
	}
	return nil
}

// AddVM starts a VM the fleet does not have yet, and returns once its VMM
// runs (or with its start's error; the VM stays in the fleet, stopped).
func (f *fleet) AddVM(vm config.VM) error {
	return f.startNow(&vmEntry{vm: vm, qos: vm.QoS}, func() error {
		if f.vms[vm.Name] != nil {
			return fmt.Errorf("vm %s exists already", vm.Name)
		}
		f.c.Printf("vm %s added", vm.Name)
		return nil
	})
}

// RemoveVM stops VM name if it runs (as StopVM) and forgets it: its disks
// are free for other VMs, and its console's readers are told it is gone.
func (f *fleet) RemoveVM(name string) error {
	e, err := f.entry(name)
	if err != nil {
		return err
	}
	f.stopEntry(name, e)
	<-e.sup.Done()
	f.mu.Lock()
	if f.vms[name] == e {
		delete(f.vms, name)
	}
	f.mu.Unlock()
	f.disks.release(name)
	os.Remove(seedPath(name)) // its keys go with it; a VM added again gets a new seed
	f.consoles.drop(name)
	f.c.Printf("vm %s removed", name)
	return nil
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
	// or unusable one stops the VM with an error naming it; those to be
	// made from an image are made first (diskimage.go).
	if err := makeFromImages(f.c, vm, f.dataDisk, f.quit); err != nil {
		return nil, err
	}
	var clones []config.Disk // qcow2 disks openDisks will make from their base
	for _, d := range vm.Disks {
		if _, err := os.Lstat(d.Path); d.Base != "" && errors.Is(err, fs.ErrNotExist) {
			clones = append(clones, d)
		}
	}
	opened, err := openDisks(vm, f.otherDisks(vm.Name))
	if err != nil {
		return nil, err
	}
	for _, d := range clones {
		f.c.Printf("vm %s: disk %s made as a thin qcow2 clone of %s", vm.Name, d.Path, d.Base)
	}
	// The child has its own copies once started; ours must not keep the
	// disks (and their locks) alive after it exits.
	defer opened.Close()
	// Backing files are claimed and labelled as read-only disks of the
	// VM: no VM may write one while another reads it.
	baseDisks, baseFiles := opened.shared()
	all := vm
	all.Disks = append(slices.Clone(vm.Disks), baseDisks...)
	disks := append(slices.Clone(opened.files), baseFiles...)
	if err := f.disks.claim(vm.Name, all.Disks, disks); err != nil {
		return nil, err
	}
	// Its cloud-init seed, made afresh: the supervisor's own file, which
	// no configuration names, so it has nothing to claim.
	if vm.CloudInit != nil {
		seed, err := writeSeed(seedDir, vm)
		if err != nil {
			return nil, err
		}
		defer seed.Close()
		opened.files = append(opened.files, seed)
		opened.chains = append(opened.chains, nil)
		vm = withSeed(vm, seed.Name())
		f.c.Printf("vm %s: cloud-init seed is disk %d (instance-id %s, hostname %s)", vm.Name, len(vm.Disks)-1, instanceID(vm.Name), vm.CloudInit.Hostname)
		all.Disks = slices.Insert(all.Disks, len(vm.Disks)-1, vm.Disks[len(vm.Disks)-1])
		disks = slices.Insert(disks, len(vm.Disks)-1, seed)
	}
	// Its passed-through devices: checked, moved to vfio-pci and opened
	// for the VMM (passthrough.go).
	devs, err := f.devices.claim(vm.Name, vm.Devices)
	if err != nil {
		return nil, err
	}
	defer devs.Close()
	for _, l := range devs.said {
		f.c.Printf("vm %s: %s", vm.Name, l)
	}
	// NUMA first: the huge page check reads the pools of the nodes it names.
	if err := checkNUMA(vm); err != nil {
		return nil, err
	}
	if err := checkHugePages(vm); err != nil {
		return nil, err
	}
	// Its cgroup, with the limits as configured or as last changed live.
	e.mu.Lock()
	vm.QoS = e.qos
	e.mu.Unlock()
	began := time.Now()
	g, err := f.cg.vmGroup(vm)
	if err != nil {
		return nil, err
	}
	setup := time.Since(began) // the cgroup's share of the VM's start
	args := vmmcli.ForVM(vm, switchDir)
	opened.withBacking(&args)
	extra := opened.extra()
	args.Devices = devs.args(vmmcli.FirstFD + len(extra))
	extra = append(extra, devs.files...)
	if args.NUMADistances, err = guestDistances(vm.NUMA); err != nil {
		return nil, err
	}
	if err := placeVCPUs(&args); err != nil {
		return nil, err
	}
	// Inherited from PID 1, which the kernel gives unknown NAME=value
	// command-line words as environment; the VMM itself gets none.
	args.Trace = os.Getenv("HYPERROOT_VMM_TRACE") == "1"
	attr := jail.Attr()
	if f.unjailed {
		attr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	}
	var oom uint64
	if g != nil {
		// Cloned straight into it: no guest instruction runs outside.
		dir, err := g.Dir()
		if err != nil {
			g.Remove(0)
			return nil, err
		}
		defer dir.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(dir.Fd())
		oom, _ = g.OOMKills()
	}
	// Its SELinux domain and disk labels, before anything of it runs.
	label, unlabel, err := f.sv.labelVM(all, disks, devs.groups())
	e.mu.Lock()
	e.group, e.oom, e.unlabel = g, oom, unlabel
	e.mu.Unlock()
	if err != nil {
		f.dropGroup(e)
		return nil, err
	}
	args.Seccomp = f.seccomp.Mode()
	args.DumpTag = newDumpTag()
	refusals := 0 // refused reconnections seen, up to the last described
	spec := child.Spec{
		Path: selfPath(), Args: args.Argv(),
		// The VMM jails itself once set up (--jail): it starts in
		// namespaces of its own, with no environment and no descriptor
		// but its disks and standard streams.
		Env: []string{}, Attr: attr,
		// In its PID namespace, a SIGTERM it does not handle yet is lost.
		StopReady:  func(pid int) bool { return ignores(pid, stopReadySignal) },
		ExtraFiles: extra, Stdin: true,
		Started: func(pid int) {
			e.pid.Store(int64(pid))
			e.starts.Add(1)
			f.seccomp.Track(pid, vm.Name)
			ctx := ""
			if label != "" {
				ctx = " selinux=" + label
			}
			if g != nil {
				ctx += fmt.Sprintf(" cgroup=%.1fms", float64(setup.Microseconds())/1000)
			}
			f.c.Printf("vm %s started pid=%d cpus=%d memory=%s%s", vm.Name, pid, vm.CPUs, vm.Memory, ctx)
		},
		Line: guardLines(f.c, "vm "+vm.Name+" console", func(line string) {
			// Only the lines with this start's tag are the VMM's dump;
			// its guest could print anything else (init/dump.go).
			if rest, ok := strings.CutPrefix(line, kvmStatsPrefix(args.DumpTag)); ok {
				// The VMM's counts, for /metrics; not relayed.
				if st, ok := parseKVMStats(rest); ok {
					e.mu.Lock()
					e.kvm = st
					e.mu.Unlock()
				}
				return
			}
			if rest, ok := strings.CutPrefix(line, diskStatsPrefix(args.DumpTag)); ok {
				if i, st, ok := parseDiskStats(rest); ok {
					e.mu.Lock()
					if e.disks == nil {
						e.disks = map[int]blk.Stats{}
					}
					e.disks[i] = st
					e.mu.Unlock()
				}
				return
			}
			relayed, dump := dumpLine(line, args.DumpTag)
			f.c.Relay(vm.Name, relayed)
			if refusals < 3 && refusedReconnect(line) {
				// The first refusal and the third (the new switch is
				// up by then), once per start: its guest could print
				// the same.
				refusals++
				if refusals != 2 {
					f.c.Printf("vm %s: its NIC sockets: %s", vm.Name, describeSockets(switchDir, vm, "/proc", int(e.pid.Load())))
				}
			}
			f.consoles.publish(vm.Name, cutLine(relayed))
			if dump {
				notify(e.begun)
				if relayed == dumpPrefix+dumpEnd {
					notify(e.dumped)
				}
			}
		}),
	}
	if f.unjailed {
		spec.Env, spec.StopReady = nil, nil
	}
	p, err := child.Start(f.sv.starter(f.r, label), spec)
	if err != nil {
		f.dropGroup(e)
	}
	return p, err
}

// dropGroup removes the cgroup of e's VMM, which has exited (or never
// started), undoes its disks' SELinux labels, and says what limits the
// VMM ran into: whether the OOM killer ended it, whether it was refused a
// thread or process by pids.max.
func (f *fleet) dropGroup(e *vmEntry) (oom, pids bool) {
	e.mu.Lock()
	g, before, unlabel := e.group, e.oom, e.unlabel
	e.group, e.unlabel = nil, nil
	e.mu.Unlock()
	if unlabel != nil {
		unlabel()
	}
	if g == nil {
		return false, false
	}
	if n, err := g.OOMKills(); err == nil && n > before {
		oom = true
	}
	// The group is the VMM's alone, made for this start.
	if ev, err := g.Keyed("pids.events"); err == nil && ev["max"] > 0 {
		pids = true
	}
	if err := g.Remove(2 * time.Second); err != nil {
		f.c.Errorf("cgroups", err)
	}
	return oom, pids
}

// exited reports a VMM's exit and says whether its policy restarts it.
// A VMM the kernel's OOM killer ended (its group reached memory.max) is
// reported with reason=oom rather than as any other SIGKILL; one killed by
// SIGSYS was killed by its seccomp filter, and the reason names the system
// call, from the kernel's record of it. One that failed after pids.max
// refused it a thread (the Go runtime cannot go on without one) is
// reported with reason=pids.
func (f *fleet) exited(vm config.VM, e *vmEntry, ws unix.WaitStatus) bool {
	clean := vmmcli.Clean(ws)
	reason := vmmcli.Reason(ws)
	pid := int(e.pid.Load())
	oom, pids := f.dropGroup(e)
	switch {
	case oom && ws.Signaled() && ws.Signal() == unix.SIGKILL:
		reason = "oom"
	case pids && !clean:
		reason = "pids"
	}
	if ws.Signaled() && ws.Signal() == unix.SIGSYS {
		reason = vmmcli.SeccompReason(f.seccomp.Killed(pid))
	} else {
		f.seccomp.Forget(pid)
	}
	f.c.Printf("vm %s exited code=%d reason=%s", vm.Name, vmmcli.Code(ws), reason)
	e.mu.Lock()
	if e.exits == nil {
		e.exits = map[string]uint64{}
	}
	kind, _, _ := strings.Cut(reason, " ")
	e.exits[kind]++
	e.mu.Unlock()
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

// stopEntry ends the supervision of VM name: SIGTERM (its VMM presses the
// guest's ACPI power button until the guest is off), then SIGKILL after
// the VM's stop timeout.
func (f *fleet) stopEntry(name string, e *vmEntry) {
	grace := e.vm.StopGrace()
	e.sup.Stop(grace, func() { f.c.Printf("vm %s did not stop within %s: killing it", name, grace) })
}

// Stop asks every VMM to shut its guest down (SIGTERM: the VMM presses the
// guest's ACPI power button), then kills what is left after each VM's stop
// timeout.
func (f *fleet) Stop() {
	f.mu.Lock()
	if !f.stopping {
		close(f.quit)
	}
	f.stopping = true
	var wg sync.WaitGroup
	for name, e := range f.vms {
		wg.Add(1)
		goGuarded(f.c, "stop vm "+name, func() {
			defer wg.Done()
			f.stopEntry(name, e)
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
		if cmd, arg, _ := strings.Cut(line, " "); cmd == "qos" {
			name, text, _ := strings.Cut(strings.TrimSpace(arg), " ")
			if out, err := f.QoS(name, text); err != nil {
				c.Printf("console: %v", err)
			} else {
				c.Printf("%s", out)
			}
			continue
		}
		if cmd, arg, _ := strings.Cut(line, " "); cmd == "stop" || cmd == "start" || cmd == "restart" {
			name := strings.TrimSpace(arg)
			// On a goroutine of its own: a stop waits for the guest.
			goGuarded(c, cmd+" "+name, func() {
				var err error
				if cmd != "start" {
					err = f.StopVM(name)
				}
				if err == nil && cmd != "stop" {
					err = f.StartVM(name)
				}
				if err != nil {
					c.Printf("console: %s: %v", cmd, err)
				}
			})
			continue
		}
		if line == "hugepages" {
			if s := hugePagesStatus(); s != "" {
				c.Printf("hugepages: %s", s)
			} else {
				c.Printf("hugepages: none reserved")
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
			c.Printf("console: type \"@<vm> <text>\" to send a line to a VM's console (\"@run <text>\" to the hyperroot.run job), \"dump [<vm>...]\" to dump VMMs' state, \"qos <vm> [<qos>]\" to see or change a VM's limits, \"stop|start|restart <vm>\", \"hugepages\", or \"switch kill\"")
			continue
		}
		input := f.Input
		if name == "run" { // a reserved VM name
			input = func(_, text string) error { return runInput(text) }
		}
		if err := input(name, text); err != nil {
			c.Printf("console: %v", err)
		}
	}
}
