package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// statLine builds a /proc/<pid>/stat line with the fields the account reads.
func statLine(pid int, comm string, flags, utime, stime, guest uint64) string {
	f := make([]string, 50) // fields 3.. of proc(5)
	for i := range f {
		f[i] = "0"
	}
	f[22-3] = fmt.Sprint(1000 + pid) // starttime
	f[0] = "S"
	f[9-3] = fmt.Sprint(flags)
	f[14-3] = fmt.Sprint(utime)
	f[15-3] = fmt.Sprint(stime)
	f[43-3] = fmt.Sprint(guest)
	return fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(f, " "))
}

func TestParsePidStat(t *testing.T) {
	p, err := parsePidStat([]byte(statLine(7, "a) (b c", 0x40, 120, 30, 100)))
	if err != nil {
		t.Fatal(err)
	}
	if p.comm != "a) (b c" || p.flags != 0x40 || p.utime != 120 || p.stime != 30 || p.guest != 100 || p.start != 1007 {
		t.Errorf("got %+v", p)
	}
	for _, bad := range []string{"", "7 (x", "7 x) S 1", "7 (x) S 1 2 3", "7 (x) " + strings.Repeat("a ", 60)} {
		if _, err := parsePidStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	stat := "cpu  100 5 50 800 20 3 2 0 40 0\ncpu0 50 0 25 400 10 1 1 0 20 0\ncpu1 50 5 25 400 10 2 1 0 20 0\nintr 1 2\n"
	busy, total, cpus, err := parseProcStat([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	// total: user..steal (guest is inside user); busy: less idle and iowait.
	if total != 980 || busy != 160 || cpus != 2 {
		t.Errorf("busy %d total %d cpus %d, want 160 980 2", busy, total, cpus)
	}
	for _, bad := range []string{"intr 1\n", "cpu 1 2 3\n", "cpu 1 2 3 4 5 6 7 x 9\n"} {
		if _, _, _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCPUGroup(t *testing.T) {
	for _, tc := range []struct {
		comm  string
		flags uint64
		argv  []string
		want  string
	}{
		{"vhost-812", pfKthread, nil, "vhost"},
		{"ksoftirqd/0", pfKthread, nil, "kernel"},
		{"hyperroot", 0, []string{"/bin/hyperroot", "switch", "--config", "x"}, "switch"},
		{"hyperroot", 0, []string{"/bin/hyperroot", "vmm", "--name", "server"}, "vmm"},
		{"init", 0, []string{"/init"}, "hyperroot"},
		{"hyperroot-bench", 0, []string{"/bench/hyperroot-bench", "net"}, "other"},
		{"qemu-system-x86", 0, []string{"/usr/bin/qemu-system-x86_64", "-M", "pc"}, "qemu"},
		{"zombie", 0, nil, "other"},
	} {
		if got := cpuGroup(pidStat{comm: tc.comm, flags: tc.flags}, tc.argv); got != tc.want {
			t.Errorf("%s %q: %s, want %s", tc.comm, tc.argv, got, tc.want)
		}
	}
}

// fakeProc writes a /proc with the machine's cpu line and the given
// processes' stat and cmdline files.
func fakeProc(t *testing.T, dir string, busy, idle uint64, procs map[int][2]string) {
	t.Helper()
	os.RemoveAll(dir)
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "stat"), fmt.Sprintf("cpu  %d 0 0 %d 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n", busy, idle))
	for pid, p := range procs {
		write(filepath.Join(dir, fmt.Sprint(pid), "stat"), p[0])
		write(filepath.Join(dir, fmt.Sprint(pid), "cmdline"), p[1])
	}
}

// TestStreamCPU: the window opens at the client's "under way" line and
// closes at its "sent" line, and the account is the difference of what
// /proc said at the two moments, by group.
func TestStreamCPU(t *testing.T) {
	proc, kvm := t.TempDir(), t.TempDir()
	w := &streamCPU{proc: proc, kvm: kvm}
	writeKVM := func(exits, irqs int) {
		for name, v := range map[string]int{"exits": exits, "irq_injections": irqs} {
			if err := os.WriteFile(filepath.Join(kvm, name), []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeKVM(1000, 500)
	fakeProc(t, proc, 1000, 1000, map[int][2]string{
		10: {statLine(10, "hyperroot", 0, 50, 10, 0), "/hyperroot\x00switch\x00"},
		11: {statLine(11, "hyperroot", 0, 400, 20, 300), "/hyperroot\x00vmm\x00"},
		12: {statLine(12, "vhost-9", pfKthread, 0, 5, 0), ""},
	})
	w.line("guest: booted")
	w.line("guest: net ping 10.77.0.100 rtt_us=800")
	if got := w.String(); got != "cpu: no window" {
		t.Fatalf("before the stream: %q", got)
	}
	w.line("client: guest: net under way sent=16777216 of 67108864")
	time.Sleep(20 * time.Millisecond)
	fakeProc(t, proc, 1000+150, 1000+50, map[int][2]string{
		10: {statLine(10, "hyperroot", 0, 50+40, 10+20, 0), "/hyperroot\x00switch\x00"},
		11: {statLine(11, "hyperroot", 0, 400+80, 20+10, 300+60), "/hyperroot\x00vmm\x00"},
		12: {statLine(12, "vhost-9", pfKthread, 0, 5, 0), ""},
		// A process that started inside the window counts whole.
		13: {statLine(13, "hyperroot", 0, 7, 0, 0), "/hyperroot\x00vmm\x00"},
	})
	writeKVM(1000+4800, 500+960)
	w.line("guest: net sent bytes=67108864 sha256=ab mbps=40.0")
	a := w.acct
	if a == nil {
		t.Fatalf("no account: %s", w)
	}
	if a.groups["switch"] != (procTicks{host: 60}) || a.groups["vmm"] != (procTicks{host: 37, guest: 60}) || a.groups["vhost"] != (procTicks{}) {
		t.Errorf("groups %+v", a.groups)
	}
	if a.cpus != 2 || a.busy != 1.5 || a.work != 48 {
		t.Errorf("cpus %d busy %.2f work %.0f, want 2 1.5 48", a.cpus, a.busy, a.work)
	}
	s := w.String()
	for _, want := range []string{"busy=1.50/2", "switch=", "vmm=", "guests=", "cpu-ms/MiB=", "kvm/MiB exits=100 irq_injections=20"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
	// Later lines change nothing.
	w.line("guest: net under way sent=1 of 2")
	if w.acct != a {
		t.Error("the account changed after the window closed")
	}
}

func TestStreamCPUBadLine(t *testing.T) {
	w := &streamCPU{proc: "/proc"}
	w.line("guest: net under way sent=lots of 7")
	if !strings.Contains(w.String(), "unreadable") {
		t.Errorf("%s", w)
	}
}

// TestSampleCPUReal reads this machine's /proc: this test's own process
// is found, and the CPU it burns between two samples is counted, however
// many other processes come and go meanwhile (a busy CI machine).
func TestSampleCPUReal(t *testing.T) {
	from, err := sampleCPU("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if from.cpus < 1 || from.total == 0 {
		t.Fatalf("cpus %d total %d", from.cpus, from.total)
	}
	if _, ok := from.procs[os.Getpid()]; !ok {
		t.Fatalf("this process (%d) is not in the sample", os.Getpid())
	}
	// 300 ms of this process's own CPU time, not of the clock: on a
	// loaded machine the clock's 300 ms may hold little of it.
	cpu := func() time.Duration {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts)
		return time.Duration(ts.Nano())
	}
	x, c0 := uint64(1), cpu()
	for cpu()-c0 < 300*time.Millisecond {
		for range 1000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	to, err := sampleCPU("/proc")
	if err != nil {
		t.Fatal(err)
	}
	a := accountCPU(from, to, 0, "MiB")
	// This process is "other" (a test binary): 300 ms are 30 ticks.
	if got := a.groups["other"].host; got < 20 {
		t.Errorf("other: %d ticks after 300 ms of CPU spinning (x=%d); groups %+v", got, x, a.groups)
	}
	if a.busy <= 0 {
		t.Errorf("busy %.2f", a.busy)
	}
}
