package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/bench/result"
	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
)

// The disk benchmark (hyperroot-bench disk, in an image built with
// `mkimage -bench`, which adds QEMU): the test guest's disk-bench action
// measures its /dev/vda from inside (4 KiB random read and write IOPS at
// queue depths 1, 4 and 32 with the median and 99th-percentile latency
// of the requests, 1 MiB sequential read and write bandwidth; see
// image/guest/diskbench.go) while the disk is served in turn by hyperroot's
// io_uring backend, its thread-pool backend and QEMU's virtio-blk, each
// booting the same guest kernel and initramfs with 1 vCPU and 256 MiB,
// alternately over a few rounds in one appliance run, so that all of them
// see the same noisy machine. The image lives on tmpfs, which has no
// O_DIRECT: both VMMs go through the host page cache (QEMU cache=writeback,
// hyperroot's plain pread/pwrite), so what is compared is the VMMs' request
// paths, not a device.

const (
	diskBenchRounds  = 3
	diskBenchImage   = "/tmp/hyperroot-bench/disk.img"
	diskBenchClone   = "/tmp/hyperroot-bench/clone.qcow2"
	diskBenchSize    = 256 << 20
	diskBenchOptions = "time=6s,jobs=1:4:32"
	diskBenchTimeout = 10 * time.Minute
	// diskBenchSilence ends a boot whose console said nothing for that
	// long: the guest prints a line per test, each timed test lasting
	// seconds, so this is 20 times the longest gap of a normal run.
	diskBenchSilence = 2 * time.Minute
	qemuPath         = "/usr/bin/qemu-system-x86_64"
)

// diskTest is one figure of the guest's tests and the unit it reports in:
// a random test's IOPS at one queue depth ("randread-qd4"), the median
// and 99th percentile of its requests' latencies ("randread-qd4-p50",
// "-p99", in µs: lower is better), a sequential test's MiB/s.
type diskTest struct{ name, unit string }

// diskBenchDepths are the random tests' queue depths, as diskBenchOptions
// asks the guest for them.
var diskBenchDepths = []int{1, 4, 32}

// diskTests lists the guest's figures in the order the table shows them.
func diskTests() []diskTest {
	var out []diskTest
	for _, kind := range []string{"randread", "randwrite"} {
		for _, qd := range diskBenchDepths {
			name := fmt.Sprintf("%s-qd%d", kind, qd)
			out = append(out, diskTest{name, "iops"}, diskTest{name + "-p50", "us"}, diskTest{name + "-p99", "us"})
		}
	}
	return append(out, diskTest{"seqread", "mibps"}, diskTest{"seqwrite", "mibps"})
}

// lowerIsBetter says whether a unit's figures are better low (latencies).
func lowerIsBetter(unit string) bool { return unit == "us" }

// diskBackend is one way of serving the guest's disk: a VMM command line.
type diskBackend struct {
	name string
	argv []string
	// prepare, if set, runs before each boot: the qcow2 contenders each
	// start from a fresh clone, as a VM's first boot does.
	prepare func() error
	// done, if set, runs after each boot: it undoes what prepare changed
	// in the appliance beyond the contender's own files.
	done func() error
	// files, if set, opens what the VMM inherits (from vmmcli.FirstFD
	// on) for each boot; they are closed here once it has started.
	files func() ([]*os.File, error)
	// dumps: the VMM answers SIGUSR1 with a dump of its state
	// (hyperroot's; QEMU dies of it).
	dumps bool
	// peer: another VMM, measured for comparison.
	peer bool
	// extra: measured only when named (-disk-backends).
	extra bool
	// env, if set, is added to the VMM's environment.
	env []string
}

// diskBackends are the contenders: hyperroot with each I/O backend, then
// QEMU; then both serving a fresh qcow2 clone (at clone) of the raw image,
// hyperroot with io_uring and QEMU with aio=io_uring.
func diskBackends(hyperroot, img, clone string) []diskBackend {
	kernel, initrd := "/guest/vmlinuz", "/guest/initramfs.cpio"
	cmdline := "console=ttyS0 quiet panic=-1 hyperroot.guest=disk-bench hyperroot.diskbench=" + diskBenchOptions
	ours := func(name, io, file, format string) diskBackend {
		a := vmmcli.Args{Name: "bench", Kernel: kernel, Initrd: initrd, Cmdline: cmdline, CPUs: 1, Memory: benchMemory,
			Disks: []vmmcli.Disk{{FD: -1, Path: file, IO: io, Format: format}}}
		if name == "uring-nopoll" {
			a.Disks[0].Poll = -1
		}
		return diskBackend{name: name, argv: append([]string{hyperroot}, a.Argv()...), dumps: true}
	}
	qemu := func(name, file, format string) diskBackend {
		return diskBackend{name: name, peer: true, argv: []string{qemuPath,
			"-enable-kvm", "-cpu", qemuCPU(), "-M", "pc", "-smp", "1", "-m", "256",
			"-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
			"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
			// cache=writeback: tmpfs refuses O_DIRECT (cache=none);
			// io_uring as our first backend uses.
			"-drive", "file=" + file + ",if=none,id=d,format=" + format + ",aio=io_uring,cache=writeback",
			"-device", "virtio-blk-pci,drive=d"}}
	}
	ourClone := ours("qcow2", vmmcli.IOUring, clone, "qcow2")
	fresh := func() error { return makeClone(clone, img) }
	ourClone.prepare = fresh
	qemuClone := qemu("qemu-qcow2", clone, "qcow2")
	qemuClone.prepare = fresh
	noPoll := ours("uring-nopoll", vmmcli.IOUring, img, "")
	noPoll.extra = true
	// uring-nohold: the VMM with 2 Ps, fewer than its machine asks for,
	// so that its vCPU and its notification goroutine give their Ps up
	// in every wait (machine.Procs; internal/holdp) and the runtime never
	// interrupts a vCPU in the guest to take its P back.
	noHold := ours("uring-nohold", vmmcli.IOUring, img, "")
	noHold.extra, noHold.env = true, []string{"GOMAXPROCS=2"}
	// qemu-memfd: QEMU with its guest RAM in a shared memfd, as
	// hyperroot's is, instead of anonymous memory: the test bed's faults
	// were seen in hyperroot's guests and not in QEMU's.
	qemuMemfd := qemu("qemu-memfd", img, "raw")
	qemuMemfd.extra = true
	qemuMemfd.argv = append(qemuMemfd.argv, "-object", "memory-backend-memfd,id=ram,size=256M,share=on",
		"-machine", "memory-backend=ram")
	// uring-huge and uring-4k: hyperroot's guest RAM in 2 MiB hugetlbfs
	// pages, and in 4 KiB pages (no transparent huge pages for shmem),
	// instead of shmem's transparent huge pages: which of the three the
	// test bed's faults follow.
	huge := ours("uring-huge", vmmcli.IOUring, img, "")
	huge.extra = true
	huge.argv = append(huge.argv, "--hugepages", "2M")
	huge.prepare, huge.done = hugePoolFor("/sys/kernel/mm/hugepages/hugepages-2048kB", 128) // benchMemory in 2 MiB pages
	small := ours("uring-4k", vmmcli.IOUring, img, "")
	small.extra = true
	small.prepare, small.done = sysctlFor("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "never")
	return []diskBackend{ours("uring", vmmcli.IOUring, img, ""), ours("pool", vmmcli.IOPool, img, ""), qemu("qemu", img, "raw"), ourClone, qemuClone, noPoll, noHold, qemuMemfd, huge, small}
}

// sysctlFor returns a prepare that writes value to the kernel setting at
// path and a done that writes back what it held before.
func sysctlFor(path, value string) (prepare, done func() error) {
	var old string
	prepare = func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		old = strings.TrimSpace(string(b))
		// shmem_enabled reads "always within_size [advise] never ...".
		if i := strings.IndexByte(old, '['); i >= 0 {
			j := strings.IndexByte(old[i:], ']')
			if j < 0 {
				return fmt.Errorf("%s reads %q: no closing ]", path, old)
			}
			old = old[i+1 : i+j]
		}
		return os.WriteFile(path, []byte(value), 0)
	}
	done = func() error {
		if old == "" {
			return nil
		}
		return os.WriteFile(path, []byte(old), 0)
	}
	return prepare, done
}

// hugePoolFor returns a prepare that makes sure the 2 MiB huge page pool
// at dir (/sys/kernel/mm/hugepages/hugepages-2048kB, the pool the VMM's
// MFD_HUGE_2MB memfd takes from) has pages free, growing it by what is
// missing and never shrinking it, and a done that gives back what it
// added. The kernel may grant fewer pages than asked without an error:
// prepare reads the count back.
func hugePoolFor(dir string, pages int) (prepare, done func() error) {
	nrPath, freePath := filepath.Join(dir, "nr_hugepages"), filepath.Join(dir, "free_hugepages")
	old, added := 0, false
	prepare = func() error {
		var err error
		if old, err = readCount(nrPath); err != nil {
			return err
		}
		free, err := readCount(freePath)
		if err != nil || free >= pages {
			return err
		}
		added = true
		if err := os.WriteFile(nrPath, []byte(strconv.Itoa(old+pages-free)), 0); err != nil {
			return err
		}
		if free, err = readCount(freePath); err == nil && free < pages {
			err = fmt.Errorf("%d free 2 MiB pages after growing the pool, want %d", free, pages)
		}
		return err
	}
	done = func() error {
		if !added {
			return nil
		}
		added = false
		return os.WriteFile(nrPath, []byte(strconv.Itoa(old)), 0)
	}
	return prepare, done
}

// readCount reads a number from a kernel file.
func readCount(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// standardBackends drops the extra contenders.
func standardBackends(all []diskBackend) []diskBackend {
	var out []diskBackend
	for _, b := range all {
		if !b.extra {
			out = append(out, b)
		}
	}
	return out
}

// pickBackends returns the named contenders, in the order named.
func pickBackends(all []diskBackend, names []string) ([]diskBackend, error) {
	var out []diskBackend
	for _, n := range names {
		i := slices.IndexFunc(all, func(b diskBackend) bool { return b.name == n })
		if i < 0 {
			known := make([]string, len(all))
			for j, b := range all {
				known[j] = b.name
			}
			return nil, fmt.Errorf("no disk contender %q (known: %s)", n, strings.Join(known, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

// makeClone writes a fresh qcow2 clone of the image base (qcow2 if its
// name ends in .qcow2, else raw) at path, naming its base relative to it
// as the appliance's clones do.
func makeClone(path, base string) error {
	bf, err := os.Open(base)
	if err != nil {
		return err
	}
	defer bf.Close()
	st, err := bf.Stat()
	if err != nil {
		return err
	}
	size, format := st.Size(), "raw"
	if strings.HasSuffix(base, ".qcow2") {
		im, err := qcow2.Open(bf, qcow2.Options{ReadOnly: true})
		if err != nil {
			return err
		}
		size, format = im.Size(), "qcow2"
	}
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	rel, err := filepath.Rel(filepath.Dir(path), base)
	if err != nil {
		return err
	}
	return qcow2.Create(f, size, qcow2.CreateOptions{BackingFile: rel, BackingFormat: format})
}

// diskRun is what one boot of the guest measured: test name to value.
type diskRun struct {
	values map[string]float64
	kind   string   // the backend hyperroot vmm says it used ("io_uring", ...)
	cpu    []string // per test, where the appliance's CPU went (diskWindows)
	irqs   []string // per test, the guest's interrupts per 1000 requests by source
}

func runDiskBench(e *env) error {
	if _, err := os.Stat(qemuPath); err != nil {
		return fmt.Errorf("no QEMU in this image (%v): build it with mkimage -bench", err)
	}
	if err := makeBenchImage(diskBenchImage, diskBenchSize); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	defer os.Remove(diskBenchImage)
	backends := standardBackends(diskBackends(e.hyperroot, diskBenchImage, diskBenchClone))
	if len(e.diskBackends) > 0 {
		var err error
		all := diskBackends(e.hyperroot, diskBenchImage, diskBenchClone)
		if backends, err = pickBackends(all, e.diskBackends); err != nil {
			return err
		}
	}
	defer os.Remove(diskBenchClone)
	mountDebugfs(e)
	e.logf("bench: disk image=%s size=%dMiB (tmpfs) guest=1 vCPU %s options=%s rounds=%d",
		diskBenchImage, diskBenchSize>>20, benchMemory, diskBenchOptions, diskBenchRounds)
	runs, err := diskRounds(e.logf, diskBenchRounds, backends, func(round int, b diskBackend) (diskRun, error) {
		return diskAttempts(e, "disk", round, b)
	})
	if err != nil {
		return err
	}
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.name
	}
	for _, line := range diskTable(names, runs) {
		e.logf("bench: disk %s", line)
	}
	if len(e.diskBackends) > 0 {
		return nil // the figures compare the standard contenders
	}
	figs := diskFigures("disk", "uring", []string{"qemu", "pool"}, runs, &result.Goal{Peer: "qemu", Ratio: 1.0})
	figs = append(figs, diskFigures("disk qcow2", "qcow2", []string{"qemu-qcow2"}, runs, &result.Goal{Peer: "qemu-qcow2", Ratio: 1.0})...)
	for _, f := range figs {
		e.logf("%s", f.Line())
	}
	return nil
}

// diskRounds measures every backend once per round, in the round's order
// (roundOrder), with attempt, and logs each run. A peer's failed run costs
// the peer that round; one of hyperroot's ends the benchmark with its
// error.
func diskRounds(logf func(string, ...any), rounds int, backends []diskBackend, attempt func(round int, b diskBackend) (diskRun, error)) (map[string][]diskRun, error) {
	runs := map[string][]diskRun{}
	for round := 1; round <= rounds; round++ {
		for _, b := range roundOrder(backends, round) {
			run, err := attempt(round, b)
			if err != nil && b.peer {
				// A peer's guest that stalls or dies (QEMU's qcow2
				// guest went silent for 10 minutes in two runs of
				// the test bed) costs that peer its round, which the
				// table's round counts show; hyperroot's own fail
				// the run.
				logf("bench: disk round=%d backend=%s: no round: %v", round, b.name, err)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", b.name, err)
			}
			runs[b.name] = append(runs[b.name], run)
			logf("bench: disk round=%d backend=%s%s %s", round, b.name, kindNote(run.kind), formatRun(run))
			for _, l := range run.cpu {
				logf("bench: disk cpu round=%d backend=%s %s", round, b.name, l)
			}
			for _, l := range run.irqs {
				logf("bench: disk guest-irq round=%d backend=%s %s", round, b.name, l)
			}
		}
	}
	return runs, nil
}

func kindNote(kind string) string {
	if kind == "" {
		return ""
	}
	return " (" + kind + ")"
}

// makeBenchImage creates the disk image and writes every byte once, so
// that the guest's reads hit allocated pages rather than a sparse hole.
func makeBenchImage(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i%255 + 1) // never zero: data, not a hole
	}
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk[:min(int64(len(chunk)), size-off)], off); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// diskAttempts runs diskOnce, again (up to diskAttemptsMax in all, each
// said) when the guest triple-faulted in a multi-vCPU TCG appliance: that
// is QEMU's multi-threaded TCG (docs/TESTING.md), which the end-to-end
// tests retry too; a guest's triple fault anywhere else fails the run. A
// guest stalled in the test bed's page-fault storm is run again too. Each
// attempt starts from the backend's prepare (a fresh clone) on a quiet
// appliance (settle): a retry follows a VMM just killed.
func diskAttempts(e *env, bench string, round int, b diskBackend) (diskRun, error) {
	for attempt := 1; ; attempt++ {
		if b.prepare != nil {
			if err := b.prepare(); err != nil {
				return diskRun{}, fmt.Errorf("%s: %w", b.name, err)
			}
		}
		booted := settle(e, bench, round, b.name)
		run, err := diskOnce(e.starter, b)
		booted()
		if b.done != nil {
			if derr := b.done(); derr != nil {
				e.logf("bench: %s round=%d backend=%s: undoing its appliance setting: %v", bench, round, b.name, derr)
			}
		}
		testBed := errors.Is(err, errPageFaultStorm) || (errors.Is(err, errGuestTripleFault) && multiCPUTCG())
		if err == nil || !testBed || attempt == diskAttemptsMax {
			return run, err
		}
		e.logf("bench: %s round=%d backend=%s: %v: running it again", bench, round, b.name, err)
	}
}

// diskAttemptsMax bounds a round's attempts. Only the test bed's faults
// are run again, and on a bad day they come in runs: on 2026-12-07 one
// round's three attempts were two page-fault storms and a triple fault,
// which ended a benchmark 9 minutes in.
const diskAttemptsMax = 5

var errGuestTripleFault = errors.New("the guest triple-faulted")

// errPageFaultStorm: a silent guest whose VMM's dump shows KVM injecting
// page faults into a vCPU thousands of times a second, each after
// emulating an instruction, none reaching the VMM: the nested test bed's
// storm (docs/TESTING.md; the supervisor's refaultWatch reports it for its
// VMs, which the end-to-end tests retry). It cost hold5 its table.
var errPageFaultStorm = errors.New("the test bed's page-fault storm")

// stormRE matches the dump's line of a vCPU's KVM counts over its last
// second: "vcpu 0: pf_guest+24120 exits+24120 ... insn_emulation+24120 ...".
var stormRE = regexp.MustCompile(`vcpu \d+: .*\bpf_guest\+(\d+)\b.*\binsn_emulation\+(\d+)\b`)

// pageFaultStorm says whether a dump shows a vCPU in the storm: at least
// stormRate page faults in the dump's second, nine in ten with an
// emulated instruction (the supervisor's refaultWatch rule).
func pageFaultStorm(dump []string) bool {
	for _, l := range dump {
		m := stormRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		pf, err1 := strconv.ParseUint(m[1], 10, 64)
		emu, err2 := strconv.ParseUint(m[2], 10, 64)
		if err1 == nil && err2 == nil && pf >= stormRate && emu >= pf*9/10 {
			return true
		}
	}
	return false
}

// stormRate is refaultWatch's rate (init/vmm.go): the storms seen ran at
// 21000-26000 a second.
const stormRate = 2000

// multiCPUTCG says whether this appliance runs under QEMU's TCG with more
// than one vCPU, where nested guests now and then triple-fault.
func multiCPUTCG() bool {
	info, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && bytes.Contains(info, []byte("QEMU TCG CPU")) && runtime.NumCPU() > 1
}

// diskOnce boots the guest under one backend and collects its figures.
func diskOnce(starter child.Starter, b diskBackend) (diskRun, error) {
	col := newDiskCollector()
	var files []*os.File
	if b.files != nil {
		var err error
		if files, err = b.files(); err != nil {
			return diskRun{}, err
		}
	}
	windows := diskWindows()
	// The histograms go in once, before the VMM starts, for the whole
	// boot: windows count differences, and no test's start patches the
	// kernel's code while the guest runs. (That patching was suspected
	// of the guests that stall at a test's start; a stall came with the
	// histograms installed once too, so it is not their cause:
	// docs/TESTING.md.)
	tr := kvmTrace{tracingDir, "/proc"}
	if err := tr.start(); err != nil {
		for _, w := range windows {
			w.traceErr = err
		}
	}
	defer tr.stop()
	line := func(l string) {
		col.line(l)
		for _, w := range windows {
			w.line(l)
		}
	}
	var env []string
	if b.env != nil {
		env = append(os.Environ(), b.env...)
	}
	p, err := child.Start(starter, child.Spec{Path: b.argv[0], Args: b.argv[1:], Env: env, Line: line, ExtraFiles: files})
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		return diskRun{}, err
	}
	var ws unix.WaitStatus
	tick := time.NewTicker(diskBenchSilence / 8)
	why := col.wait(p.Done(), diskBenchTimeout, diskBenchSilence, tick.C)
	tick.Stop()
	if why == "" {
		ws = p.Wait()
	} else {
		// What the guest said last says where it stopped; hyperroot's
		// VMM also says where its devices' requests are (its dump).
		tail := col.lastLines()
		var dump []string
		if b.dumps && p.Signal(unix.SIGUSR1) == nil {
			select {
			case <-col.dumped:
			case <-p.Done(): // it died instead
			case <-time.After(dumpWait):
			}
			dump = col.dumpLines()
		}
		p.Signal(unix.SIGKILL)
		p.Wait()
		err := fmt.Errorf("%s; console ended with: %q", why, tail)
		if pageFaultStorm(dump) {
			err = fmt.Errorf("%w: %w", errPageFaultStorm, err)
		}
		if len(dump) > 0 {
			err = fmt.Errorf("%w; the VMM's dump:\n%s", err, strings.Join(dump, "\n"))
		}
		return diskRun{}, err
	}
	run, err := col.result()
	if err != nil {
		return diskRun{}, err
	}
	for _, w := range windows {
		m := w.marks.(diskMarks)
		run.cpu = append(run.cpu, fmt.Sprintf("test=%s %s", m.name(), w))
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return diskRun{}, fmt.Errorf("exited %s (%v) after the guest's figures", vmmcli.Reason(ws), ws.ExitStatus())
	}
	return run, nil
}

// diskCollector picks the guest's figures out of a VMM's console, line by
// line.
type diskCollector struct {
	run         diskRun
	mu          sync.Mutex // guards tail, dump and last, read while lines come
	last        time.Time  // when the last line came
	now         func() time.Time
	tail        []string
	dump        []string      // a dump's lines (hyperroot's VMM, on SIGUSR1)
	dumped      chan struct{} // closed at the dump's end line
	verified    bool
	failed      string
	tripleFault string // the VMM's report that its guest triple-faulted
}

func newDiskCollector() *diskCollector {
	return &diskCollector{run: diskRun{values: map[string]float64{}}, dumped: make(chan struct{}), now: time.Now}
}

// dumpWait is how long a stalled VMM gets to answer its dump.
const dumpWait = 30 * time.Second

// dumpLine is what starts each line of a VMM's dump.
const dumpLine = "hyperroot vmm: dump: "

// wait returns "" when done is closed, or why it gave up, looking at
// each tick: the boot took longer than limit, or its console was silent
// for silence.
func (c *diskCollector) wait(done <-chan struct{}, limit, silence time.Duration, tick <-chan time.Time) string {
	start := c.now()
	for {
		select {
		case <-done:
			return ""
		case now := <-tick:
			c.mu.Lock()
			last := c.last
			c.mu.Unlock()
			if last.IsZero() {
				last = start
			}
			switch {
			case now.Sub(start) >= limit:
				return fmt.Sprintf("no result within %s", limit)
			case now.Sub(last) >= silence:
				return fmt.Sprintf("no console line for %s (%s into the boot)", silence, now.Sub(start).Round(time.Second))
			}
		}
	}
}

func (c *diskCollector) line(line string) {
	c.mu.Lock()
	c.last = c.now()
	if i := strings.Index(line, dumpLine); i >= 0 {
		if rest := line[i+len(dumpLine):]; rest == "end" {
			select {
			case <-c.dumped: // a second dump's end
			default:
				close(c.dumped)
			}
		} else {
			c.dump = append(c.dump, rest)
		}
		c.mu.Unlock()
		return
	}
	c.tail = append(c.tail, line)
	if len(c.tail) > 8 {
		c.tail = c.tail[1:]
	}
	c.mu.Unlock()
	for _, v := range parseDiskBenchLine(line) {
		c.run.values[v.test] = v.value
	}
	switch {
	case strings.Contains(line, "guest: diskbench verify ok"):
		c.verified = true
	case strings.Contains(line, "guest: FAIL "):
		c.failed = line[strings.Index(line, "guest: FAIL "):]
	}
	if _, irq, ok := strings.Cut(line, "guest: diskbench irq "); ok {
		c.run.irqs = append(c.run.irqs, irq)
	}
	if k, ok := strings.CutPrefix(line, "hyperroot vmm: disk 0: "); ok {
		c.run.kind = k
	}
	if isTripleFault(line) {
		c.tripleFault = line
	}
}

// lastLines is the console's last lines but a dump's.
func (c *diskCollector) lastLines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.tail)
}

// dumpLines is what a dump said so far, without its prefix.
func (c *diskCollector) dumpLines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.dump)
}

// isTripleFault says whether line is a VMM's report that its guest
// triple-faulted ("hyperroot vmm: <vm>: crash after ... (vCPU n: triple
// fault)"), which the disk and network benchmarks run again in a
// multi-vCPU TCG appliance.
func isTripleFault(line string) bool {
	return strings.Contains(line, "hyperroot vmm: ") && strings.Contains(line, ": triple fault)")
}

// result is the run once the console ended. It counts only if every test
// reported, the guest's final data check passed and no test failed;
// otherwise the error quotes the console's last lines.
func (c *diskCollector) result() (diskRun, error) {
	if c.failed != "" {
		return c.run, fmt.Errorf("the guest failed: %s", c.failed)
	}
	var missing []string
	for _, t := range diskTests() {
		if _, ok := c.run.values[t.name]; !ok {
			missing = append(missing, t.name)
		}
	}
	if !c.verified {
		missing = append(missing, "verify")
	}
	if len(missing) > 0 && c.tripleFault != "" {
		return c.run, fmt.Errorf("%w (%s) before it reported %s", errGuestTripleFault, c.tripleFault, strings.Join(missing, ", "))
	}
	if len(missing) > 0 {
		return c.run, fmt.Errorf("the guest reported no %s; console ended with: %q", strings.Join(missing, ", "), c.tail)
	}
	return c.run, nil
}

// collectDiskBench reads a whole console from r (tests).
func collectDiskBench(r io.Reader) (diskRun, error) {
	c := newDiskCollector()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		c.line(strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return c.run, fmt.Errorf("console: %w", err)
	}
	return c.result()
}

// diskValue is one figure of a guest's line.
type diskValue struct {
	test  string
	value float64
}

// parseDiskBenchLine reads a guest's "guest: diskbench <test> <unit>=<value> ..."
// line: "randread iops=<n> qd=<d> p50us=<n> p99us=<n> ..." gives the
// three figures of randread-qd<d>, "seqread mibps=<n> ..." one. The line
// comes from the guest, so anything is possible: it gives figures only
// for a known test at a queue depth asked for, every value finite and
// non-negative, and nothing otherwise.
func parseDiskBenchLine(line string) []diskValue {
	const tag = "guest: diskbench "
	i := strings.Index(line, tag)
	if i < 0 {
		return nil
	}
	f := strings.Fields(line[i+len(tag):])
	if len(f) < 2 {
		return nil
	}
	field := func(key string) (float64, bool) {
		for _, kv := range f[1:] {
			if s, ok := strings.CutPrefix(kv, key+"="); ok {
				v, err := strconv.ParseFloat(s, 64)
				return v, err == nil && !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0
			}
		}
		return 0, false
	}
	known := func(name string) bool {
		return slices.ContainsFunc(diskTests(), func(t diskTest) bool { return t.name == name })
	}
	switch f[0] {
	case "seqread", "seqwrite":
		v, ok := field("mibps")
		if !ok || !strings.HasPrefix(f[1], "mibps=") {
			return nil
		}
		return []diskValue{{f[0], v}}
	case "randread", "randwrite":
		iops, ok1 := field("iops")
		qd, ok2 := field("qd")
		p50, ok3 := field("p50us")
		p99, ok4 := field("p99us")
		name := fmt.Sprintf("%s-qd%.0f", f[0], qd)
		if !ok1 || !ok2 || !ok3 || !ok4 || !strings.HasPrefix(f[1], "iops=") || qd != math.Trunc(qd) || !known(name) {
			return nil
		}
		return []diskValue{{name, iops}, {name + "-p50", p50}, {name + "-p99", p99}}
	}
	return nil
}

// formatRun is one run's figures on one line.
func formatRun(run diskRun) string {
	var parts []string
	for _, t := range diskTests() {
		parts = append(parts, fmt.Sprintf("%s=%s", t.name, formatValue(run.values[t.name], t.unit)))
	}
	return strings.Join(parts, " ")
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "iops":
		return fmt.Sprintf("%.0f", v)
	case "us":
		return fmt.Sprintf("%.0fus", v)
	}
	return fmt.Sprintf("%.1fMiB/s", v)
}

// diskTable is the summary: per test, each backend's median over its runs,
// then the ratios that matter: each hyperroot backend over QEMU, and
// io_uring over the pool. Higher is better, but for the latencies.
func diskTable(backends []string, runs map[string][]diskRun) []string {
	var ratios [][2]string
	for _, b := range backends {
		if !strings.HasPrefix(b, "qemu") && !strings.Contains(b, "qcow2") && slices.Contains(backends, "qemu") {
			ratios = append(ratios, [2]string{b, "qemu"})
		}
	}
	// The qcow2 clone against QEMU's and against our raw image.
	for _, r := range [][2]string{{"uring", "pool"}, {"qcow2", "qemu-qcow2"}, {"qcow2", "uring"}} {
		if slices.Contains(backends, r[0]) && slices.Contains(backends, r[1]) {
			ratios = append(ratios, r)
		}
	}
	head := fmt.Sprintf("%-18s %-6s", "test", "unit")
	for _, b := range backends {
		head += fmt.Sprintf(" %10s", b)
	}
	for _, r := range ratios {
		head += fmt.Sprintf(" %16s", r[0]+"/"+r[1])
	}
	n := 0
	for _, b := range backends {
		n = max(n, len(runs[b]))
	}
	lines := []string{head + fmt.Sprintf("  (medians of %d rounds; higher is better, but for latencies (us))", n)}
	for _, t := range diskTests() {
		med := map[string]float64{}
		line := fmt.Sprintf("%-18s %-6s", t.name, strings.Replace(t.unit, "mibps", "MiB/s", 1))
		for _, b := range backends {
			var vs []float64
			for _, run := range runs[b] {
				vs = append(vs, run.values[t.name])
			}
			med[b] = medianFloat(vs)
			line += fmt.Sprintf(" %10s", strings.TrimSuffix(strings.TrimSuffix(formatValue(med[b], t.unit), "MiB/s"), "us"))
		}
		for _, r := range ratios {
			ratio := "-"
			if d := med[r[1]]; d > 0 {
				ratio = fmt.Sprintf("%.2f", med[r[0]]/d)
			}
			line += fmt.Sprintf(" %16s", ratio)
		}
		lines = append(lines, line)
	}
	return lines
}

// diskFigures are the records (tools/bench/result) of a disk table: per
// test, ours against peers (goal, when not nil, against goal.Peer).
func diskFigures(bench, ours string, peers []string, runs map[string][]diskRun, goal *result.Goal) []result.Figure {
	var out []result.Figure
	for _, t := range diskTests() {
		unit := map[string]string{"mibps": "MiB/s", "iops": "IOPS", "us": "µs"}[t.unit]
		f := result.Figure{Bench: bench, Name: diskFigureName(t.name), Unit: unit, Lower: lowerIsBetter(t.unit),
			Ours: ours, Values: map[string][]float64{}, Goal: goal}
		for _, b := range append([]string{ours}, peers...) {
			vs := []float64{}
			for _, run := range runs[b] {
				vs = append(vs, run.values[t.name])
			}
			f.Values[b] = vs
		}
		out = append(out, f)
	}
	return out
}

// diskFigureName says what a disk test does, as the table does:
// "randread-qd4-p99" is "4 KiB randread QD4, p99 latency".
func diskFigureName(test string) string {
	kind, rest, random := strings.Cut(test, "-qd")
	if !random {
		return "1 MiB " + test
	}
	qd, pct, latency := strings.Cut(rest, "-")
	name := "4 KiB " + kind + " QD" + qd
	if latency {
		name += ", " + pct + " latency"
	}
	return name
}

// medianFloat is the median of vs (the upper one of an even count), 0 for none.
func medianFloat(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}

// diskMarks open a CPU window at the guest's line before one of its timed
// tests ("guest: diskbench begin randread qd=4") and close it at that
// test's figures; the work is the test's requests, in thousands, so that
// the window's exits, interrupts and system calls read per thousand
// requests.
type diskMarks struct {
	test string // "randread", "seqwrite", ...
	qd   int
}

func (m diskMarks) name() string {
	if strings.HasPrefix(m.test, "seq") {
		return m.test
	}
	return fmt.Sprintf("%s-qd%d", m.test, m.qd)
}

func (m diskMarks) open(line string) (float64, bool, error) {
	return 0, strings.HasSuffix(line, fmt.Sprintf("guest: diskbench begin %s qd=%d", m.test, m.qd)), nil
}

func (m diskMarks) close(line string, _ float64) (float64, bool, error) {
	prefix := "guest: diskbench " + m.test + " "
	i := strings.Index(line, prefix)
	if i < 0 {
		return 0, false, nil
	}
	f := map[string]string{}
	for _, kv := range strings.Fields(line[i+len(prefix):]) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	if f["jobs"] != strconv.Itoa(m.qd) {
		return 0, false, nil // the same test at another depth
	}
	ops, err := strconv.ParseInt(f["ops"], 10, 64)
	if err != nil || ops <= 0 {
		return 0, false, fmt.Errorf("no request count in %q", line[i:])
	}
	return float64(ops) / 1000, true, nil
}

func (diskMarks) unit() string { return "1000req" }

// diskWindows are a boot's CPU windows: one per timed test of the guest.
func diskWindows() []*streamCPU {
	var ws []*streamCPU
	add := func(test string, qd int) {
		ws = append(ws, &streamCPU{proc: "/proc", kvm: kvmStatsDir, trace: tracingDir, traceOn: true, marks: diskMarks{test, qd}})
	}
	add("seqwrite", 1)
	for _, kind := range []string{"randwrite", "randread"} {
		for _, qd := range diskBenchDepths {
			add(kind, qd)
		}
	}
	add("seqread", 1)
	return ws
}
