package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/boot/diskboot"
	"github.com/hyperroot/hyperroot/vmm/machine"
	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// vmmMain is `hyperroot vmm`: one VM, console on stdio. The supervisor runs
// it for each configured VM; on any Linux host with KVM it boots a kernel
// the way `qemu-system-x86_64 -kernel` does.
func vmmMain(args []string) int {
	began := time.Now()
	withoutTHP()
	// SIGTERM and SIGINT are handled from the start: a jailed VMM is the
	// init of its PID namespace, for which the kernel drops a signal that
	// has no handler (and Go's way of dying of one, raising it again with
	// the default action), so it must exit by itself. Ignoring
	// stopReadySignal says so to the supervisor, which waits for it
	// before it sends SIGTERM (see vms.go).
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT)
	signal.Ignore(stopReadySignal)
	a, err := vmmcli.Parse(args, os.Stderr)
	if err != nil {
		return vmmcli.ExitUsage
	}
	fail := func(format string, v ...any) int {
		fmt.Fprintf(os.Stderr, "hyperroot vmm: "+format+"\n", v...)
		return vmmcli.ExitError
	}
	if len(a.PinEmulator) > 0 {
		// First: every thread made from here on inherits it.
		if err := pinProcess(a.PinEmulator); err != nil {
			return fail("%v", err)
		}
	}
	// From here on a dump request (SIGUSR1, from the supervisor's "dump"
	// command or its oneshot timeout) is answered, at first with "no
	// machine yet"; Go ignores the signal before this, it never kills.
	var built atomic.Pointer[machine.Machine]
	go answerDumps(&built, a.DumpTag)
	if a.DumpTag != "" { // supervised: PID 1 takes them for /metrics
		go reportStats(&built, a.Name, a.DumpTag, os.Stderr, statsEvery)
	}
	go stopOnSignals(a.Name, &built, sigc)
	tuneRuntime()
	mem, err := config.ParseSize(a.Memory)
	if err != nil {
		return fail("memory: %v", err)
	}
	if mem%(4<<10) != 0 {
		return fail("memory %s: want a multiple of 4K", a.Memory)
	}
	cfg := machine.Config{Cmdline: a.Cmdline, CPUs: a.CPUs, Memory: uint64(mem), Console: os.Stdout,
		Trace: a.Trace}
	switch a.HugePages {
	case "":
	case "2M":
		cfg.HugePages = 2 << 20
	case "1G":
		cfg.HugePages = 1 << 30
	default:
		return fail("hugepages %q: want 2M or 1G", a.HugePages)
	}
	if err := numaConfig(a, &cfg); err != nil {
		return fail("%v", err)
	}
	// The kernel and initrd are only read while New copies them into
	// guest RAM: mapped, they never become Go heap, whose peak would
	// otherwise be their size (tens of MiB) and whose bookkeeping for
	// that peak would stay after they are freed.
	var kernelMap, initrdMap mappedFile
	defer kernelMap.Close()
	defer initrdMap.Close()
	if !a.BootDisk {
		if kernelMap, err = mapFile(a.Kernel); err != nil {
			return fail("kernel: %v", err)
		}
		cfg.Kernel = kernelMap.Bytes()
	}
	if a.Initrd != "" {
		if initrdMap, err = mapFile(a.Initrd); err != nil {
			return fail("initrd: %v", err)
		}
		cfg.Initrd = initrdMap.Bytes()
	}
	for i, d := range a.Disks {
		f, err := openDiskArg(d)
		if err != nil {
			return fail("%s: %v", d.Label(i), err)
		}
		defer f.Close()
		backing, err := backingArgs(d, f)
		if err != nil {
			return fail("%s: %v", d.Label(i), err)
		}
		for _, b := range backing {
			defer b.File.Close()
		}
		cfg.Disks = append(cfg.Disks, machineDisk(d, f, backing))
	}
	for _, n := range a.NICs {
		cfg.NICs = append(cfg.NICs, machineNIC(n))
	}
	for _, d := range a.Devices {
		container, group := os.NewFile(uintptr(d.Container), "/dev/vfio/vfio"), os.NewFile(uintptr(d.Group), "vfio group")
		defer container.Close()
		defer group.Close()
		cfg.Devices = append(cfg.Devices, machine.Device{PCI: d.PCI, Container: container, Group: group})
	}
	if a.BootDisk {
		b, err := bootDisk(cfg.Disks[0], a.BootEntry)
		if err != nil {
			return fail("%s: %s: %v", a.Name, a.Disks[0].Label(0), err)
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: booting %s: %s (kernel %d bytes, initrd %d bytes)\n", a.Name, a.Disks[0].Label(0), b.Source, len(b.Kernel), len(b.Initrd))
		cfg.Kernel, cfg.Initrd = b.Kernel, b.Initrd
		cfg.Cmdline = strings.TrimSpace(b.Cmdline + " " + cfg.Cmdline)
	}
	start := time.Now()
	m, err := machine.New(cfg)
	if err != nil {
		return fail("%s: %v", a.Name, err)
	}
	defer m.Close()
	buildTime := time.Since(start)
	setProcs(m, a.CPUs)
	// stdout is the guest's console: the VMM's own notes go to stderr.
	for i, kind := range m.DiskBackends() {
		if cfg.Disks[i].Direct {
			kind += ", O_DIRECT"
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: disk %d: %s\n", i, kind)
	}
	// The kernel and initrd are in guest memory now: unmap them, and
	// hand what building the machine left free back to the host.
	cfg.Kernel, cfg.Initrd = nil, nil
	kernelMap.Close()
	initrdMap.Close()
	debug.FreeOSMemory()

	if os.Getenv("HYPERROOT_VMM_MEMSTATS") == "1" {
		go reportMemStats(os.Stderr)
	}
	if code, ran := escapeAt("setup", a); ran {
		return code
	}
	if a.Jail != 0 {
		// Everything the VMM uses is open or mapped by now: KVM, guest
		// RAM, the disks and their io_uring rings, the NICs' connections.
		// What it will still reach by path is its NICs' socket
		// directories, to reconnect when the switch restarts. Each vCPU
		// holds a few descriptors (its own, KVM's counters of it, ...).
		rep, err := jail.Enter(jail.Config{UID: a.Jail, GID: a.Jail, Binds: nicDirs(a.NICs),
			Files: jail.DefaultFiles + 3*uint64(a.CPUs), FileSize: largestWritable(cfg.Disks)})
		if err != nil {
			return fail("%s: %v", a.Name, err)
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: jailed uid=%d (%s)\n", a.Name, a.Jail, rep)
	}
	if code, ran := escapeAt("jailed", a); ran {
		return code
	}
	go feedConsole(m, os.Stdin)
	built.Store(m)
	if place := vcpuPlacement(a); place != nil {
		m.OnVCPUThread(place)
	}
	// Last, once nothing is left to set up: from here on the VMM makes
	// only the system calls a running machine needs.
	if err := confineVMM(m, a.Seccomp); err != nil {
		return fail("%s: %v", a.Name, err)
	}
	if code, ran := escapeAt("running", a); ran {
		return code
	}
	go func() {
		<-m.Running()
		fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: %d vCPUs running %s after start (machine built in %s: %s)\n",
			a.Name, a.CPUs, time.Since(began).Round(time.Millisecond), buildTime.Round(time.Millisecond), m.BuildSteps())
	}()
	r := m.Run()
	fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: %s after %s (%s)\n", a.Name, r.Exit, time.Since(start).Round(time.Millisecond), r.Detail)
	all, io, mmio := m.Exits()
	fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: exits %d (io %d, mmio %d)\n", a.Name, all, io, mmio)
	if a.DumpTag != "" {
		// The last counts, for a VM that lived less than a period.
		writeKVMStats(m, a.DumpTag, os.Stderr)
		writeDiskStats(m, a.DumpTag, os.Stderr)
	}
	if n := m.ConsoleDropped(); n > 0 {
		// The serial console never blocks a vCPU for long: what a stalled
		// reader could not take was dropped, and is owned up to here.
		fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: console dropped %d bytes (its reader fell behind)\n", a.Name, n)
	}
	switch r.Exit {
	case machine.ExitPoweroff:
		return vmmcli.ExitPoweroff
	case machine.ExitReboot:
		return vmmcli.ExitReboot
	case machine.ExitCrash:
		return vmmcli.ExitCrash
	}
	return vmmcli.ExitStopped
}

// stopOnSignals answers SIGTERM and SIGINT: the first presses the guest's
// ACPI power button, the second stops the VM at once. One that comes
// before the machine runs ends the VMM (ExitStopped): there is no guest to
// ask yet.
func stopOnSignals(name string, built *atomic.Pointer[machine.Machine], sigc <-chan os.Signal) {
	sig := <-sigc
	m := built.Load()
	if m == nil {
		fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: %s before the guest ran: stopping\n", name, sig)
		os.Exit(vmmcli.ExitStopped)
	}
	pressUntilOff(m, sigc, time.NewTicker(repressEvery).C)
}

// repressEvery is how often a VMM asked to stop presses the power button
// again while its guest runs on.
const repressEvery = 2 * time.Second

// powerControl is what pressUntilOff needs of a machine.
type powerControl interface {
	PowerButton()
	Stop()
}

// pressUntilOff presses the guest's power button now and again on every
// tick, until a second signal on sigc stops the machine at once (the
// process ends when the guest powers off). One press is not enough: a
// guest still booting loses it, as a PC's OS does a press before its ACPI
// is up (Linux's GED interrupt fires when its driver loads, and the
// notification is dropped while the button driver is not yet bound or no
// one reads the input device), and it would run on until its supervisor's
// grace kills it. A guest already shutting down takes a further press as
// the same request (systemd's logind finds its power-off job queued).
func pressUntilOff(m powerControl, sigc <-chan os.Signal, tick <-chan time.Time) {
	m.PowerButton()
	for {
		select {
		case <-tick:
			m.PowerButton()
		case <-sigc:
			m.Stop() // asked twice: stop now
			return
		}
	}
}

// nicDirs are the directories of the NICs' sockets, which the jail keeps.
func nicDirs(nics []vmmcli.NIC) []string {
	var dirs []string
	for _, n := range nics {
		if d := filepath.Dir(n.Socket); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// largestWritable is the size of the largest disk the guest may write: in
// the jail, no write reaches further into any file (RLIMIT_FSIZE).
func largestWritable(disks []machine.Disk) uint64 {
	var n uint64
	for _, d := range disks {
		if d.ReadOnly || d.File == nil {
			continue
		}
		s, err := block.SizeOf(d.File)
		if err != nil {
			continue
		}
		size := uint64(s)
		if d.Qcow2 {
			// A qcow2 image grows as the guest writes: by at most one
			// cluster per guest cluster (a cluster is allocated once,
			// then written in place, also after a discard) and its
			// tables.
			if h, err := readHeader(d.File); err == nil {
				size += h.Size + h.Size/32 + 64*uint64(h.ClusterSize())
			}
		}
		n = max(n, size)
	}
	return n
}

// confineVMM loads the VMM's seccomp filters (vmm/seccomp) in mode
// (--seccomp): the process-wide one now, on every thread, and each vCPU
// thread's own as the thread starts, after whatever else was asked of that
// thread (its CPU pinning). It must be the last thing the VMM does to
// itself before the guest runs.
func confineVMM(m *machine.Machine, mode string) error {
	md, err := seccomp.ParseMode(mode)
	if err != nil {
		return err
	}
	o := seccomp.Options{Passthrough: m.Passthrough()}
	m.OnVCPUThread(func(int) error {
		if err := seccomp.VCPUThread(md, o); err != nil {
			return err
		}
		if testHookVCPUConfined != nil {
			testHookVCPUConfined()
		}
		return nil
	})
	return seccomp.Process(md, o)
}

// testHookVCPUConfined, when not nil, runs on each vCPU thread right after
// its filter is loaded. Only init's tests set it (seccomp_test.go): their
// VMM child makes a call the filter refuses there, as a guest that took
// the VMM over would, to prove the supervisor's report. It is a variable
// of the test binary's making rather than a flag, so that no command line
// (the supervisor's, a user's) and no guest can reach it.
var testHookVCPUConfined func()

// Settings of the Go runtime for the VMM role, chosen by measuring a VMM
// with 1 vCPU and 256 MiB booting Linux in the appliance (README,
// Measured). Its data paths do not allocate, so the garbage collector only
// ever runs for what building the machine and rare control-path events
// (PCI programming, reconnections) leave behind: a small heap goal costs
// no measurable CPU and keeps that garbage from holding pages.
const (
	// vmmGCPercent makes the heap goal (and with it the Go runtime's
	// minimum heap of 4 MiB at GOGC=100) a quarter of the default.
	vmmGCPercent = 25
	// vmmMemoryLimit bounds the Go runtime's memory (heap, stacks and its
	// own structures, not guest RAM): near it, the collector runs more
	// often and the scavenger returns free pages sooner. It is a soft
	// limit, far above the few MiB a VMM uses, so a VMM that really needs
	// more (many disks in flight) only collects more often.
	vmmMemoryLimit = 64 << 20
)

// tuneRuntime applies the VMM role's memory settings (setProcs its Ps,
// once the machine is built); GOGC and GOMEMLIMIT in the environment still
// win, for experiments.
func tuneRuntime() {
	// Nothing reads a memory profile in a VMM, and sampling one keeps a
	// 1.4 MiB bucket table (resident where the samples fall).
	runtime.MemProfileRate = 0
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(vmmGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(vmmMemoryLimit)
	}
}

// setProcs gives the built machine its Ps, unless GOMAXPROCS is in the
// environment (vmmProcs).
func setProcs(m *machine.Machine, cpus int) {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(vmmProcs(m.Procs(), cpus, runtime.NumCPU()))
	}
}

// vmmProcs is the GOMAXPROCS of a VMM whose machine asks for procs
// (machine.Procs: a P for each thread that keeps one while it waits in a
// system call) and has cpus vCPUs, on a host of hostCPUs: procs, raised
// past the host's CPUs where that is fewer (or those threads would give
// their Ps up) up to maxProcs. A larger machine on a smaller host gets the
// host's CPUs at most, and cpus+1 at most (one P per vCPU handling an exit
// and one for its devices), and its threads give their Ps up in each wait:
// the scheduler walks every P when a thread looks for work and the
// collector stops each, so 1026 Ps on a one-CPU appliance starved its
// guest (TestMaxVCPUs: the guest's CPU 0 soft-locked bringing up the
// others; it passes in 58 s with one P). Every P also costs a cache of
// heap spans and a GC worker goroutine. Set after the build, which has
// checked the vCPU count against KVM's limit.
func vmmProcs(procs, cpus, hostCPUs int) int {
	if procs <= max(hostCPUs, maxProcs) {
		return procs
	}
	return min(hostCPUs, cpus+1)
}

// maxProcs is the most Ps vmmProcs gives a VMM beyond the host's CPUs.
const maxProcs = 16

// withoutTHP re-executes the VMM with transparent huge pages disabled for
// its process (PR_SET_THP_DISABLE survives execve) when the host's THP
// mode is "always", as on Debian's kernels outside the appliance (a VMM
// run by hand): there, the first touch of the Go runtime's sparse
// structures in the binary's 37 MiB bss and in the heap arena faults in a
// whole 2 MiB page, and khugepaged collapses any 2 MiB range with one page
// in use: the boot benchmark measured 9.8-11.8 MiB private where 4 KiB
// pages need 1.8. It must happen before the runtime touches that memory,
// hence the exec. The flag also keeps guest RAM (a memfd madvised for huge
// pages, vmm/memory) in 4 KiB pages, which is why the appliance's PID 1
// sets THP to "madvise" instead (init/hugepages.go guestTHP), where the
// flag is never needed. When the flag is already set (by the parent, or by
// the first exec) or anything fails, it does nothing.
func withoutTHP() {
	if len(os.Args) < 2 || os.Args[1] != vmmcli.Command {
		return // not started as `hyperroot vmm` (a test calling vmmMain): nothing to re-execute
	}
	if off, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0); err != nil || off != 0 {
		return
	}
	// Only where THP is "always": the flag is the whole process's, guest
	// RAM included, which takes huge pages where the host allows them
	// (memory.New's MADV_HUGEPAGE; the appliance's PID 1 sets THP to
	// madvise and shmem to advise, so it never needs the flag).
	mode, err := os.ReadFile(filepath.Join(thpDir, "enabled"))
	if err != nil || !bytes.Contains(mode, []byte("[always]")) {
		return // what the runtime touches is in 4 KiB pages already
	}
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
		return
	}
	err = unix.Exec("/proc/self/exe", os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "hyperroot vmm: re-exec without transparent huge pages: %v (continuing with them)\n", err)
}

// mappedFile is a file mapped read-only, or read into memory where it
// could not be mapped; the zero value is an empty file.
type mappedFile struct {
	b      []byte
	mapped bool // b is a mapping of its own, to unmap
}

// mapFile maps path privately and read-only. Files mmap refuses (pipes,
// /proc) are read into memory instead.
func mapFile(path string) (mappedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return mappedFile{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return mappedFile{}, err
	}
	if st.Mode().IsRegular() && st.Size() > 0 && st.Size() == int64(int(st.Size())) {
		if b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE); err == nil {
			return mappedFile{b: b, mapped: true}, nil
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return mappedFile{}, err
	}
	return mappedFile{b: b[:len(b):len(b)]}, nil
}

// Bytes is the file's content, valid until Close.
func (m *mappedFile) Bytes() []byte { return m.b }

// Close unmaps the file; it may be called more than once.
func (m *mappedFile) Close() error {
	b, mapped := m.b, m.mapped
	m.b, m.mapped = nil, false
	if !mapped {
		return nil
	}
	return unix.Munmap(b)
}

// feedConsole copies stdin to the guest's serial port, waiting (rather
// than dropping) when the guest is slow to read.
func feedConsole(m *machine.Machine, in io.Reader) {
	buf := make([]byte, 512)
	for {
		n, err := in.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			k := m.Input(p)
			p = p[k:]
			if len(p) > 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if err != nil {
			return
		}
	}
}

// reportMemStats writes the Go runtime's account of the VMM's memory to w
// on each SIGUSR2 (HYPERROOT_VMM_MEMSTATS=1): the boot benchmark asks for
// it to tell heap, stacks and runtime structures apart, which /proc alone
// cannot once the kernel names no anonymous mapping.
func reportMemStats(w io.Writer) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, unix.SIGUSR2)
	for range c {
		var s runtime.MemStats
		runtime.ReadMemStats(&s)
		kib := func(n uint64) uint64 { return n >> 10 }
		fmt.Fprintf(w, "hyperroot vmm: memstats heap-inuse=%dKiB heap-free=%dKiB heap-released=%dKiB stacks=%dKiB "+
			"spans=%dKiB gc=%dKiB other=%dKiB profiling=%dKiB goroutines=%d gcs=%d gomaxprocs=%d\n",
			kib(s.HeapInuse), kib(s.HeapIdle-s.HeapReleased), kib(s.HeapReleased), kib(s.StackInuse),
			kib(s.MSpanInuse+s.MCacheInuse), kib(s.GCSys), kib(s.OtherSys), kib(s.BuckHashSys),
			runtime.NumGoroutine(), s.NumGC, runtime.GOMAXPROCS(0))
	}
}

// answerDumps writes the machine's state to stderr (lines that start with
// dumpLinePrefix(tag), the last one ending in dumpEnd) on each dumpSignal;
// see init/dump.go.
func answerDumps(m *atomic.Pointer[machine.Machine], tag string) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, dumpSignal)
	prefix := dumpLinePrefix(tag)
	for range c {
		if mm := m.Load(); mm != nil {
			mm.Dump(os.Stderr, prefix)
			continue
		}
		fmt.Fprintf(os.Stderr, "%sno machine yet (the VMM is still building it)\n%s%s\n", prefix, prefix, dumpEnd)
	}
}

// statsEvery is how often a supervised VMM reports KVM's counts of its
// vCPUs and its disks' counters, for /metrics: as often as the switch
// reports its ports.
const statsEvery = 10 * time.Second

// reportStats writes, every period once the machine is built, a line
// "hyperroot vmm: stats <tag>: <counter>=<n> ..." with the counters of
// kvmReported that KVM has, summed over the vCPUs, and a line per disk
// (diskstats.go). The tag, this start's secret, tells PID 1 the lines are
// the VMM's, not its guest's.
func reportStats(m *atomic.Pointer[machine.Machine], name, tag string, w io.Writer, period time.Duration) {
	kvm := true
	var refaults refaultWatch
	for range time.Tick(period) {
		if mm := m.Load(); mm != nil {
			// Between two of the guest's lines: stderr and the
			// console share PID 1's pipe, and a stats line in the
			// middle of a guest's line spoils both (seen in CI: a
			// sha256 the guest printed, cut in two).
			mm.BetweenLines(time.Second, func() {
				// A kernel without KVM statistics has none, ever.
				kvm = kvm && writeKVMStats(mm, tag, w)
				writeDiskStats(mm, tag, w)
				if kvm {
					refaults.check(mm, name, w, period)
				}
			})
		}
	}
}

// refaultWatch says when KVM keeps injecting page faults into a vCPU,
// each after emulating an instruction, thousands of times a second: the
// vCPU makes no progress, and nothing of it reaches the VMM (nested under
// TCG, KVM's or the emulator's walk of the guest's tables disagreeing
// with the guest's; see docs/TESTING.md). With nested paging KVM injects
// a page fault only when its instruction emulator hits one, which a
// working guest makes a few times at most: the line says so at once
// instead of leaving a silent guest to its watchdogs.
type refaultWatch struct {
	pf, emu []uint64
	told    []bool
}

// refaultRate is the injected faults a second, each with an emulated
// instruction, that make refaultWatch speak: the loops seen ran at
// 21000-26000 a second.
const refaultRate = 2000

func (r *refaultWatch) check(m *machine.Machine, name string, w io.Writer, period time.Duration) {
	pf, err1 := m.VCPUCounter("pf_guest")
	emu, err2 := m.VCPUCounter("insn_emulation")
	if err1 != nil || err2 != nil {
		return
	}
	for _, i := range r.next(pf, emu, period) {
		fmt.Fprintf(w, "hyperroot vmm: %s: vcpu %d: KVM injected %d page faults in %s, each after emulating an instruction: the vCPU makes no progress\n",
			name, i, pf[i]-r.pf[i], period)
	}
	r.pf, r.emu = pf, emu
}

// next returns the vCPUs to report, given each vCPU's counts now and
// period after the last ones; each is reported once.
func (r *refaultWatch) next(pf, emu []uint64, period time.Duration) []int {
	if len(r.pf) != len(pf) || len(r.emu) != len(emu) || len(pf) != len(emu) {
		r.told = make([]bool, len(pf))
		return nil
	}
	var out []int
	for i := range pf {
		dpf, demu := pf[i]-r.pf[i], emu[i]-r.emu[i]
		if !r.told[i] && float64(dpf) >= refaultRate*period.Seconds() && demu >= dpf*9/10 {
			r.told[i] = true
			out = append(out, i)
		}
	}
	return out
}

// writeDiskStats writes one line of counters per disk of m.
func writeDiskStats(m *machine.Machine, tag string, w io.Writer) {
	for i, st := range m.DiskStats() {
		// One write a line (each well under PIPE_BUF): the pipe is
		// shared with the guest's console, and a longer write could be
		// split around another line.
		var b strings.Builder
		b.WriteString(diskStatsPrefix(tag))
		formatDiskStats(&b, i, st)
		b.WriteByte('\n')
		io.WriteString(w, b.String())
	}
}

// writeKVMStats writes one stats line for m, or reports false when KVM
// has no statistics.
func writeKVMStats(m *machine.Machine, tag string, w io.Writer) bool {
	sum, err := m.KVMTotals()
	if err != nil {
		return false
	}
	var b strings.Builder
	b.WriteString(kvmStatsPrefix(tag))
	for _, name := range kvmReported {
		if v, ok := sum[name]; ok {
			fmt.Fprintf(&b, " %s=%d", name, v)
		}
	}
	b.WriteByte('\n')
	io.WriteString(w, b.String())
	return true
}

// kvmReported are KVM's vCPU counters a VMM reports: every exit, and the
// exits by cause, the interrupts KVM injected, the faults it fixed.
var kvmReported = []string{"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits",
	"irq_window_exits", "nmi_window_exits", "request_irq_exits", "signal_exits",
	"insn_emulation", "irq_injections", "nmi_injections", "pf_fixed", "halt_wakeup"}

// parseKVMStats reads the counters of a VMM's stats line (after its
// prefix): known names only, each once, whole numbers. The VMM is jailed
// but runs device models a guest drives: its lines are not trusted.
func parseKVMStats(s string) (map[string]uint64, bool) {
	fields := strings.Fields(s)
	if len(fields) > len(kvmReported) {
		return nil, false
	}
	out := make(map[string]uint64, len(fields))
	for _, f := range fields {
		name, val, ok := strings.Cut(f, "=")
		v, err := strconv.ParseUint(val, 10, 64)
		if _, dup := out[name]; !ok || err != nil || dup || !slices.Contains(kvmReported, name) {
			return nil, false
		}
		out[name] = v
	}
	return out, true
}

// kvmStatsPrefix starts a VMM's stats line.
func kvmStatsPrefix(tag string) string { return "hyperroot vmm: stats " + tag + ":" }

// numaConfig turns the VMM's --numa-bind and --numa-node flags into the
// machine's NUMA nodes: one bound node without a topology in the guest,
// or the guest's nodes, each with its vCPUs, its RAM and its host node.
func numaConfig(a vmmcli.Args, cfg *machine.Config) error {
	if a.NUMABind != nil && len(a.NUMANodes) > 0 {
		return errors.New("numa: --numa-bind binds the whole guest, --numa-node each of its nodes: give one of them")
	}
	if a.NUMABind != nil {
		cfg.MemNodes = []memory.Node{{Size: cfg.Memory, HostNode: *a.NUMABind}}
		return nil
	}
	for i, n := range a.NUMANodes {
		size, err := config.ParseSize(n.Memory)
		if err != nil {
			return fmt.Errorf("numa node %d: memory: %v", i, err)
		}
		host := -1
		if n.Host != nil {
			host = *n.Host
		}
		cfg.MemNodes = append(cfg.MemNodes, memory.Node{Size: uint64(size), HostNode: host})
		cfg.NodeCPUs = append(cfg.NodeCPUs, n.CPUs)
	}
	if d := a.NUMADistances; len(d) > 0 {
		n := len(a.NUMANodes)
		if len(d) != n*n {
			return fmt.Errorf("numa: --numa-distances has %d values, want %d for %d nodes", len(d), n*n, n)
		}
		for i := 0; i < n; i++ {
			row := make([]uint8, n)
			for j := range row {
				row[j] = uint8(d[i*n+j]) // 10-254: vmmcli.Parse checked
			}
			cfg.NodeDistances = append(cfg.NodeDistances, row)
		}
	}
	return nil
}

// bootDisk finds what disk d's boot loader configuration boots, reading
// the disk as the guest will see it (through its qcow2 image and backing
// chain, if it has them). It runs before the jail, in the VMM's own
// namespaces: the disk is the guest's and hostile, and go-diskfs reads it
// with every file bounded (vmm/boot/diskboot).
func bootDisk(d machine.Disk, entry string) (*diskboot.Boot, error) {
	r, size, err := machine.DiskReader(d)
	if err != nil {
		return nil, err
	}
	return diskboot.Find(r, size, entry)
}
