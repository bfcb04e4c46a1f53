package main

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/testenv"
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
		{"no kernel flag", nil, exitUsage, "--kernel is required"},
		{"missing kernel", []string{"--kernel", "/no/such/vmlinuz"}, exitError, "kernel: open /no/such/vmlinuz: no such file or directory"},
		{"truncated kernel", []string{"--kernel", truncated}, exitError, "kernel: truncated"},
		{"not a bzImage", []string{"--kernel", notKernel}, exitError, "kernel: not a bzImage"},
		{"initrd larger than memory", []string{"--kernel", kernel, "--initrd", bigInitrd, "--memory", "128M"}, exitError, "memory 128 MiB too small: the kernel and its 200 MiB initrd need at least"},
		{"memory too small", []string{"--kernel", kernel, "--memory", "32M"}, exitError, "memory 32 MiB too small: the kernel need"},
		{"zero cpus", []string{"--kernel", kernel, "--cpus", "0"}, exitError, "cpus 0: want at least 1"},
		{"too many cpus", []string{"--kernel", kernel, "--cpus", "100000"}, exitError, "cpus 100000: this host's KVM allows at most"},
		{"bad memory", []string{"--kernel", kernel, "--memory", "lots"}, exitError, `memory: size "lots"`},
		{"bad flag", []string{"--kernel", kernel, "--cpu", "2"}, exitUsage, "flag provided but not defined: -cpu"},
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

func TestParseNICSpec(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    nicSpec
	}{
		{in: "socket=/run/sw/a.sock,mac=52:54:00:12:34:56", want: nicSpec{Socket: "/run/sw/a.sock", MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}}},
		{in: "socket=a.sock,mac=52:54:00:12:34:56", err: `socket "a.sock": want an absolute path`},
		{in: "socket=/a,mac=01:00:5e:00:00:01", err: "want a unicast Ethernet address"},
		{in: "socket=/a,mac=zz", err: `mac "zz"`},
		{in: "socket=/a,mac=52:54:00:12:34:56,mtu=9000", want: nicSpec{Socket: "/a", MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, MTU: 9000}},
		{in: "socket=/a,mac=52:54:00:12:34:56,mtu=20", err: `mtu "20": want 68 to 65535`},
		{in: "socket=/a", err: "want socket=PATH and mac=ADDRESS"},
		{in: "socket=/a,socket=/b,mac=52:54:00:12:34:56", err: "socket given twice"},
		{in: "socket=/a,mac=52:54:00:12:34:56,queues=2", err: `unknown key "queues"`},
		{in: "", err: `"": want key=value`},
	} {
		got, err := parseNICSpec(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseNICSpec(%q) error = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("parseNICSpec(%q): %v", tc.in, err)
		case tc.err == "" && (got.Socket != tc.want.Socket || got.MAC.String() != tc.want.MAC.String() || got.MTU != tc.want.MTU):
			t.Errorf("parseNICSpec(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	if got, _ := parseNICSpec(configNICArg("/s", config.NIC{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, MTU: 9000})); got.Socket != "/s" || got.MAC.String() != "02:00:00:00:00:01" || got.MTU != 9000 {
		t.Errorf("nicArg does not round-trip: %+v", got)
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
	runtime.GOMAXPROCS(64)
	tuneRuntime(1)
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("GOMAXPROCS with 1 vCPU = %d, want 2", got)
	}
	if got := debug.SetGCPercent(100); got != vmmGCPercent {
		t.Errorf("GC percent = %d, want %d", got, vmmGCPercent)
	}
	if got := debug.SetMemoryLimit(-1); got != vmmMemoryLimit {
		t.Errorf("memory limit = %d, want %d", got, vmmMemoryLimit)
	}
	if runtime.MemProfileRate != 0 {
		t.Errorf("MemProfileRate = %d, want 0", runtime.MemProfileRate)
	}

	// Never more Ps than the host has, and the environment wins.
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOGC", "100")
	t.Setenv("GOMEMLIMIT", "off")
	tuneRuntime(8)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS raised to %d", got)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100 in the environment overridden: %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT=off in the environment overridden: %d", got)
	}
}
