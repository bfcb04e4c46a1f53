package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// fakeEnv, when set, makes the test binary play the child the supervisor
// starts (the supervisor runs its own binary, selfPath, for every role):
// its value is the behaviour of each run in turn, comma-separated, and
// fakeEnv+"_DIR" a directory counting the runs.
const fakeEnv = "HYPERROOT_TEST_FAKE_CHILD"

func TestMain(m *testing.M) {
	if trap, ok := os.LookupEnv(vmmTrapEnv); ok && len(os.Args) > 1 && os.Args[1] == "vmm" {
		os.Exit(trappingVMM(trap, os.Args[2:]))
	}
	if plan := os.Getenv(fakeEnv); plan != "" {
		os.Exit(fakeChild(strings.Split(plan, ","), os.Getenv(fakeEnv+"_DIR"), os.Args[1:]))
	}
	if _, ok := os.LookupEnv(switchTrapEnv); ok && len(os.Args) > 1 && os.Args[1] == "switch" {
		os.Exit(trappingSwitch(os.Args[2:]))
	}
	// The supervisor's jailed switch (TestSwitchJailed) has no
	// environment: its command line says what it is.
	if len(os.Args) > 1 && os.Args[1] == "switch" {
		os.Exit(switchMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// fakeChild says what it was asked to run, then behaves as this run's
// entry of plan: "exit=N" exits with N; "seccomp" loads the VMM's process
// filter and makes a call it refuses (socket(AF_INET)); "serve" prints the switch's ready
// line, echoes its input, and exits 0 on SIGTERM; "alive-once" serves after one
// heartbeat (aliveLine) and then falls silent, as a hung switch; "beating"
// serves with a heartbeat every 20 ms.
func fakeChild(plan []string, dir string, args []string) int {
	runs, _ := os.ReadDir(dir)
	os.WriteFile(fmt.Sprintf("%s/run%d", dir, len(runs)), nil, 0o644)
	step := plan[min(len(runs), len(plan)-1)]
	fmt.Printf("fake %s\r\n", args[0])
	if step == "seccomp" {
		if err := seccomp.Process(seccomp.Kill, seccomp.Options{}); err != nil {
			fmt.Println(err)
			return 1
		}
		unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return 1
	}
	if step == "dump" {
		return fakeDumper(args)
	}
	if code, ok := strings.CutPrefix(step, "exit="); ok {
		n, _ := strconv.Atoi(code)
		fmt.Fprintln(os.Stderr, "bye")
		return n
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM)
	fmt.Println("ready networks=0 ports=0")
	switch step {
	case "alive-once":
		fmt.Println(aliveLine)
	case "beating":
		go func() {
			for {
				fmt.Println(aliveLine)
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Println("input", sc.Text())
		}
	}()
	<-term
	fmt.Println("port x rx=0/0 tx=0/0")
	return 0
}

// fakeDumper is a VMM whose guest tries to forge a dump: on each
// dumpSignal its "guest" prints an untagged dump's last line on stdout at
// once, and the VMM prints its real, tagged dump on stderr 300 ms later.
// It exits 0 on SIGTERM.
func fakeDumper(args []string) int {
	tag := ""
	for i, a := range args {
		if a == "--dump-tag" && i+1 < len(args) {
			tag = args[i+1]
		}
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, dumpSignal, unix.SIGTERM)
	for sig := range sigs {
		if sig == unix.SIGTERM {
			return 0
		}
		fmt.Println(dumpPrefix + "vcpu 0: forged by the guest")
		fmt.Println(dumpPrefix + dumpEnd)
		time.Sleep(300 * time.Millisecond)
		p := dumpLinePrefix(tag)
		fmt.Fprintf(os.Stderr, "%svcpu 0: real\n%s%s\n", p, p, dumpEnd)
	}
	return 0
}

// fakeFleet starts a fleet of one VM, t, whose VMM is the fake child
// playing plan, on a console written to the returned buffer.
func fakeFleet(t *testing.T, plan string, restart config.Restart) (*fleet, *console, *syncBuffer) {
	fake(t, plan)
	out := &syncBuffer{}
	c := newConsole(out)
	f := newFleet(c, child.Direct{}, false)
	f.unjailed = true // fake VMMs
	f.Start([]config.VM{{Name: "t", Kernel: "/k", CPUs: 1, Memory: 128 << 20, Restart: restart}})
	return f, c, out
}

// TestDumpTag: a dump wait ends at the VMM's own last line, not at one its
// guest printed, and the relayed dump lines carry no tag.
func TestDumpTag(t *testing.T) {
	f, c, out := fakeFleet(t, "dump", config.RestartNever)
	waitFor(t, out, "hyperroot: vm t started pid=PID cpus=1 memory=128M")
	if err := f.Dump("t", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Flush(5 * time.Second)
	got := strings.Join(out.lines(), "\n")
	if !strings.Contains(got, "t| hyperroot vmm: dump: vcpu 0: real\nt| hyperroot vmm: dump: end") {
		t.Errorf("Dump returned before the VMM's own dump was relayed:\n%s", got)
	}
	if strings.Contains(got, "hyperroot vmm: dump ") {
		t.Errorf("a tag reached the console:\n%s", got)
	}
	f.Stop()
}

// syncBuffer is a console's output, read while it is written.
type syncBuffer struct{ testenv.Buffer }

// lines are the console's lines so far, without their time stamps and
// with pids as PID.
func (s *syncBuffer) lines() []string {
	out := regexp.MustCompile(`(?m)^\[ *\d+\.\d{3}\] `).ReplaceAllString(s.String(), "")
	out = regexp.MustCompile(`pid=\d+`).ReplaceAllString(out, "pid=PID")
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// waitFor waits until the console shows line.
func waitFor(t *testing.T, out *syncBuffer, line string) {
	t.Helper()
	waitForWithin(t, out, 1, line, 20*time.Second)
}

func fake(t *testing.T, plan string) {
	t.Setenv(fakeEnv, plan)
	t.Setenv(fakeEnv+"_DIR", t.TempDir())
}

// TestFleetConsole: a VM's lifecycle on the console, as the console
// contract has it, with its restart policy and back-off.
func TestFleetConsole(t *testing.T) {
	for _, tc := range []struct {
		name, plan string
		restart    config.Restart
		want       []string
		failed     string
	}{
		{"reboot, then poweroff", "exit=3,exit=0", config.RestartOnFailure, []string{
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"t| bye",
			"hyperroot: vm t exited code=3 reason=reboot",
			"hyperroot: vm t restarting in 1s (restart: on-failure)",
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"t| bye",
			"hyperroot: vm t exited code=0 reason=poweroff",
		}, ""},
		{"never restarted", "exit=4", config.RestartNever, []string{
			"hyperroot: vm t started pid=PID cpus=1 memory=128M",
			"t| fake vmm",
			"t| bye",
			"hyperroot: vm t exited code=4 reason=crash",
		}, "t"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake(t, tc.plan)
			out := &syncBuffer{}
			c := newConsole(out)
			f := newFleet(c, child.Direct{}, false)
			f.unjailed = true // fake VMMs
			f.Start([]config.VM{{Name: "t", Kernel: "/k", CPUs: 1, Memory: 128 << 20, Restart: tc.restart}})
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
			if got := strings.Join(f.Failed(), ","); got != tc.failed {
				t.Errorf("Failed() = %q, want %q", got, tc.failed)
			}
		})
	}
}

// TestFleetInputAndStop: console input reaches the VMM's stdin, and Stop
// ends it with SIGTERM, without a restart.
func TestFleetInputAndStop(t *testing.T) {
	f, c, out := fakeFleet(t, "serve", config.RestartAlways)
	waitFor(t, out, "t| ready networks=0 ports=0")
	if err := f.Input("t", "hello"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "t| input hello")
	if err := f.Input("nope", "x"); err == nil {
		t.Error("input for an unknown VM accepted")
	}
	f.Stop()
	c.Flush(5 * time.Second)
	got := strings.Join(out.lines(), "\n")
	if !strings.HasSuffix(got, "t| port x rx=0/0 tx=0/0\nhyperroot: vm t exited code=0 reason=poweroff") || strings.Contains(got, "restarting") {
		t.Errorf("console:\n%s", got)
	}
}

// TestFleetStopStartVM: a VM stopped on request stays stopped whatever
// its restart policy, starts again on request (a new VMM), and the
// requests say why when they cannot be done.
func TestFleetStopStartVM(t *testing.T) {
	f, c, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop()
	waitFor(t, out, "t| ready networks=0 ports=0")
	first := f.process("t")
	if err := f.StartVM("t"); err == nil || err.Error() != "vm t is running" {
		t.Errorf("start of a running VM: %v", err)
	}
	if err := f.StopVM("t"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "hyperroot: vm t stopped (start t starts it again)")
	if p := f.process("t"); p != nil {
		t.Errorf("VMM still running after stop: %v", p)
	}
	if err := f.StopVM("t"); err == nil || err.Error() != "vm t is not running" {
		t.Errorf("stop of a stopped VM: %v", err)
	}
	if err := f.StopVM("nope"); err == nil || err.Error() != `no vm "nope" (have t)` {
		t.Errorf("stop of an unknown VM: %v", err)
	}
	c.Flush(5 * time.Second)
	if strings.Contains(out.String(), "restarting") {
		t.Errorf("a stopped VM restarted (restart: always):\n%s", out.String())
	}
	if err := f.StartVM("t"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.process("t") == nil || f.process("t") == first {
		if time.Now().After(deadline) {
			t.Fatal("no new VMM after start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := f.Input("t", "again"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "t| input again")
}

// TestSwitchConsole: the switch is ready at its ready line, restarted after
// a kill, and reports its counters when stopped.
func TestSwitchConsole(t *testing.T) {
	fake(t, "serve")
	out := &syncBuffer{}
	c := newConsole(out)
	sw, err := startNetSwitch(c, child.Direct{}, switchStart{cfgPath: "/cfg.yaml", unjailed: true}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "hyperroot: switch restarting in 100ms")
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(strings.Join(out.lines(), "\n"), "switch| ready") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	sw.Stop(10 * time.Second)
	c.Flush(5 * time.Second)
	want := []string{
		"hyperroot: switch started pid=PID",
		"switch| fake switch",
		"switch| ready networks=0 ports=0",
		"hyperroot: switch exited code=137 reason=killed signal=SIGKILL",
		"hyperroot: switch restarting in 100ms",
		"hyperroot: switch started pid=PID",
		"switch| fake switch",
		"switch| ready networks=0 ports=0",
		"switch| port x rx=0/0 tx=0/0",
		"hyperroot: switch exited code=0 reason=poweroff",
	}
	if got := out.lines(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("console:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := sw.Kill(); err == nil {
		t.Error("Kill after Stop succeeded")
	}
}

// TestSwitchHung: a switch whose heartbeat stops is killed as hung and
// restarted; one that keeps beating is left alone, and its heartbeats never
// reach the console.
func TestSwitchHung(t *testing.T) {
	fake(t, "alive-once,beating")
	out := &syncBuffer{}
	c := newConsole(out)
	const hungAfter = 300 * time.Millisecond
	sw, err := startNetSwitch(c, child.Direct{}, switchStart{cfgPath: "/cfg.yaml", unjailed: true, hungAfter: hungAfter}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "hyperroot: switch exited code=137 reason=hung")
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(strings.Join(out.lines(), "\n"), "switch| ready") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(10 * hungAfter) // the beating one stays
	sw.Stop(10 * time.Second)
	c.Flush(5 * time.Second)
	got := regexp.MustCompile(`no heartbeat for \d+ms`).ReplaceAllString(strings.Join(out.lines(), "\n"), "no heartbeat for Nms")
	want := []string{
		"hyperroot: switch started pid=PID",
		"switch| fake switch",
		"switch| ready networks=0 ports=0",
		"hyperroot: switch hung: no heartbeat for Nms: killing it",
		"hyperroot: switch exited code=137 reason=hung",
		"hyperroot: switch restarting in 100ms",
		"hyperroot: switch started pid=PID",
		"switch| fake switch",
		"switch| ready networks=0 ports=0",
		"switch| port x rx=0/0 tx=0/0",
		"hyperroot: switch exited code=0 reason=poweroff",
	}
	if got != strings.Join(want, "\n") {
		t.Errorf("console:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// slowFirst is child.Direct, but the first process it starts takes
// delay to start, as a VMM whose disks take a while to open would.
type slowFirst struct {
	delay time.Duration
	once  sync.Once
}

func (s *slowFirst) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	s.once.Do(func() { time.Sleep(s.delay) })
	return child.Direct{}.Start(cmd)
}

// TestFleetStartsInOrder: VMs start in the order the configuration lists
// them, each once the one before it has started, however long that takes;
// a VM that cannot start does not hold up the next.
func TestFleetStartsInOrder(t *testing.T) {
	fake(t, "exit=0")
	out := &syncBuffer{}
	c := newConsole(out)
	f := newFleet(c, &slowFirst{delay: 300 * time.Millisecond}, true)
	f.unjailed = true // fake VMMs
	var vms []config.VM
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		vm := config.VM{Name: name, Kernel: "/k", CPUs: 1, Memory: 128 << 20, Restart: config.RestartNever}
		if name == "c" {
			vm.Disks = []config.Disk{{Path: filepath.Join(t.TempDir(), "missing")}}
		}
		vms = append(vms, vm)
	}
	f.Start(vms)
	f.Wait()
	c.Flush(5 * time.Second)
	var order []string
	for _, l := range out.lines() {
		if name, ok := strings.CutPrefix(l, "hyperroot: vm "); ok && strings.Contains(name, " started ") {
			order = append(order, name[:strings.Index(name, " ")])
		}
	}
	if got := strings.Join(order, ","); got != "a,b,d,e" {
		t.Errorf("start order %s, want a,b,d,e\n%s", got, strings.Join(out.lines(), "\n"))
	}
	if !slices.Contains(f.Failed(), "c") {
		t.Errorf("c, with a missing disk, did not fail: %q", f.Failed())
	}
}
