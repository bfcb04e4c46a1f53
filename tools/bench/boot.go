package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/bench/result"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
)

// The boot benchmark (hyperroot-bench boot, in an image built with
// `mkimage -bench`, which adds the peer VMMs gokvm as /bin/gokvm and QEMU):
// every VMM boots the same guest kernel and initramfs with the same
// command line, in turn, in the same appliance run; the time from starting
// the VMM process to the guest's init printing "guest: booted" is
// compared. The machine is shared and noisy, so only the ratio of medians
// measured side by side means anything.
//
// hyperroot boots twice per round: as a plain child, and as the
// supervisor starts it (namespaces of its own, the jail entered once the
// machine is set up, the seccomp filters), which is what the jail costs a
// VM's start.

const (
	benchRounds = 3
	// bootRounds is the boot benchmark's: its boots are short, and with
	// the order rotating each round (roundOrder) more rounds put more
	// contenders first.
	bootRounds   = 5
	benchCmdline = "console=ttyS0 quiet panic=-1 hyperroot.guest=wait"
	benchMemory  = "256M"
	gokvmPath    = "/bin/gokvm"
	// bootTimeout is how long a boot may take before the VMM is counted
	// as hung: a VMM's boot takes 5-20 s in the emulated appliance.
	bootTimeout = 3 * time.Minute
	// benchJailID is the jailed VMM's uid and gid: the first of the
	// range the appliance gives its VMs by default.
	benchJailID = 200000
)

type benchPeer struct {
	name string
	argv []string
	// ready, when not nil, says whether a console line ends the boot
	// (default: the test guest's "guest: booted"); timeout, when not 0,
	// replaces bootTimeout.
	ready   func(line string) bool
	timeout time.Duration
	// attr, when not nil, gives each start its process attributes
	// (namespaces); nil starts a plain child.
	attr func() *syscall.SysProcAttr
}

// bootPeers are the contenders, hyperroot first: its figures are the
// numerators of every ratio.
func bootPeers(hyperroot string) []benchPeer { return bootPeersWith(hyperroot, benchCmdline) }

// bootPeersWith is bootPeers with the guest's kernel command line.
func bootPeersWith(hyperroot, cmdline string) []benchPeer {
	// hyperroot boots the kernel unpacked (image.UnpackVmlinux), as the
	// appliance's configurations do; the bzImage too, to show what that
	// saves. QEMU boots the bzImage, as `-kernel` usually gets, and the
	// vmlinux on pc through its PVH entry: the same saving offered to it.
	bz, elf, initrd := "/guest/vmlinuz", "/guest/vmlinux", "/guest/initramfs.cpio"
	ours := vmmcli.Args{Name: "bench", Kernel: elf, Initrd: initrd, Cmdline: cmdline, CPUs: 1, Memory: benchMemory}
	oursBz := ours
	oursBz.Kernel = bz
	jailed := ours
	jailed.Jail, jailed.Seccomp = benchJailID, vmmcli.DefaultSeccomp
	qemu := func(machine, kernel string) []string {
		return []string{qemuPath, "-enable-kvm", "-cpu", qemuCPU(), "-M", machine, "-smp", "1", "-m", "256",
			"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
			"-kernel", kernel, "-initrd", initrd, "-append", cmdline}
	}
	return []benchPeer{
		{name: "hyperroot", argv: append([]string{hyperroot}, ours.Argv()...)},
		{name: "hyperroot-jailed", argv: append([]string{hyperroot}, jailed.Argv()...), attr: jail.Attr},
		{name: "hyperroot-bzimage", argv: append([]string{hyperroot}, oursBz.Argv()...)},
		{name: "gokvm", argv: []string{gokvmPath, "boot", "-k", bz, "-i", initrd, "-p", cmdline, "-c", "1", "-m", benchMemory}},
		{name: "qemu-pc", argv: qemu("pc", bz)},
		{name: "qemu-pc-vmlinux", argv: qemu("pc", elf)},
		{name: "qemu-microvm", argv: qemu("microvm", bz)},
	}
}

// roundOrder is the order the contenders run in round (from 1): rotated
// by one each round. A boot that follows a hyperroot boot was seen ~1.3x
// slower than the same boot first in its round (the previous VMM's
// teardown or the memory it left), and the disk benchmark's first
// contender's first round was often its worst, so a fixed order favours
// or penalises whoever holds a place; rotating spreads that over every
// contender. Every benchmark that compares contenders runs them so.
func roundOrder[T any](contenders []T, round int) []T {
	if len(contenders) == 0 {
		return nil
	}
	k := (round - 1) % len(contenders)
	return append(slices.Clone(contenders[k:]), contenders[:k]...)
}

// A boot starts when the appliance is quiet: what the previous VMM left
// behind (its memory being freed, KVM's deferred teardown, the kernel's
// compaction for the next guest's huge pages) must not be charged to the
// next contender. A diagnostic run showed a boot right after a hyperroot
// boot ~1.3x slower than first in its round. Quiet is measured, not
// slept: two windows in a row in which the CPUs were at most quietBusy
// busy.
const (
	quietWindow = 250 * time.Millisecond
	quietBusy   = 0.10
	quietLimit  = 20 * time.Second
)

// settle waits for a quiet appliance before vmm's boot in round of bench,
// and logs how long that took. Called after the boot, the function it
// returns logs the appliance's memory events during it (vmstatCounters).
func settle(e *env, bench string, round int, vmm string) (booted func()) {
	waited, err := waitQuiet(readProcStat, quietWindow, quietLimit)
	if err != nil {
		e.logf("bench: %s round=%d vmm=%s: %v (after %.1fs); booting anyway", bench, round, vmm, err, waited.Seconds())
	} else {
		e.logf("bench: %s round=%d vmm=%s quiet after %.1fs", bench, round, vmm, waited.Seconds())
	}
	before := readVMStat()
	return func() {
		if d := vmstatDelta(before, readVMStat()); d != "" {
			e.logf("bench: %s vmstat round=%d vmm=%s %s", bench, round, vmm, d)
		}
	}
}

// vmstatCounters are the appliance kernel's memory events a boot is
// logged with: a guest's first touch of each page of its RAM is a nested
// page fault, which costs 512 times less where its host page is a huge
// one; whether the host found huge pages (thp_*_alloc), fell back to
// small ones (*_fallback) or compacted memory for them (compact_*) is what
// the guest's early silences were seen to vary with.
var vmstatCounters = []string{"thp_fault_alloc", "thp_fault_fallback", "thp_file_alloc", "thp_file_fallback",
	"thp_file_mapped", "compact_stall", "compact_fail", "compact_success", "pgmajfault"}

// readVMStat reads /proc/vmstat's vmstatCounters; nil when unreadable.
func readVMStat() map[string]uint64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return nil
	}
	return parseVMStat(b)
}

func parseVMStat(b []byte) map[string]uint64 {
	m := map[string]uint64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok || !slices.Contains(vmstatCounters, k) {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// vmstatDelta is "name=+n" for each counter that grew, in vmstatCounters'
// order.
func vmstatDelta(from, to map[string]uint64) string {
	var out []string
	for _, k := range vmstatCounters {
		f, ok1 := from[k]
		t, ok2 := to[k]
		if ok1 && ok2 && t > f {
			out = append(out, fmt.Sprintf("%s=+%d", k, t-f))
		}
	}
	return strings.Join(out, " ")
}

// readProcStat is the appliance's CPU time: busy and total ticks.
func readProcStat() (busy, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	busy, total, _, err = parseProcStat(b)
	return busy, total, err
}

// waitQuiet samples read every window until two windows in a row were at
// most quietBusy busy, and says how long that took; after limit it gives
// up with an error. A window with no ticks at all (a clock too coarse for
// it) does not count as quiet.
func waitQuiet(read func() (busy, total uint64, err error), window, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	busy0, total0, err := read()
	if err != nil {
		return 0, err
	}
	quiet := 0
	for quiet < 2 {
		if time.Since(start) > limit {
			return time.Since(start), fmt.Errorf("the appliance was not quiet within %v", limit)
		}
		time.Sleep(window)
		busy, total, err := read()
		if err != nil {
			return time.Since(start), err
		}
		db, dt := busy-busy0, total-total0
		busy0, total0 = busy, total
		if dt > 0 && float64(db) <= quietBusy*float64(dt) {
			quiet++
		} else {
			quiet = 0
		}
	}
	return time.Since(start), nil
}

// qemuCPU is the QEMU peers' -cpu: the host's, less XSAVE on a host where
// hyperroot's guests go without it (TCG before QEMU 8.2, whose nested SVM
// lets a guest's XSETBV past KVM: cpuid.HostIsTCG), so that both VMMs'
// guests run the same instruction set. Without it QEMU's guests had AVX
// (`x86/fpu: Enabled xstate features 0x207` in their boot log) and
// hyperroot's did not, which under emulation is a difference in the
// guests' own speed, not in the VMMs.
func qemuCPU() string {
	if cpuid.HostIsTCG() {
		return "host,-xsave"
	}
	return "host"
}

// bootGoalPeer is the peer issue 17's boot goal is a ratio to.
const bootGoalPeer = "qemu-pc"

// errBootHung is a boot that did not reach the guest's init in its time.
var errBootHung = errors.New("guest did not boot")

func runBootBench(e *env) error {
	for _, peer := range []string{gokvmPath, qemuPath} {
		if _, err := os.Stat(peer); err != nil {
			return fmt.Errorf("no peer VMM in this image (%v): build it with mkimage -bench", err)
		}
	}
	peers := bootPeers(e.hyperroot)
	times := map[string][]time.Duration{}
	phases := map[string][]bootPhases{}
	hung := map[string]bool{}
	for round := 1; round <= bootRounds; round++ {
		for _, p := range roundOrder(peers, round) {
			if hung[p.name] {
				e.logf("bench: boot round=%d vmm=%s skipped: it hung in an earlier round", round, p.name)
				continue
			}
			booted := settle(e, "boot", round, p.name)
			run, err := bootTraced(e.starter, p, p.name == "hyperroot")
			booted()
			d, rss := run.d, run.rss
			if err != nil && strings.HasPrefix(p.name, "hyperroot") {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if err != nil {
				// A peer's failure is its figure's, not the run's: the
				// medians count the boots that came through.
				// One that hung (gokvm's known hang on the RSDP) is not
				// run again: each hang costs the whole bootTimeout. The
				// goal's peer always is: its figure is the one that counts.
				e.logf("bench: boot round=%d vmm=%s failed: %v", round, p.name, err)
				hung[p.name] = errors.Is(err, errBootHung) && p.name != bootGoalPeer
				continue
			}
			times[p.name] = append(times[p.name], d)
			e.logf("bench: boot round=%d vmm=%s time-to-init=%.3fs", round, p.name, d.Seconds())
			if ph, ok := parsePhases(d, run.running, run.booted); ok {
				phases[p.name] = append(phases[p.name], ph)
				e.logf("bench: boot phases round=%d vmm=%s %s", round, p.name, ph)
			}
			if steps := buildSteps(run.running); steps != "" {
				e.logf("bench: boot build round=%d vmm=%s %s", round, p.name, steps)
			}
			if rss != "" {
				e.logf("bench: memory vmm=%s %s", p.name, rss)
			}
		}
	}
	for _, l := range bootSummary(peers, times, bootRounds) {
		e.logf("bench: boot %s", l)
	}
	for _, f := range append(bootFigures(times), phaseFigures(phases)...) {
		e.logf("%s", f.Line())
	}
	return nil
}

// bootSummary is the medians of every peer and the ratios that answer the
// benchmark's questions: hyperroot against each peer, and the jailed
// hyperroot against the plain one (what the jail costs a start). Lower is
// better in all of them.
func bootSummary(peers []benchPeer, times map[string][]time.Duration, rounds int) []string {
	med := map[string]float64{}
	var all []string
	for _, p := range peers {
		med[p.name] = median(times[p.name]).Seconds()
		switch n := len(times[p.name]); {
		case n == 0:
			all = append(all, p.name+"=none")
		case n < rounds:
			all = append(all, fmt.Sprintf("%s=%.3fs (%d booted)", p.name, med[p.name], n))
		default:
			all = append(all, fmt.Sprintf("%s=%.3fs", p.name, med[p.name]))
		}
	}
	lines := []string{fmt.Sprintf("%s (median of %d)", strings.Join(all, " "), rounds)}
	ratio := func(a, b string) {
		if med[a] > 0 && med[b] > 0 {
			lines = append(lines, fmt.Sprintf("ratio %s/%s=%.2f", a, b, med[a]/med[b]))
		}
	}
	for _, p := range peers[1:] {
		if p.name != "hyperroot-jailed" {
			ratio("hyperroot", p.name)
		}
	}
	ratio("hyperroot-jailed", "hyperroot")
	return lines
}

// bootFigures are the records (tools/bench/result) of the boot benchmark:
// hyperroot against every other VMM, and what the jail costs a start.
func bootFigures(times map[string][]time.Duration) []result.Figure {
	secs := func(ds []time.Duration) []float64 {
		out := []float64{}
		for _, d := range ds {
			out = append(out, d.Seconds())
		}
		return out
	}
	start := result.Figure{Bench: "boot", Name: "VMM start to guest init, 1 vCPU " + benchMemory, Unit: "s", Lower: true,
		Ours: "hyperroot", Values: map[string][]float64{}, Goal: &result.Goal{Peer: bootGoalPeer, Ratio: 0.6}}
	for name, ds := range times {
		if name != "hyperroot-jailed" {
			start.Values[name] = secs(ds)
		}
	}
	jail := result.Figure{Bench: "boot", Name: "the same, jailed vs not", Unit: "s", Lower: true,
		Ours: "hyperroot-jailed", Values: map[string][]float64{"hyperroot-jailed": secs(times["hyperroot-jailed"]), "hyperroot": secs(times["hyperroot"])}}
	return []result.Figure{start, jail}
}

// phaseFigures are the boot phases as records, one per phase: hyperroot's
// own two alone (no other VMM says when its set-up ends), the guest's two
// for every VMM whose guest said its uptime.
func phaseFigures(phases map[string][]bootPhases) []result.Figure {
	if len(phases["hyperroot"]) == 0 {
		return nil
	}
	var out []result.Figure
	for _, ph := range []struct {
		name string
		ours bool // hyperroot's alone
		get  func(bootPhases) time.Duration
	}{
		{"boot phase: VMM building the machine", true, func(p bootPhases) time.Duration { return p.Built }},
		{"boot phase: the rest of the VMM's start to vCPUs running", true, func(p bootPhases) time.Duration { return p.Started }},
		{"boot phase: before the guest's clock (VMM start, exec, decompression, early boot)", false,
			func(p bootPhases) time.Duration { return p.Built + p.Started + p.Early }},
		{"boot phase: guest clock start to init", false, func(p bootPhases) time.Duration { return p.Kernel }},
	} {
		f := result.Figure{Bench: "boot", Name: ph.name, Unit: "s", Lower: true, Ours: "hyperroot", Values: map[string][]float64{}}
		for name, runs := range phases {
			if ph.ours && name != "hyperroot" {
				continue
			}
			for _, p := range runs {
				f.Values[name] = append(f.Values[name], ph.get(p).Seconds())
			}
		}
		out = append(out, f)
	}
	return out
}

// settleTime is how long the guest idles after booting before the VMM's
// memory is read: long enough for the Go runtime's background scavenger
// to return what boot left free, as it would on a VM that runs for hours.
const settleTime = 3 * time.Second

// bootOnce starts one VMM, waits for the guest's init to report, optionally
// samples its memory (only hyperroot's: with the Go runtime's own account
// of it), and kills it.
func bootOnce(starter child.Starter, p benchPeer, sample bool) (time.Duration, string, error) {
	r, err := bootTraced(starter, p, sample)
	return r.d, r.rss, err
}

// bootRun is one boot: how long to the ready line, the memory sample, and
// the lines a boot's phases are read from (bootPhases).
type bootRun struct {
	d       time.Duration
	rss     string
	running string // hyperroot vmm's "vCPUs running ... after start (machine built in ...)"
	booted  string // the ready line (the test guest's carries its uptime)
}

// bootTraced is bootOnce, keeping the lines that time a boot's phases.
func bootTraced(starter child.Starter, p benchPeer, sample bool) (bootRun, error) {
	var run bootRun
	var env []string
	if sample {
		env = append(os.Environ(), "HYPERROOT_VMM_MEMSTATS=1")
	}
	ready, timeout := p.ready, p.timeout
	if ready == nil {
		ready = func(line string) bool { return strings.Contains(line, "guest: booted") }
	}
	if timeout == 0 {
		timeout = bootTimeout
	}
	booted := make(chan time.Duration, 1)
	memstats := make(chan string, 1)
	start := time.Now()
	seen := false
	var attr *syscall.SysProcAttr
	if p.attr != nil {
		attr = p.attr()
	}
	proc, err := child.Start(starter, child.Spec{Path: p.argv[0], Args: p.argv[1:], Env: env, Tail: 16, Attr: attr,
		Line: func(line string) {
			if strings.Contains(line, "hyperroot vmm: ") && strings.Contains(line, " vCPUs running ") {
				run.running = line
			}
			if !seen && ready(line) {
				seen = true
				run.booted = line
				booted <- time.Since(start)
			}
			if _, ms, ok := strings.Cut(line, "memstats "); ok && seen {
				select {
				case memstats <- ms:
				default:
				}
			}
		}})
	if err != nil {
		return run, err
	}
	var d time.Duration
	var rss string
	select {
	case d = <-booted:
		if sample {
			time.Sleep(settleTime)
			m, err := memorySample(proc.Pid())
			if err != nil {
				rss = err.Error()
			} else {
				rss = m.String()
			}
			// HYPERROOT_VMM_MEMSTATS=1 made it answer SIGUSR2.
			proc.Signal(unix.SIGUSR2)
			select {
			case ms := <-memstats:
				rss += " go: " + ms
			case <-time.After(2 * time.Second):
				rss += " go: no memstats"
			}
		}
	case <-proc.Done():
		return bootRun{}, fmt.Errorf("exited before the guest booted: %v; output ended with %q", vmmcli.Reason(proc.Wait()), proc.Tail())
	case <-time.After(timeout):
		err = fmt.Errorf("%w within %v (%s); output ended with %q", errBootHung, timeout, cpuShare(proc.Pid(), 5*time.Second), proc.Tail())
	}
	proc.Signal(unix.SIGKILL)
	proc.Wait()
	// proc.Wait returned: child calls Line no more (it stops under the
	// lock it calls it with before Done), so run's lines are settled.
	run.d, run.rss = d, rss
	return run, err
}

// bootPhases splits a hyperroot boot of total (from the benchmark's exec
// of the VMM to the guest's ready line) by the clocks that saw it: the
// VMM's own (how long building the machine took, and when the vCPUs ran,
// since the VMM process started) and the guest kernel's (its uptime at the
// ready line, which counts from the kernel's timekeeping start). What is
// left between the vCPUs running and the guest's clock starting is the
// exec of the VMM, the kernel's decompression and its earliest boot.
type bootPhases struct {
	Built   time.Duration // building the machine (machine.New: KVM, memory, devices, tables, kernel loaded)
	Started time.Duration // the rest of the VMM's start until the vCPUs run (arguments, files, jail, threads)
	Early   time.Duration // the rest before the guest's clock: exec, decompression, early boot
	Kernel  time.Duration // guest clock start to init's ready line
}

var (
	runningRE = regexp.MustCompile(`vCPUs running (\S+) after start \(machine built in ([^\s:)]+)[:)]`)
	uptimeRE  = regexp.MustCompile(`\buptime=([0-9.]+)\b`)
	stepsRE   = regexp.MustCompile(`machine built in \S+: ([^)]*)\)`)
)

// buildSteps is the VMM's build steps from its running line ("kvm=..
// memory=.."), or "".
func buildSteps(running string) string {
	if m := stepsRE.FindStringSubmatch(running); m != nil {
		return m[1]
	}
	return ""
}

// parsePhases reads a boot's phases from its lines; ok is false when the
// guest did not say its uptime. Another VMM than hyperroot says nothing
// of its own start: its Built and Started are 0, and its Early holds all
// of its time before the guest's clock.
func parsePhases(total time.Duration, running, booted string) (bootPhases, bool) {
	r, u := runningRE.FindStringSubmatch(running), uptimeRE.FindStringSubmatch(booted)
	if u == nil {
		return bootPhases{}, false
	}
	if r == nil {
		secs, err := strconv.ParseFloat(u[1], 64)
		if err != nil {
			return bootPhases{}, false
		}
		kernel := time.Duration(secs * float64(time.Second))
		return bootPhases{Early: max(total-kernel, 0), Kernel: kernel}, true
	}
	up, err1 := time.ParseDuration(r[1])
	built, err2 := time.ParseDuration(r[2])
	secs, err3 := strconv.ParseFloat(u[1], 64)
	if err1 != nil || err2 != nil || err3 != nil || built > up {
		return bootPhases{}, false
	}
	kernel := time.Duration(secs * float64(time.Second))
	return bootPhases{Built: built, Started: up - built, Early: max(total-up-kernel, 0), Kernel: kernel}, true
}

func (p bootPhases) String() string {
	return fmt.Sprintf("built=%.3fs started=%.3fs early=%.3fs kernel=%.3fs",
		p.Built.Seconds(), p.Started.Seconds(), p.Early.Seconds(), p.Kernel.Seconds())
}

// vmmMemory is where a VMM process's resident memory is, in KiB, read from
// its smaps. Private pages are what each VM costs (Firecracker's "< 5 MiB"
// counts those); the binary's file pages live in the page cache (tmpfs in
// the appliance) once, shared by PID 1 and every VMM, so they are reported
// apart.
type vmmMemory struct {
	RSS   int // everything resident (the sum of the smaps Rss fields)
	Guest int // guest RAM pages touched: the memfd mapping
	File  int // file pages of the binary and any library: shared
	// The private (anonymous) pages outside guest RAM, by where they are.
	// The Go runtime's own mappings cannot be told apart here (Go 1.26
	// randomises the heap's address, and the appliance's kernel does not
	// name anonymous mappings): the VMM's memstats line splits them.
	Go    int // Go heap (objects, goroutine stacks) and the runtime's structures
	Data  int // the binary's written data and its bss
	Stack int // the main thread's stack
}

// Private is the VMM's own per-VM memory.
func (m vmmMemory) Private() int { return m.Go + m.Data + m.Stack }

func (m vmmMemory) String() string {
	return fmt.Sprintf("rss=%dKiB guest-touched=%dKiB overhead=%dKiB private=%dKiB (go=%d data=%d stack=%d) shared-file=%dKiB",
		m.RSS, m.Guest, m.RSS-m.Guest, m.Private(), m.Go, m.Data, m.Stack, m.File)
}

// parseSmaps sorts the resident pages of a /proc/PID/smaps by kind; exe is
// the process's binary (its /proc/PID/exe), whose bss is the unnamed
// mapping right after its last file mapping.
func parseSmaps(smaps []byte, exe string) vmmMemory {
	var m vmmMemory
	var cur *int // where the current mapping's private pages go
	var file bool
	in := false // inside a well-formed mapping: its fields count
	var prevEnd uint64
	prevExe := false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") && len(f) >= 5 {
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil
			if !in {
				continue
			}
			name := strings.Join(f[5:], " ")
			file = false
			switch {
			case strings.HasPrefix(name, "/memfd:"):
				cur = &m.Guest
			case name == exe:
				cur, file = &m.Data, true
			case name == "" && prevExe && start == prevEnd:
				cur = &m.Data
			case name == "[stack]":
				cur = &m.Stack
			case name == "" || strings.HasPrefix(name, "[anon"):
				cur = &m.Go
			case strings.HasPrefix(name, "[") || strings.HasPrefix(name, "anon_inode:"):
				cur = nil // the kernel's: vdso, vvar, the vCPUs' kvm_run
			default: // libraries (a cgo build's libc)
				cur, file = &m.Go, true
			}
			prevExe, prevEnd = name == exe, end
			continue
		}
		if !in || len(f) != 3 || f[2] != "kB" {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			m.RSS += n
			if cur == &m.Guest {
				m.Guest += n
			} else if file {
				m.File += n // less the written (anonymous) ones, below
			}
		case "Anonymous:":
			if file {
				m.File -= n
			}
			if cur != nil && cur != &m.Guest {
				*cur += n
			}
		}
	}
	return m
}

// cpuShare says how busy process pid is over the next period: whether a
// guest that did not boot is spinning or waiting (for an interrupt that
// does not come, say).
func cpuShare(pid int, period time.Duration) string {
	ticks := func() (int64, error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		// The fields after the command (in parentheses, which may hold
		// spaces): utime and stime are the 12th and 13th of them.
		_, rest, ok := strings.Cut(string(b), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		return u + s, errors.Join(err1, err2)
	}
	t0, err := ticks()
	if err != nil {
		return err.Error()
	}
	time.Sleep(period)
	t1, err := ticks()
	if err != nil {
		return err.Error()
	}
	const hz = 100 // USER_HZ, which /proc counts in on Linux
	return fmt.Sprintf("the VMM used %.1f s of CPU in all, %.0f%% of one CPU over the last %v",
		float64(t1)/hz, 100*float64(t1-t0)/hz/period.Seconds(), period)
}

// memorySample reads a running VMM's memory from /proc.
func memorySample(pid int) (vmmMemory, error) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return vmmMemory{}, err
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return vmmMemory{}, err
	}
	return parseSmaps(smaps, exe), nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
