package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// vmmTrapEnv, when set, makes the test binary run as `hyperroot vmm` (the
// supervisor runs its own binary for every role), and the VMM named by its
// value make a call its vCPU filter refuses, socket(AF_INET), on each vCPU
// thread as soon as the filter is loaded (testHookVCPUConfined).
const vmmTrapEnv = "HYPERROOT_TEST_VMM_TRAP"

func trappingVMM(trap string, args []string) int {
	for i, a := range args {
		if (a == "--name" || a == "-name") && i+1 < len(args) && args[i+1] == trap {
			testHookVCPUConfined = func() { unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0) }
		}
	}
	return vmmMain(args)
}

// startedPID waits for the console's n-th "vm <name> started pid=N" line
// (counting from 1) and returns N.
func startedPID(t *testing.T, out *syncBuffer, name string, n int, within time.Duration) int {
	t.Helper()
	re := regexp.MustCompile(`(?m)hyperroot: vm ` + name + ` started pid=(\d+)`)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := re.FindAllStringSubmatch(out.String(), -1); len(m) >= n {
			pid, _ := strconv.Atoi(m[n-1][1])
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %d-th start of vm %s in:\n%s", n, name, out.String())
	return 0
}

// TestSeccompExitReported: a VMM its seccomp filter kills (the real
// process filter, refusing socket(AF_INET)) is reported with reason=seccomp
// and the call the kernel's audit named, or syscall=unknown when no record
// came; the restart policy applies as to any failure.
func TestSeccompExitReported(t *testing.T) {
	for _, tc := range []struct {
		name    string
		record  bool
		restart config.Restart
		want    []string
	}{
		{"with the kernel's record", true, config.RestartOnFailure, []string{
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"hyperroot: vm t exited code=159 reason=seccomp syscall=socket",
			"hyperroot: vm t restarting in 1s (restart: on-failure)",
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"t| bye",
			"hyperroot: vm t exited code=0 reason=poweroff",
		}},
		{"without", false, config.RestartNever, []string{
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"hyperroot: vm t exited code=159 reason=seccomp syscall=unknown",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake(t, "seccomp,exit=0")
			out := &syncBuffer{}
			c := newConsole(out)
			f := newFleet(c, child.Direct{}, false)
			f.unjailed = true // fake VMMs
			f.seccomp = newSeccompLog(c, seccomp.Kill)
			f.Start([]config.VM{{Name: "t", Kernel: "/k", CPUs: 1, Memory: 128 << 20, Restart: tc.restart}})
			if tc.record {
				// What follow would read from /dev/kmsg for it.
				pid := startedPID(t, out, "t", 1, 20*time.Second)
				f.seccomp.record(seccomp.Record{PID: pid, Syscall: "socket", Killed: true})
			}
			done := make(chan struct{})
			go func() { f.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the fleet did not finish")
			}
			c.Flush(5 * time.Second)
			if got := out.lines(); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("console:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestSeccompLogRelayed: in log mode, each call a VMM's filter would have
// refused is relayed once, and records of other processes are not.
func TestSeccompLogRelayed(t *testing.T) {
	out := &syncBuffer{}
	c := newConsole(out)
	l := newSeccompLog(c, seccomp.Log)
	l.Track(42, "web")
	for _, r := range []seccomp.Record{{PID: 42, Syscall: "openat"}, {PID: 42, Syscall: "openat"},
		{PID: 43, Syscall: "socket"}, {PID: 42, Syscall: "uname"}} {
		l.record(r)
	}
	c.Flush(5 * time.Second)
	want := "hyperroot: vm web seccomp: logged syscall=openat\nhyperroot: vm web seccomp: logged syscall=uname"
	if got := strings.Join(out.lines(), "\n"); got != want {
		t.Errorf("console:\n%s\nwant:\n%s", got, want)
	}
}

// TestSeccompKillInAppliance: a real VMM whose vCPU thread makes a call its
// filter refuses is killed, the supervisor says which call (from the
// kernel's audit record, which the appliance's PID 1 turned on), restarts
// it by its policy, and the VM beside it boots and powers off unharmed
// under the same filters.
func TestSeccompKillInAppliance(t *testing.T) {
	testenv.NeedKVM(t)
	kernel := testKernel(t)
	// On the host the kernel is out/image's, beside the appliance's own
	// initramfs.cpio (too big for these VMs' memory: the VMM refuses it),
	// and the test guest's is guest-initramfs.cpio; in the appliance the
	// test guest's is initramfs.cpio beside its kernel.
	initrd := filepath.Join(filepath.Dir(kernel), "guest-initramfs.cpio")
	if _, err := os.Stat(initrd); err != nil {
		initrd = filepath.Join(filepath.Dir(kernel), "initramfs.cpio")
	}
	_, err := os.Stat(initrd)
	testenv.Need(t, err == nil, "no test guest initramfs beside "+kernel+": run ./build.sh build")
	audit, err := auditEnabled()
	if err != nil {
		t.Logf("kernel audit: %v", err)
	}
	kmsg, err := os.Open("/dev/kmsg")
	if err != nil {
		t.Fatal(err)
	}
	kmsg.Seek(0, 2)
	t.Setenv(vmmTrapEnv, "victim")
	out := &syncBuffer{}
	c := newConsole(out)
	f := newFleet(c, child.Direct{}, false)
	// Unjailed: the trap travels in the environment, which a jailed VMM
	// does not get. The filters do not depend on the jail; the e2e suite
	// runs every VMM jailed and filtered.
	f.unjailed = true
	f.seccomp = newSeccompLog(c, seccomp.Kill)
	go f.seccomp.follow(kmsg) // ends when the test closes kmsg
	defer kmsg.Close()
	guest := func(name string, restart config.Restart) config.VM {
		return config.VM{Name: name, CPUs: 1, Memory: 128 << 20, Kernel: kernel, Initrd: initrd,
			Cmdline: "console=ttyS0 quiet panic=-1", Restart: restart}
	}
	f.Start([]config.VM{guest("victim", config.RestartOnFailure), guest("bystander", config.RestartNever)})
	// The call is named from the kernel's audit record of the kill. With
	// audit on there is one; where the audit status cannot be read or
	// says off, the kernel may still print the record to its log (a PVM
	// host's did, its status unreadable from the test's sandbox), so the
	// name may be there or be "unknown".
	const exited = "hyperroot: vm victim exited code=159 reason=seccomp syscall="
	killed := waitForPrefix(t, out, exited, 5*time.Minute)
	if name := strings.TrimPrefix(killed, exited); name != "socket" && (audit || name != "unknown") {
		t.Fatalf("the kill named syscall=%s, want socket (or unknown without audit; audit on: %v)", name, audit)
	}
	waitForWithin(t, out, 1, "hyperroot: vm victim restarting in 1s (restart: on-failure)", time.Minute)
	startedPID(t, out, "victim", 2, time.Minute)
	waitForWithin(t, out, 2, killed, time.Minute)
	// The bystander was never disturbed: it boots and powers off.
	waitForWithin(t, out, 1, "hyperroot: vm bystander exited code=0 reason=poweroff", 20*time.Minute)
	if !strings.Contains(out.String(), "bystander| guest: booted") {
		t.Errorf("the bystander did not boot:\n%s", out.String())
	}
	f.Stop()
	c.Flush(5 * time.Second)
	t.Logf("console:\n%s", out.String())
}

// waitForPrefix waits until a console line starts with prefix and
// returns it.
func waitForPrefix(t *testing.T, out *syncBuffer, prefix string, within time.Duration) string {
	t.Helper()
	var found string
	waitForLines(t, out, within, fmt.Sprintf("no console line starting %q", prefix), func(lines []string) bool {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, prefix) })
		if i >= 0 {
			found = lines[i]
		}
		return i >= 0
	})
	return found
}

// waitForWithin waits until the console shows line n times.
func waitForWithin(t *testing.T, out *syncBuffer, n int, line string, within time.Duration) {
	t.Helper()
	waitForLines(t, out, within, fmt.Sprintf("console line %q not seen %d times", line, n), func(lines []string) bool {
		k := 0
		for _, l := range lines {
			if l == line {
				k++
			}
		}
		return k >= n
	})
}

// waitForLines polls the console's lines every 50 ms until seen says they
// hold what the test waits for, and fails with why and the console once
// within has passed.
func waitForLines(t *testing.T, out *syncBuffer, within time.Duration, why string, seen func(lines []string) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if seen(out.lines()) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s in:\n%s", why, out.String())
}

func TestParseAVC(t *testing.T) {
	rec := `5,1234,56789,-;audit: type=1400 audit(1733140000.123:45): avc:  denied  { read write } for  pid=321 comm="hyperroot" path="/dev/vdb" dev="devtmpfs" ino=88 scontext=system_u:system_r:svirt_t:s0:c3,c17 tcontext=system_u:object_r:svirt_image_t:s0:c5,c9 tclass=blk_file permissive=0` + "\n"
	got, ok := parseAVC(rec)
	want := `avc: denied { read write } for pid=321 comm="hyperroot" path="/dev/vdb" dev="devtmpfs" ino=88 scontext=system_u:system_r:svirt_t:s0:c3,c17 tcontext=system_u:object_r:svirt_image_t:s0:c5,c9 tclass=blk_file permissive=0`
	if !ok || got != want {
		t.Errorf("parseAVC = %q, %v\nwant %q", got, ok, want)
	}
	for _, other := range []string{
		"6,1,2,-;audit: type=1400 audit(1.2:3): avc:  granted  { setenforce } for pid=1",
		"6,1,2,-;audit: type=1326 audit(1.2:3): auid=4294967295 uid=0 syscall=41",
		"6,1,2,-;virtio_net virtio0 enp0s2: renamed",
	} {
		if got, ok := parseAVC(other); ok {
			t.Errorf("parseAVC(%q) = %q, want no denial", other, got)
		}
	}
}
