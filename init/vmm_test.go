package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// testKernel returns the Debian bzImage of a built image, which the VMM's
// bad-input checks need to get past the kernel.
func testKernel(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("HYPERROOT_IMAGE")
	if dir == "" {
		dir = "../out/image"
	}
	p := filepath.Join(dir, "vmlinuz")
	_, err := os.Stat(p)
	testenv.Need(t, err == nil, "no built kernel at "+p+": run ./build.sh build")
	return p
}

// captureStderr runs f with os.Stderr redirected and returns what it wrote.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	defer func() { os.Stderr = old }()
	done := make(chan []byte)
	go func() {
		b := make([]byte, 64<<10)
		n, _ := r.Read(b)
		done <- b[:n]
	}()
	f()
	w.Close()
	return string(<-done)
}

// TestVMMBadInput: every way to ask `hyperroot vmm` for an impossible VM is
// one line naming the problem and a non-zero exit, never a panic.
func TestVMMBadInput(t *testing.T) {
	testenv.NeedKVM(t)
	kernel := testKernel(t)
	dir := t.TempDir()
	truncated := filepath.Join(dir, "truncated")
	data, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(truncated, data[:3000], 0o644)
	notKernel := filepath.Join(dir, "text")
	os.WriteFile(notKernel, []byte(strings.Repeat("not a kernel\n", 1000)), 0o644)
	bigInitrd := filepath.Join(dir, "initrd")
	f, _ := os.Create(bigInitrd)
	f.Truncate(200 << 20) // sparse: 200 MiB of initrd for a 128 MiB guest
	f.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no kernel flag", nil, vmmcli.ExitUsage, "--kernel is required"},
		{"missing kernel", []string{"--kernel", "/no/such/vmlinuz"}, vmmcli.ExitError, "kernel: open /no/such/vmlinuz: no such file or directory"},
		{"truncated kernel", []string{"--kernel", truncated}, vmmcli.ExitError, "kernel: truncated"},
		{"not a bzImage", []string{"--kernel", notKernel}, vmmcli.ExitError, "kernel: not a bzImage"},
		{"initrd larger than memory", []string{"--kernel", kernel, "--initrd", bigInitrd, "--memory", "128M"}, vmmcli.ExitError, "memory 128 MiB too small: the kernel and its 200 MiB initrd need at least"},
		{"memory too small", []string{"--kernel", kernel, "--memory", "32M"}, vmmcli.ExitError, "memory 32 MiB too small: the kernel need"},
		{"zero cpus", []string{"--kernel", kernel, "--cpus", "0"}, vmmcli.ExitError, "cpus 0: want at least 1"},
		{"too many cpus", []string{"--kernel", kernel, "--cpus", "100000"}, vmmcli.ExitError, "cpus 100000: this host's KVM allows at most"},
		{"bad memory", []string{"--kernel", kernel, "--memory", "lots"}, vmmcli.ExitError, `memory: size "lots"`},
		{"bad flag", []string{"--kernel", kernel, "--cpu", "2"}, vmmcli.ExitUsage, "flag provided but not defined: -cpu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			out := captureStderr(t, func() { code = vmmMain(tc.args) })
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("hyperroot vmm %v: exit %d (want %d), stderr %q lacks %q", tc.args, code, tc.code, out, tc.want)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") {
				t.Errorf("panic: %s", out)
			}
		})
	}
}

func TestMapFile(t *testing.T) {
	dir := t.TempDir()
	data := []byte("bzImage stand-in, mapped not copied")
	regular := filepath.Join(dir, "kernel")
	if err := os.WriteFile(regular, data, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		path       string
		want       []byte // nil: compare with the file read normally
		wantMapped bool
		wantErr    bool
	}{
		{"regular file is mapped", regular, data, true, false},
		{"empty file reads as empty", empty, []byte{}, false, false},
		{"proc file is read", "/proc/self/cmdline", nil, false, false},
		{"missing file", filepath.Join(dir, "nope"), nil, false, true},
		{"directory", dir, nil, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mapFile(tc.path)
			if (err != nil) != tc.wantErr {
				t.Fatalf("mapFile(%s) error %v, want error %v", tc.path, err, tc.wantErr)
			}
			if err != nil {
				return
			}
			want := tc.want
			if want == nil {
				if want, err = os.ReadFile(tc.path); err != nil {
					t.Fatal(err)
				}
			}
			if string(m.Bytes()) != string(want) || m.mapped != tc.wantMapped {
				t.Errorf("mapFile(%s) = %q mapped=%v, want %q mapped=%v", tc.path, m.Bytes(), m.mapped, want, tc.wantMapped)
			}
			if err := m.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := m.Close(); err != nil || m.Bytes() != nil {
				t.Errorf("second Close: %v, Bytes %q", err, m.Bytes())
			}
		})
	}
}

// TestTuneRuntime checks the VMM role's runtime settings, and that the
// environment still overrides them; the test process's own are restored.
func TestTuneRuntime(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(100)
	limit := debug.SetMemoryLimit(-1)
	rate := runtime.MemProfileRate
	t.Cleanup(func() {
		runtime.GOMAXPROCS(procs)
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
		runtime.MemProfileRate = rate
	})
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS"} {
		t.Setenv(k, "")
	}
	tuneRuntime()
	if got := debug.SetGCPercent(100); got != vmmGCPercent {
		t.Errorf("GC percent = %d, want %d", got, vmmGCPercent)
	}
	if got := debug.SetMemoryLimit(-1); got != vmmMemoryLimit {
		t.Errorf("memory limit = %d, want %d", got, vmmMemoryLimit)
	}
	if runtime.MemProfileRate != 0 {
		t.Errorf("MemProfileRate = %d, want 0", runtime.MemProfileRate)
	}

	// The environment wins.
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOGC", "100")
	t.Setenv("GOMEMLIMIT", "off")
	tuneRuntime()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100 in the environment overridden: %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT=off in the environment overridden: %d", got)
	}
}

// TestVMMProcs: a VMM gets the Ps its machine asks for (a vCPU and a
// device each keep one while they wait) on any host up to maxProcs, and
// beyond where the host has the CPUs; a machine larger than that gets the
// old count (vCPUs+1 at most the host's CPUs: 1024 vCPUs on a small host
// starved with a P each).
func TestVMMProcs(t *testing.T) {
	for _, tc := range []struct{ procs, cpus, host, want int }{
		{4, 1, 2, 4}, {4, 1, 1, 4}, {13, 8, 2, 13}, {16, 12, 2, 16}, {17, 12, 2, 2},
		{70, 64, 128, 70}, {70, 64, 16, 16}, {1029, 1024, 1, 1}, {1029, 1024, 2048, 1029}, {70, 64, 200, 70},
	} {
		if got := vmmProcs(tc.procs, tc.cpus, tc.host); got != tc.want {
			t.Errorf("vmmProcs(%d Ps asked, %d vCPUs, %d host CPUs) = %d, want %d", tc.procs, tc.cpus, tc.host, got, tc.want)
		}
	}
}

// TestRefaultWatch: a vCPU into which KVM injects thousands of page
// faults a second, each with an emulated instruction, is reported once;
// faults without emulation (shadow paging's ordinary ones) or at a
// working guest's rate are not.
func TestRefaultWatch(t *testing.T) {
	var r refaultWatch
	const p = 10 * time.Second
	if got := r.next([]uint64{0, 0, 0}, []uint64{0, 0, 0}, p); got != nil {
		t.Errorf("first counts: %v", got)
	}
	r.pf, r.emu = []uint64{0, 0, 0}, []uint64{0, 0, 0}
	pf, emu := []uint64{250000, 250000, 300}, []uint64{250000, 1000, 300}
	if got := r.next(pf, emu, p); len(got) != 1 || got[0] != 0 {
		t.Errorf("reported %v, want vcpu 0", got)
	}
	r.pf, r.emu = pf, emu
	if got := r.next([]uint64{500000, 500000, 600}, []uint64{500000, 2000, 600}, p); got != nil {
		t.Errorf("reported again: %v", got)
	}
}

// fakePower counts presses and stops; each press is also sent on pressed.
type fakePower struct {
	pressed chan struct{}
	stopped chan struct{}
}

func (f *fakePower) PowerButton() { f.pressed <- struct{}{} }
func (f *fakePower) Stop()        { close(f.stopped) }

// TestPressUntilOff: a VMM asked to stop presses its guest's power button
// at once and again on every tick (a guest still booting loses a press),
// until a second signal stops the machine.
func TestPressUntilOff(t *testing.T) {
	f := &fakePower{pressed: make(chan struct{}, 1), stopped: make(chan struct{})}
	sigc := make(chan os.Signal, 1)
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		pressUntilOff(f, sigc, tick)
		close(done)
	}()
	<-f.pressed // the first press needs no tick
	for range 3 {
		select {
		case <-f.pressed:
			t.Fatal("pressed again without a tick")
		default:
		}
		select {
		case tick <- time.Now():
			<-f.pressed
		case <-time.After(time.Minute):
			t.Fatal("no one takes the ticks: pressed once only")
		}
	}
	sigc <- unix.SIGTERM
	<-done
	select {
	case <-f.stopped:
	default:
		t.Fatal("a second signal did not stop the machine")
	}
}
