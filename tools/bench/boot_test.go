package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/tools/bench/result"
)

// smapsEntry renders one mapping of /proc/PID/smaps with the fields
// parseSmaps reads (and a few it must skip).
func smapsEntry(rng, perms, name string, rss, anon int) string {
	return fmt.Sprintf("%s %s 00000000 00:02 7          %s\nSize:  9999 kB\nKernelPageSize: 4 kB\nRss:   %d kB\nPss:   %d kB\n"+
		"Shared_Clean:  0 kB\nAnonymous:  %d kB\nAnonHugePages:  0 kB\nVmFlags: rd wr mr mw me ac\n", rng, perms, name, rss, rss, anon)
}

func TestParseSmaps(t *testing.T) {
	const exe = "/bin/hyperroot"
	for _, tc := range []struct {
		name  string
		maps  []string
		want  vmmMemory
		total int // Private()
	}{
		{"empty", nil, vmmMemory{}, 0},
		{"appliance VMM", []string{
			smapsEntry("00400000-00785000", "r-xp", exe, 2900, 0),
			smapsEntry("00785000-00b4f000", "r--p", exe, 3324, 0),
			smapsEntry("00b4f000-00b74000", "rw-p", exe, 148, 44),
			smapsEntry("00b74000-030e1000", "rw-p", "", 244, 244), // bss: right after the binary
			smapsEntry("1dc68f000000-1dc691000000", "rw-p", "", 1200, 1200),
			smapsEntry("7f75224b1000-7f75324b1000", "rw-s", "/memfd:hyperroot-guest-ram (deleted)", 119052, 0),
			smapsEntry("7f75324b1000-7f75326e9000", "rw-p", "", 300, 300),
			smapsEntry("7f8f24a03000-7f8f24a06000", "rw-s", "anon_inode:kvm-vcpu:0", 12, 0),
			smapsEntry("7ffd1dfb8000-7ffd1dfd9000", "rw-p", "[stack]", 16, 16),
			smapsEntry("7f8f24d04000-7f8f24d06000", "r-xp", "[vdso]", 8, 0),
		}, vmmMemory{RSS: 2900 + 3324 + 148 + 244 + 1200 + 119052 + 300 + 12 + 16 + 8, Guest: 119052,
			File: 2900 + 3324 + 104, Go: 1500, Data: 44 + 244, Stack: 16}, 1500 + 288 + 16},
		{"unnamed mapping not after the binary is the runtime's, named ones too", []string{
			smapsEntry("00400000-00785000", "r-xp", exe, 100, 0),
			smapsEntry("00800000-00900000", "rw-p", "", 40, 40),
			smapsEntry("7f0000000000-7f0000100000", "rw-p", "[anon: Go: heap]", 60, 60),
		}, vmmMemory{RSS: 200, File: 100, Go: 100}, 100},
		{"a cgo build's libc: file pages shared, written ones private", []string{
			smapsEntry("7f5c5cf4c000-7f5c5d0a2000", "r-xp", "/usr/lib/x86_64-linux-gnu/libc.so.6", 912, 0),
			smapsEntry("7f5c5d0f5000-7f5c5d0f9000", "rw-p", "/usr/lib/x86_64-linux-gnu/libc.so.6", 16, 16),
		}, vmmMemory{RSS: 928, File: 912, Go: 16}, 16},
		{"malformed lines are skipped", []string{
			"zz-yy rw-p 0 0 0\nRss: 5 kB\n",
			"Rss: x kB\nAnonymous: 3 MB\n",
			smapsEntry("7ffd1dfb8000-7ffd1dfd9000", "rw-p", "[stack]", 8, 8),
		}, vmmMemory{RSS: 8, Stack: 8}, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseSmaps([]byte(strings.Join(tc.maps, "")), exe)
			if got != tc.want {
				t.Errorf("parseSmaps = %+v, want %+v", got, tc.want)
			}
			if got.Private() != tc.total {
				t.Errorf("Private() = %d, want %d", got.Private(), tc.total)
			}
		})
	}
}

// TestMemorySampleSelf reads this test process: its binary's pages are
// file pages, the Go heap is private, and nothing is guest RAM.
func TestMemorySampleSelf(t *testing.T) {
	keep := make([]byte, 8<<20)
	for i := range keep {
		keep[i] = 1
	}
	m, err := memorySample(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.Guest != 0 || m.File == 0 || m.Stack == 0 {
		t.Errorf("sample %v: want no guest RAM, some file pages and a stack", m)
	}
	if m.Go < 8<<10 {
		t.Errorf("sample %v: the 8 MiB just written are not counted as private Go memory", m)
	}
	if m.Private() > m.RSS {
		t.Errorf("sample %v: more private than resident", m)
	}
	if !strings.Contains(m.String(), "private=") {
		t.Errorf("String() = %q", m.String())
	}
	keep[len(keep)-1] = 2
	if _, err := memorySample(1 << 30); err == nil {
		t.Error("sampling a process that does not exist succeeded")
	}
}

// TestBootPeers: the jailed hyperroot is started as the supervisor starts
// a VMM (its own namespaces, --jail, the seccomp filters killing), the
// plain one with none of it, and QEMU boots the same kernel on both its
// machine types.
func TestBootPeers(t *testing.T) {
	peers := map[string]benchPeer{}
	for _, p := range bootPeers("/bin/hyperroot") {
		peers[p.name] = p
	}
	plain, jailed := peers["hyperroot"], peers["hyperroot-jailed"]
	if slices.Contains(plain.argv, "--jail") || plain.attr != nil {
		t.Errorf("plain hyperroot is jailed: %q", plain.argv)
	}
	if i := slices.Index(jailed.argv, "--jail"); i < 0 || jailed.argv[i+1] != "200000" {
		t.Errorf("jailed hyperroot argv %q lacks --jail 200000", jailed.argv)
	}
	if i := slices.Index(jailed.argv, "--seccomp"); i < 0 || jailed.argv[i+1] != "kill" {
		t.Errorf("jailed hyperroot argv %q lacks --seccomp kill", jailed.argv)
	}
	if jailed.attr == nil || jailed.attr().Cloneflags&syscall.CLONE_NEWNS == 0 {
		t.Errorf("jailed hyperroot does not start in namespaces of its own")
	}
	for peer, m := range map[string]string{"qemu-pc": "pc", "qemu-microvm": "microvm", "qemu-pc-vmlinux": "pc"} {
		q := peers[peer]
		kernel := "/guest/vmlinuz"
		if strings.HasSuffix(peer, "-vmlinux") {
			kernel = "/guest/vmlinux"
		}
		if i := slices.Index(q.argv, "-M"); i < 0 || q.argv[i+1] != m || !slices.Contains(q.argv, kernel) {
			t.Errorf("%s argv %q", peer, q.argv)
		}
	}
	// hyperroot boots the unpacked kernel, and the bzImage beside it.
	for name, kernel := range map[string]string{"hyperroot": "/guest/vmlinux", "hyperroot-jailed": "/guest/vmlinux", "hyperroot-bzimage": "/guest/vmlinuz"} {
		if i := slices.Index(peers[name].argv, "--kernel"); i < 0 || peers[name].argv[i+1] != kernel {
			t.Errorf("%s argv %q, want --kernel %s", name, peers[name].argv, kernel)
		}
	}
}

func TestBootSummary(t *testing.T) {
	peers := bootPeers("/bin/hyperroot")
	s := func(ms ...int) (d []time.Duration) {
		for _, m := range ms {
			d = append(d, time.Duration(m)*time.Millisecond)
		}
		return d
	}
	times := map[string][]time.Duration{
		"hyperroot": s(1000, 900, 5000), "hyperroot-jailed": s(1100, 990, 1000),
		"hyperroot-bzimage": s(2500, 2500, 2500),
		"gokvm":             s(2000, 2000), "qemu-pc": s(3000, 3600, 3000), "qemu-pc-vmlinux": s(2000, 2000, 2000), "qemu-microvm": nil,
	}
	got := strings.Join(bootSummary(peers, times, 3), "\n")
	want := "hyperroot=1.000s hyperroot-jailed=1.000s hyperroot-bzimage=2.500s gokvm=2.000s (2 booted) qemu-pc=3.000s qemu-pc-vmlinux=2.000s qemu-microvm=none (median of 3)\n" +
		"ratio hyperroot/hyperroot-bzimage=0.40\nratio hyperroot/gokvm=0.50\nratio hyperroot/qemu-pc=0.33\nratio hyperroot/qemu-pc-vmlinux=0.50\nratio hyperroot-jailed/hyperroot=1.00"
	if got != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got, want)
	}
}

// TestCPUShare: a process that sleeps is idle; this one, spinning, is not.
func TestCPUShare(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if got := cpuShare(cmd.Process.Pid, 300*time.Millisecond); !strings.Contains(got, ", 0% of one CPU over the last 300ms") {
		t.Errorf("a sleeping process: %q", got)
	}
	var stop atomic.Bool
	defer stop.Store(true)
	go func() {
		for !stop.Load() {
		}
	}()
	got := cpuShare(os.Getpid(), 500*time.Millisecond)
	var all, pct float64
	if _, err := fmt.Sscanf(got, "the VMM used %f s of CPU in all, %f%%", &all, &pct); err != nil || pct <= 0 {
		t.Errorf("a spinning process: %q (%v)", got, err)
	}
	if got := cpuShare(-1, time.Millisecond); !strings.Contains(got, "no such file") {
		t.Errorf("no process: %q", got)
	}
}

// TestFigures: the records the benchmarks print carry each contender's
// rounds, the goal of the project's performance issue, and survive the
// console (tools/benchreport reads them back).
func TestFigures(t *testing.T) {
	times := map[string][]time.Duration{
		"hyperroot": {2 * time.Second, 3 * time.Second}, "hyperroot-jailed": {4 * time.Second},
		"qemu-pc": {5 * time.Second}, "gokvm": {},
	}
	figs := bootFigures(times)
	if len(figs) != 2 {
		t.Fatalf("%d boot figures", len(figs))
	}
	start, ok := result.Parse("run| " + figs[0].Line())
	if !ok || !start.Lower || start.Goal == nil || start.Goal.Peer != "qemu-pc" || start.Goal.Ratio != 0.6 {
		t.Fatalf("boot figure %+v", start)
	}
	if _, jailed := start.Values["hyperroot-jailed"]; jailed || len(start.Values["hyperroot"]) != 2 {
		t.Errorf("boot figure values %v: want hyperroot's 2 rounds and no jailed one", start.Values)
	}
	if r := result.Summary(figs[1]); r.Ratios["hyperroot"] != 4.0/3 {
		t.Errorf("jail figure ratio %v, want 4/3", r.Ratios)
	}
	runs := map[string][]diskRun{
		"uring": {{values: map[string]float64{"randread-qd4": 900, "randread-qd4-p99": 3000, "seqread": 100}}},
		"qemu":  {{values: map[string]float64{"randread-qd4": 1000, "randread-qd4-p99": 2000, "seqread": 50}}},
	}
	disk := diskFigures("disk", "uring", []string{"qemu"}, runs, &result.Goal{Peer: "qemu", Ratio: 1})
	byName := map[string]result.Figure{}
	for _, f := range disk {
		byName[f.Name] = f
	}
	if len(disk) != len(diskTests()) {
		t.Errorf("%d disk figures for %d tests", len(disk), len(diskTests()))
	}
	for name, check := range map[string]func(result.Row) bool{
		// Higher is better: 0.9 of QEMU misses the goal.
		"4 KiB randread QD4": func(r result.Row) bool { return r.Unit == "IOPS" && !r.Lower && r.Met != nil && !*r.Met },
		// Lower is better: 1.5 times QEMU's p99 misses it too.
		"4 KiB randread QD4, p99 latency": func(r result.Row) bool { return r.Unit == "µs" && r.Lower && r.Met != nil && !*r.Met },
		// Twice QEMU's bandwidth meets it.
		"1 MiB seqread": func(r result.Row) bool { return r.Unit == "MiB/s" && r.Ratios["qemu"] == 2 && r.Met != nil && *r.Met },
	} {
		f, ok := byName[name]
		if !ok {
			t.Errorf("no disk figure %q", name)
			continue
		}
		if r := result.Summary(f); !check(r) {
			t.Errorf("%s: %+v", name, r)
		}
	}
}

// TestParsePhases: a boot's phases from the VMM's own timing line and the
// guest's uptime at its ready line, as the console has them.
func TestParsePhases(t *testing.T) {
	running := "hyperroot vmm: bench: 1 vCPUs running 412.5ms after start (machine built in 301.2ms: kvm=1ms memory=2ms acpi=1ms firmware=0s load=290ms devices=5ms vcpus=2.2ms)"
	booted := "guest: booted nproc=1 memtotal_kb=93920 time=1796530035 uptime=1.250 inputs=1 rtc=1796530035 clocksource=kvm-clock virt=none"
	ph, ok := parsePhases(4*time.Second, running, booted)
	if !ok {
		t.Fatal("not parsed")
	}
	want := bootPhases{Built: 301200 * time.Microsecond, Started: 111300 * time.Microsecond,
		Early: 4*time.Second - 412500*time.Microsecond - 1250*time.Millisecond, Kernel: 1250 * time.Millisecond}
	if ph != want {
		t.Errorf("phases %+v, want %+v", ph, want)
	}
	if got := buildSteps(running); got != "kvm=1ms memory=2ms acpi=1ms firmware=0s load=290ms devices=5ms vcpus=2.2ms" {
		t.Errorf("build steps %q", got)
	}
	// The line before the steps were added still parses.
	if old, ok := parsePhases(4*time.Second, "hyperroot vmm: bench: 1 vCPUs running 412.5ms after start (machine built in 301.2ms)", booted); !ok || old != want {
		t.Errorf("the older line's phases %+v, %v", old, ok)
	}
	// Another VMM: all its time before the guest's clock is Early.
	if ph, ok := parsePhases(4*time.Second, "", booted); !ok || ph != (bootPhases{Early: 2750 * time.Millisecond, Kernel: 1250 * time.Millisecond}) {
		t.Errorf("a peer's phases %+v, %v", ph, ok)
	}
	for _, tc := range [][2]string{
		{running, "guest: booted nproc=1"}, // no uptime
		{"hyperroot vmm: bench: 1 vCPUs running 1s after start (machine built in 2s)", booted}, // built after running
	} {
		if _, ok := parsePhases(4*time.Second, tc[0], tc[1]); ok {
			t.Errorf("parsed %q / %q", tc[0], tc[1])
		}
	}
	peer := bootPhases{Early: 3 * time.Second, Kernel: time.Second}
	figs := phaseFigures(map[string][]bootPhases{"hyperroot": {ph, ph}, "qemu-pc": {peer}})
	if len(figs) != 4 || len(figs[3].Values["hyperroot"]) != 2 || figs[3].Values["hyperroot"][0] != 1.25 || figs[3].Values["qemu-pc"][0] != 1 {
		t.Errorf("phase figures %+v", figs)
	}
	if _, ok := figs[0].Values["qemu-pc"]; ok {
		t.Error("a peer in the VMM-only phase")
	}
	if got := figs[2].Values["hyperroot"][0]; got != 2.75 || figs[2].Values["qemu-pc"][0] != 3 {
		t.Errorf("before the guest's clock: hyperroot %v, qemu-pc %v; want 2.75 and 3", got, figs[2].Values["qemu-pc"])
	}
}

// TestRoundOrder: every round boots every peer once, each round starting
// one further along, so no contender always follows the same one.
func TestRoundOrder(t *testing.T) {
	peers := bootPeers("/bin/hyperroot")
	firsts := map[string]bool{}
	for round := 1; round <= len(peers); round++ {
		order := roundOrder(peers, round)
		if len(order) != len(peers) {
			t.Fatalf("round %d: %d peers, want %d", round, len(order), len(peers))
		}
		seen := map[string]bool{}
		for _, p := range order {
			seen[p.name] = true
		}
		if len(seen) != len(peers) {
			t.Errorf("round %d boots %d distinct peers, want %d", round, len(seen), len(peers))
		}
		firsts[order[0].name] = true
	}
	if len(firsts) != len(peers) {
		t.Errorf("over %d rounds %d peers went first, want each once", len(peers), len(firsts))
	}
	if roundOrder(peers, 1)[0].name != "hyperroot" || len(roundOrder[benchPeer](nil, 2)) != 0 {
		t.Error("round 1 does not keep the peers' order, or no peers gave some")
	}
}

// TestWaitQuiet: two quiet windows in a row end the wait; a busy one in
// between starts the count again; a machine never quiet is an error.
func TestWaitQuiet(t *testing.T) {
	// Cumulative (busy, total) samples; each step is one window.
	steps := func(deltas ...[2]uint64) func() (uint64, uint64, error) {
		var busy, total uint64
		i := 0
		return func() (uint64, uint64, error) {
			if i > 0 && i <= len(deltas) {
				busy += deltas[i-1][0]
				total += deltas[i-1][1]
			} else if i > len(deltas) {
				busy, total = busy+50, total+50 // busy for ever after
			}
			i++
			return busy, total, nil
		}
	}
	calls := 0
	counting := func(f func() (uint64, uint64, error)) func() (uint64, uint64, error) {
		calls = 0
		return func() (uint64, uint64, error) { calls++; return f() }
	}
	// busy, quiet, busy, quiet, empty, quiet, quiet: done at the 7th window.
	read := counting(steps([2]uint64{40, 50}, [2]uint64{5, 50}, [2]uint64{30, 50}, [2]uint64{0, 50}, [2]uint64{0, 0}, [2]uint64{5, 50}, [2]uint64{0, 50}))
	if _, err := waitQuiet(read, 0, time.Minute); err != nil {
		t.Fatal(err)
	}
	if calls != 8 {
		t.Errorf("quiet after %d samples, want 8 (the first and 7 windows)", calls)
	}
	if _, err := waitQuiet(steps(), time.Millisecond, 20*time.Millisecond); err == nil {
		t.Error("a machine busy for ever was called quiet")
	}
}

// TestVMStatDelta: the counters that grew, in order; others and unknown
// lines are left out.
func TestVMStatDelta(t *testing.T) {
	from := parseVMStat([]byte("nr_free_pages 100\nthp_file_alloc 4\nthp_file_fallback 9\ncompact_stall 1\nbogus\n"))
	to := parseVMStat([]byte("nr_free_pages 50\nthp_file_alloc 12\nthp_file_fallback 9\ncompact_stall 3\n"))
	if got, want := vmstatDelta(from, to), "thp_file_alloc=+8 compact_stall=+2"; got != want {
		t.Errorf("delta %q, want %q", got, want)
	}
	if real := readVMStat(); real == nil || len(real) == 0 {
		t.Errorf("this machine's /proc/vmstat gave %v", real)
	}
}
