package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Where the appliance's CPUs go while the network benchmark's stream runs.
// Under TCG the appliance has few, slow CPUs, and the two guests, their
// VMMs and whatever moves the frames (the switch, or vhost-net's kernel
// threads) all share them: a contender that is slower may be so because
// its frame path costs more CPU, or because it leaves CPUs idle waiting.
// The account tells the two apart, and which part costs what.

// userHZ is the unit of /proc's CPU times (USER_HZ, 100 on every Linux
// architecture the appliance runs on).
const userHZ = 100

// pfKthread is PF_KTHREAD in /proc/<pid>/stat's flags: a kernel thread.
const pfKthread = 0x00200000

// cpuGroups are the groups a process is counted in, in report order.
var cpuGroups = []string{"switch", "vmm", "qemu", "vhost", "kernel", "hyperroot", "other"}

// procTicks is a group's CPU time, in ticks: guest is the part spent
// running a (nested) guest, host the rest, in user space or the kernel.
type procTicks struct{ host, guest uint64 }

// cpuSample is the appliance's CPU time at one moment: the whole machine's,
// from /proc/stat's cpu line, and each process's.
type cpuSample struct {
	at          time.Time
	busy, total uint64 // ticks: not idle (nor waiting for I/O), and all
	cpus        int
	procs       map[int]procSample
	kvm         map[string]uint64 // readKVMStats; nil when not readable
}

// kvmCounters are the KVM event counts the stream's account reports per
// MiB: what a frame path costs in exits, interrupts and halts, which the
// CPU time alone does not tell apart. debugfs's top-level files sum every
// VM alive when read; only the contender's two VMs live in the window.
var kvmCounters = []string{"exits", "irq_injections", "halt_exits", "halt_wakeup", "io_exits", "mmio_exits", "irq_window_exits"}

// readCounterFile reads a file holding one decimal number, as the
// kernel's counters in debugfs and sysfs do.
func readCounterFile(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// kvmStatsDir is KVM's debugfs directory (the benchmark mounts debugfs).
const kvmStatsDir = "/sys/kernel/debug/kvm"

// readKVMStats reads kvmCounters from dir; a counter it cannot read is
// left out, and no counter at all is nil (no debugfs, no KVM).
func readKVMStats(dir string) map[string]uint64 {
	var m map[string]uint64
	for _, c := range kvmCounters {
		v, err := readCounterFile(filepath.Join(dir, c))
		if err != nil {
			continue
		}
		if m == nil {
			m = map[string]uint64{}
		}
		m[c] = v
	}
	return m
}

// procSample is one process's CPU time and what it is. start (its start
// time, in ticks since boot) tells it from a later process with its PID.
type procSample struct {
	group string
	start uint64
	t     procTicks
}

// sampleCPU reads proc (normally /proc).
func sampleCPU(proc string) (cpuSample, error) {
	s := cpuSample{at: time.Now(), procs: map[int]procSample{}}
	stat, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return s, err
	}
	if s.busy, s.total, s.cpus, err = parseProcStat(stat); err != nil {
		return s, err
	}
	dir, err := os.ReadDir(proc)
	if err != nil {
		return s, err
	}
	for _, d := range dir {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		// A process may exit between the listing and the reads: it is
		// left out, as one that exits inside the window would be.
		p, group, err := readProc(proc, d.Name())
		if err != nil {
			continue
		}
		s.procs[pid] = procSample{group: group, start: p.start,
			t: procTicks{host: p.utime + p.stime - min(p.guest, p.utime), guest: p.guest}}
	}
	return s, nil
}

// readProc reads process pid's stat and says what it is (cpuGroup).
func readProc(proc, pid string) (pidStat, string, error) {
	b, err := os.ReadFile(filepath.Join(proc, pid, "stat"))
	if err != nil {
		return pidStat{}, "", err
	}
	p, err := parsePidStat(b)
	if err != nil {
		return pidStat{}, "", err
	}
	var argv []string
	if p.flags&pfKthread == 0 {
		cl, err := os.ReadFile(filepath.Join(proc, pid, "cmdline"))
		if err != nil {
			return pidStat{}, "", err
		}
		argv = strings.Split(strings.TrimRight(string(cl), "\x00"), "\x00")
	}
	return p, cpuGroup(p, argv), nil
}

// threadGroup says what the process of thread tid is (cpuGroup), "gone"
// when the thread has exited.
func threadGroup(proc string, tid uint64) string {
	// /proc/<tid> is the thread's view of its process: its cmdline is
	// the process's, and its stat carries the kernel-thread flag.
	_, group, err := readProc(proc, strconv.FormatUint(tid, 10))
	if err != nil {
		return "gone"
	}
	return group
}

// parseProcStat reads /proc/stat's aggregate cpu line (user nice system
// idle iowait irq softirq steal guest guest_nice; guest time is already in
// user) and counts the per-CPU lines.
func parseProcStat(b []byte) (busy, total uint64, cpus int, err error) {
	found := false
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			cpus++
			continue
		}
		if len(f) < 9 {
			return 0, 0, 0, fmt.Errorf("/proc/stat: short cpu line %q", line)
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[1+i], 10, 64); err != nil {
				return 0, 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			total += v[i]
		}
		busy = total - v[3] - v[4] // less idle and iowait
		found = true
	}
	if !found {
		return 0, 0, 0, fmt.Errorf("/proc/stat: no cpu line")
	}
	return busy, total, cpus, nil
}

// pidStat is what the account needs of /proc/<pid>/stat.
type pidStat struct {
	comm                string
	flags               uint64
	utime, stime, guest uint64
	start               uint64
}

// parsePidStat reads /proc/<pid>/stat. The command name is in parentheses
// and may itself hold spaces and parentheses (a process names itself), so
// the fields are counted from the last ')'.
func parsePidStat(b []byte) (pidStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return pidStat{}, fmt.Errorf("no command name")
	}
	// After ')': state(3) ppid(4) ... flags(9) ... utime(14) stime(15)
	// ... starttime(22) ... guest_time(43), numbered as in proc(5).
	f := strings.Fields(string(b[end+1:]))
	field := func(n int) (uint64, error) {
		if n-3 >= len(f) {
			return 0, fmt.Errorf("field %d missing", n)
		}
		return strconv.ParseUint(f[n-3], 10, 64)
	}
	var p pidStat
	p.comm = string(b[open+1 : end])
	var err error
	for _, x := range []struct {
		n int
		v *uint64
	}{{9, &p.flags}, {14, &p.utime}, {15, &p.stime}, {22, &p.start}, {43, &p.guest}} {
		if *x.v, err = field(x.n); err != nil {
			return pidStat{}, err
		}
	}
	return p, nil
}

// cpuGroup says what a process is: the switch, a hyperroot VMM, QEMU,
// vhost-net's worker, another kernel thread, another hyperroot process
// (PID 1, the benchmark), or something else.
func cpuGroup(p pidStat, argv []string) string {
	if p.flags&pfKthread != 0 {
		if strings.HasPrefix(p.comm, "vhost-") {
			return "vhost"
		}
		return "kernel"
	}
	if len(argv) == 0 {
		return "other"
	}
	switch filepath.Base(argv[0]) {
	case "qemu-system-x86_64":
		return "qemu"
	case "hyperroot", "init":
		if len(argv) > 1 && (argv[1] == "switch" || argv[1] == "vmm") {
			return argv[1]
		}
		return "hyperroot"
	}
	return "other"
}

// cpuAccount is the difference of two samples: the CPUs in use on
// average over the window, by group.
type cpuAccount struct {
	window time.Duration
	cpus   int
	busy   float64 // CPUs busy, of cpus
	groups map[string]procTicks
	work   float64           // the work done in the window, in units, for the costs per unit
	unit   string            // "MiB" streamed, "1000 requests", ...
	kvm    map[string]uint64 // KVM's counts in the window (kvmCounters)
	trace  string            // KVM's events per unit by kind (kvmCountsLine), or why none
}

// accountCPU is the account between two samples, per unit of the work
// done in between.
func accountCPU(from, to cpuSample, work float64, unit string) cpuAccount {
	a := cpuAccount{window: to.at.Sub(from.at), cpus: to.cpus, groups: map[string]procTicks{}, work: work, unit: unit}
	if to.total > from.total {
		a.busy = float64(to.busy-from.busy) / float64(to.total-from.total) * float64(max(to.cpus, 1))
	}
	// Process by process: a group's sum would shrink when one of its
	// processes exits inside the window, hiding what the others used.
	// A process that exited is left out; one that started inside the
	// window counts whole.
	for pid, t := range to.procs {
		var f procTicks
		if p, ok := from.procs[pid]; ok && p.start == t.start {
			f = p.t
		}
		g := a.groups[t.group]
		g.host += t.t.host - min(t.t.host, f.host)
		g.guest += t.t.guest - min(t.t.guest, f.guest)
		a.groups[t.group] = g
	}
	for c, v := range to.kvm {
		if f, ok := from.kvm[c]; ok && v >= f {
			if a.kvm == nil {
				a.kvm = map[string]uint64{}
			}
			a.kvm[c] = v - f
		}
	}
	return a
}

// String reports CPUs in use (cores) per group, guest time apart, and the
// whole machine's CPU milliseconds per unit of work.
func (a cpuAccount) String() string {
	secs := a.window.Seconds()
	if secs <= 0 {
		return "cpu: no window"
	}
	cores := func(ticks uint64) float64 { return float64(ticks) / userHZ / secs }
	var guest uint64
	var parts []string
	for _, g := range cpuGroups {
		t := a.groups[g]
		guest += t.guest
		if t.host > 0 {
			parts = append(parts, fmt.Sprintf("%s=%.2f", g, cores(t.host)))
		}
	}
	s := fmt.Sprintf("cpu window=%.1fs busy=%.2f/%d guests=%.2f %s", secs, a.busy, a.cpus, cores(guest), strings.Join(parts, " "))
	if a.work > 0 {
		s += fmt.Sprintf(" cpu-ms/%s=%.0f", a.unit, a.busy*secs*1000/a.work)
		var kvm []string
		for _, c := range kvmCounters {
			if v, ok := a.kvm[c]; ok {
				kvm = append(kvm, fmt.Sprintf("%s=%.0f", c, float64(v)/a.work))
			}
		}
		if kvm != nil {
			s += " kvm/" + a.unit + " " + strings.Join(kvm, " ")
		}
		if a.trace != "" {
			s += " per " + a.unit + ": " + a.trace
		}
	}
	return s
}

// windowMarks are the console lines that open and close a CPU window, and
// the work done in between.
type windowMarks interface {
	// open reports whether line opens the window, and what it says of
	// the work (passed to close); an error for a line that should but
	// cannot be read.
	open(line string) (opened float64, ok bool, err error)
	// close reports whether line closes the window and the work done
	// since it opened, in unit.
	close(line string, opened float64) (work float64, ok bool, err error)
	unit() string
}

// streamMarks are the network stream's: the client's "under way" line
// (bytes sent so far of the total) and its "sent" line; the work is the
// MiB sent in between.
type streamMarks struct{}

const streamUnderWay, streamSent = "guest: net under way sent=", "guest: net sent bytes="

func (streamMarks) open(line string) (float64, bool, error) {
	i := strings.Index(line, streamUnderWay)
	if i < 0 {
		return 0, false, nil
	}
	// "under way sent=N of T"
	var n, total int64
	if _, err := fmt.Sscanf(line[i+len(streamUnderWay):], "%d of %d", &n, &total); err != nil || n < 0 || total < n {
		return 0, false, fmt.Errorf("unreadable %q", line[i:])
	}
	return float64(total-n) / (1 << 20), true, nil
}

func (streamMarks) close(line string, opened float64) (float64, bool, error) {
	return opened, strings.Contains(line, streamSent), nil
}

func (streamMarks) unit() string { return "MiB" }

// streamCPU samples the CPU when a console line opens its window and again
// when one closes it (marks; nil: the network stream's, from the middle of
// the stream to its end, without the boots, the handshake or the further
// tests).
type streamCPU struct {
	proc  string
	kvm   string // KVM's debugfs directory; "" reads none
	marks windowMarks
	// trace counts KVM's events by kind over the window (kvmTrace's
	// directory: tracefs); "" counts none.
	trace string
	// traceOn: the histograms are installed already, for the whole
	// boot (kvmTrace.start before it): the window counts the difference
	// of two reads instead of installing them at its opening line.
	traceOn   bool
	traceBase []kvmCount
	traceErr  error
	mu        sync.Mutex
	from      *cpuSample
	acct      *cpuAccount
	opened    float64 // what the opening line said of the work
	err       error
}

// line is given every console line of the guests.
func (w *streamCPU) line(line string) {
	marks := w.marks
	if marks == nil {
		marks = streamMarks{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.acct != nil {
		return
	}
	var opened, work float64
	var ok bool
	var err error
	if w.from == nil {
		opened, ok, err = marks.open(line)
	} else {
		work, ok, err = marks.close(line, w.opened)
	}
	if err != nil {
		w.err = err
		return
	}
	if !ok {
		return // /proc is read only for a sample that is used
	}
	s, err := sampleCPU(w.proc)
	if err != nil {
		w.err = err
		return
	}
	if w.kvm != "" {
		s.kvm = readKVMStats(w.kvm)
	}
	t := kvmTrace{w.trace, w.proc}
	if w.from == nil {
		w.from, w.opened = &s, opened
		switch {
		case w.trace != "" && w.traceOn:
			w.traceBase = t.read()
		case w.trace != "":
			w.traceErr = t.start()
		}
		return
	}
	a := accountCPU(*w.from, s, work, marks.unit())
	if w.trace != "" {
		if w.traceErr != nil {
			a.trace = "no KVM trace: " + w.traceErr.Error()
		} else {
			a.trace = kvmCountsLine(subtractCounts(t.read(), w.traceBase), a.work, 8)
		}
		if !w.traceOn {
			t.stop() // start may have installed some of the histograms
		}
	}
	w.acct = &a
}

// String is the account, or why there is none.
func (w *streamCPU) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return "cpu: " + w.err.Error()
	case w.acct == nil:
		return "cpu: no window"
	}
	return w.acct.String()
}
