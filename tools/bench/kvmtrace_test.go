package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// histOutput is a histogram trigger's output as the kernel prints it.
const histOutput = `# event histogram
#
# trigger info: hist:keys=exit_reason,isa:vals=hitcount:sort=hitcount:size=2048 [active]
#

{ exit_reason:        124, isa:          2 } hitcount:         40
{ exit_reason:       1024, isa:          2 } hitcount:        300
{ exit_reason:         96, isa:          2 } hitcount:         60
{ exit_reason:         78, isa:          2 } hitcount:          2
{ exit_reason:          bad } hitcount:          9

Totals:
    Hits: 402
    Entries: 4
    Dropped: 0
`

func TestParseHist(t *testing.T) {
	e := parseHist(histOutput)
	if len(e) != 4 || e[0].n != 300 || e[0].fields["exit_reason"] != 1024 || e[0].fields["isa"] != 2 || e[3].n != 2 {
		t.Fatalf("parsed %+v", e)
	}
	var names []string
	for _, x := range e {
		names = append(names, exitName(x.fields["isa"], x.fields["exit_reason"]))
	}
	if got := strings.Join(names, " "); got != "npf intr msr pf" {
		t.Errorf("names %q", got)
	}
	if exitName(kvmISAVMX, 48) != "ept_violation" || exitName(kvmISASVM, 0x999) != "0x999" || exitName(kvmISASVM, 0x046) != "exc6" {
		t.Error("VMX or unknown exit misnamed")
	}
}

// TestKVMTrace drives the histograms through a fake tracefs: start writes
// each event's trigger, read names and counts what the kernel printed,
// stop removes the triggers, and the stream's account carries the counts
// per MiB.
func TestKVMTrace(t *testing.T) {
	dir := t.TempDir()
	for _, h := range kvmHists {
		if err := os.MkdirAll(filepath.Join(dir, "events", h.event), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tr := kvmTrace{dir, "/proc"}
	if err := tr.start(); err != nil {
		t.Fatal(err)
	}
	for _, h := range kvmHists {
		if b, _ := os.ReadFile(tr.trigger(h)); string(b) != h.spec() {
			t.Errorf("%s trigger %q, want %q", h.event, b, h.spec())
		}
	}
	write := func(event, s string) {
		if err := os.WriteFile(filepath.Join(dir, "events", event, "hist"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kvm/kvm_exit", histOutput)
	write("kvm/kvm_msr", "{ ecx:       2059, write:          1 } hitcount:         20\n{ ecx:       1760, write:          1 } hitcount:         10\n")
	// kvm_pio: no hist file, left out. System calls by the process of
	// the thread: this test's (two threads, one label), and a thread
	// that is gone.
	self := os.Getpid()
	write("raw_syscalls/sys_enter", fmt.Sprintf("{ common_pid: %d, id: 202 } hitcount: 6\n{ common_pid: %d, id: 202 } hitcount: 4\n{ common_pid: 999999999, id: 0 } hitcount: 8\n{ common_pid: %d, id: 1 } hitcount: 2\n",
		self, unix.Gettid(), self))
	got := kvmCountsLine(tr.read(), 2, 2)
	if want := "kvm_exit npf=150.0 intr=30.0 kvm_msr wr0x80b=10.0 wr0x6e0=5.0 sys_enter other:futex=5.0 gone:read=4.0"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	tr.stop()
	if b, _ := os.ReadFile(tr.trigger(kvmHists[0])); string(b) != "!"+kvmHists[0].spec() {
		t.Errorf("trigger after stop %q", b)
	}
	if kvmCountsLine(nil, 2, 2) != "" || kvmCountsLine(tr.read(), 0, 2) != "" {
		t.Error("a line without counts or bytes")
	}
	if err := (kvmTrace{filepath.Join(dir, "none"), "/proc"}).start(); err == nil {
		t.Error("start without tracefs succeeded")
	}
}

// TestVMMThreads: a VMM's system calls are also counted per thread, and
// no other process's are.
func TestVMMThreads(t *testing.T) {
	dir, proc := t.TempDir(), t.TempDir()
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	for tid, cmdline := range map[string]string{"41": "hyperroot\x00vmm\x00--cpus\x001\x00", "42": "hyperroot\x00vmm\x00", "43": "hyperroot\x00switch\x00"} {
		if err := os.MkdirAll(filepath.Join(proc, tid), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(proc, tid, "stat"), stat, 0o644)
		os.WriteFile(filepath.Join(proc, tid, "cmdline"), []byte(cmdline), 0o644)
	}
	ev := filepath.Join(dir, "events", "raw_syscalls", "sys_enter")
	if err := os.MkdirAll(ev, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ev, "hist"), []byte("{ common_pid: 41, id: 202 } hitcount: 30\n{ common_pid: 42, id: 281 } hitcount: 10\n"+
		"{ common_pid: 42, id: 202 } hitcount: 6\n{ common_pid: 43, id: 202 } hitcount: 50\n"), 0o644)
	got := kvmCountsLine(kvmTrace{dir, proc}.read(), 2, 8)
	if want := "sys_enter switch:futex=25.0 vmm:futex=18.0 vmm:epoll_pwait=5.0 vmm_thread 41:futex=15.0 42:epoll_pwait=5.0 42:futex=3.0"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
}

// TestSubtractCounts: a window over histograms installed for the whole
// boot counts what moved since its opening read, sorted again, and
// leaves out what did not move.
func TestSubtractCounts(t *testing.T) {
	base := []kvmCount{{"kvm_exit", "npf", 100}, {"kvm_exit", "msr", 50}, {"sys_enter", "vmm:futex", 7}}
	now := []kvmCount{{"kvm_exit", "npf", 130}, {"kvm_exit", "msr", 90}, {"kvm_exit", "hlt", 5}, {"sys_enter", "vmm:futex", 7}, {"sys_enter", "vmm:read", 3}}
	if got, want := kvmCountsLine(subtractCounts(now, base), 1, 8), "kvm_exit msr=40.0 npf=30.0 hlt=5.0 sys_enter vmm:read=3.0"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got := subtractCounts(now, nil); len(got) != len(now) {
		t.Errorf("without a base: %v", got)
	}
}
