package e2e

import (
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// The test bed is QEMU's TCG emulating AMD SVM (10.0 from bookworm-backports,
// see build.sh), with the appliance's KVM running the guests nested inside
// it. Only faults shown to be the emulator's are retried, each retry naming
// its evidence:
//
//   - the appliance kernel crashed (a corrupted stack, a BUG): a userspace
//     VMM cannot corrupt its kernel's stack. A soft lockup is one: TCG now
//     and then leaves the appliance's timer interrupt pending while its CPU
//     runs a guest (docs/TESTING.md, Investigations), and the kernel reports
//     it once something else interrupts it;
//   - the appliance never printed its banner: it hung before PID 1 ran
//     any of our code (seen once: no console output for 3 minutes);
//   - an appliance CPU left an interrupt pending for seconds with
//     interrupts on (QEMU's own view, which the silence watchdog records
//     twice, seconds apart, before it kills QEMU): a CPU takes a
//     deliverable interrupt at its next instruction; the emulator did not;
//   - a guest vCPU kept faulting on the fetch of a kernel instruction that
//     its own page tables map present and executable (the VMM's dump walks
//     them): a CPU's page fault drops whatever stale translation caused it,
//     so it cannot fault there again; the emulated CPU's nested paging did
//     (seen in the default demo and TestNetTraffic: the guest's other vCPU
//     reporting an RCU stall every minute);
//   - the same, seen from KVM: a vCPU at the last fault's address while
//     KVM, in one second of the dump, injected thousands of page faults
//     into it (pf_guest), each after emulating an instruction, with no
//     exit reaching the VMM (seen in the default demo in CI: 24554 a
//     second, under the guest's 5-level paging);
//   - a guest triple-faulted in an appliance with more than one vCPU:
//     QEMU's multi-threaded TCG; a 64-vCPU guest did so in most boots
//     with every VMM version tried, and never in a 1-vCPU appliance (the
//     runner's default under TCG), where a triple fault is a failure.
//
// A guest that "stalled in boot" (never reached its init, never exited)
// is not retried: one cause of issue 9's stall was ours (the guests probed
// 255 empty PCI buses because our firmware tables announced them). A stall
// fails, and the silence watchdog (qemu.Options.Silence) records QEMU's
// view of the appliance's CPUs and every VMM's vCPU state to show where.
//
// Such attempts are run again, up to maxAttempts, and each retry is logged
// with its reason; any other failure fails at once. On hardware KVM nothing
// is retried. 5, not 3: on a bad night (2026-12-07) the test bed spoilt
// all three of TestIOMax's attempts in one CI run (a guest triple fault
// and two appliance triple faults) and of TestDiskIOPS's in the run before.
const maxAttempts = 5

var (
	relayedRE = regexp.MustCompile(`^\S+\| `)
	// The appliance kernel's own crash reports (not relayed from a VM).
	hostCrashRE = regexp.MustCompile(`Kernel panic|BUG:|general protection fault|stack guard page|corrupted stack`)
	// A guest that died under the emulator, as the VMM reports it.
	guestTripleRE = qemu.GuestTripleFaultRE
	refaultRE     = regexp.MustCompile(`^\S+\| hyperroot vmm: dump: vcpu \d+: .*\(rip is the last fault's address`)
	injectedPFRE  = regexp.MustCompile(`^\S+\| hyperroot vmm: dump: vcpu \d+: .*\bpf_guest\+\d{4,}\b`)
	refetchRE     = regexp.MustCompile(`^\S+\| hyperroot vmm: dump: vcpu \d+: page walk of \S+ .*: gpa \S+, present, executable \(rip is the last fault's address`)
	bannerRE      = regexp.MustCompile(`hyperroot: hyperroot \S+ board=\S+ kernel=.* cpus=(\d+) `)
)

// testbedFault returns why the machines' consoles show a test-bed fault,
// or "".
func testbedFault(ms []*qemu.Machine) string {
	for _, m := range ms {
		if why := faultIn(m.Lines(), qemu.HostAccel() == "tcg"); why != "" {
			return why
		}
	}
	return ""
}

// faultIn looks for a test-bed fault in one appliance's console; tcg says
// whether the appliance ran under TCG.
func faultIn(lines []string, tcg bool) string {
	banner, cpus := false, 0
	for _, l := range lines {
		if b := bannerRE.FindStringSubmatch(l); b != nil {
			banner = true
			cpus, _ = strconv.Atoi(b[1])
		}
	}
	if !tcg {
		return ""
	}
	if !banner {
		// PID 1 prints its banner within seconds of the kernel starting;
		// an appliance that never gets there hung inside QEMU (seen once:
		// no console output at all for 3 minutes).
		return fmt.Sprintf("the appliance never printed its banner (%d console lines)", len(lines))
	}
	refault, injected := "", ""
	for _, l := range lines {
		if refaultRE.MatchString(l) {
			refault = l
		}
		if injectedPFRE.MatchString(l) {
			injected = l
		}
	}
	if refault != "" && injected != "" {
		return "KVM injected page faults into a guest vCPU thousands of times a second at one instruction, none reaching the VMM (KVM's or the emulator's walk of the guest's tables): " + strings.TrimSpace(injected)
	}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, qemu.LostInterruptPrefix):
			return "the emulator lost an interrupt: " + strings.TrimPrefix(l, qemu.LostInterruptPrefix)
		case l == qemu.TripleFaultLine:
			// The appliance's own kernel triple-faulted: no oops, no
			// panic, no word on the console, the CPU simply reset
			// (QEMU's CPU-reset log). Linux reports its faults before
			// any could cascade that far; the emulator's nested
			// paging is what has misbehaved here before (the board's
			// kvm.mmio_caching=0).
			return "the appliance's kernel triple-faulted with no message (QEMU's log)"
		case !relayedRE.MatchString(l) && hostCrashRE.MatchString(l):
			return "appliance kernel crashed (a userspace VMM cannot do that): " + strings.TrimSpace(l)
		case refetchRE.MatchString(l):
			return "a guest vCPU faulted again and again fetching an instruction its page tables allow (the emulator's nested paging): " + strings.TrimSpace(l)
		case cpus > 1 && guestTripleRE.MatchString(l):
			return fmt.Sprintf("guest triple fault in a %d-vCPU TCG appliance (multi-threaded TCG): %s", cpus, strings.TrimSpace(l))
		}
	}
	return ""
}

// attempt is one run of a test body. It stands in for the test's
// *testing.T, recording failures instead of reporting them, so that an
// attempt spoilt by the test bed can be thrown away.
type attempt struct {
	*testing.T
	failed   bool
	skipped  string
	msgs     []string
	machines []*qemu.Machine
}

func (a *attempt) record(msg string) { a.failed = true; a.msgs = append(a.msgs, msg) }

func (a *attempt) Error(args ...any)                 { a.record(fmt.Sprint(args...)) }
func (a *attempt) Errorf(format string, args ...any) { a.record(fmt.Sprintf(format, args...)) }
func (a *attempt) Fail()                             { a.failed = true }
func (a *attempt) Failed() bool                      { return a.failed }
func (a *attempt) FailNow()                          { a.failed = true; runtime.Goexit() }
func (a *attempt) Fatal(args ...any)                 { a.Error(args...); runtime.Goexit() }
func (a *attempt) Fatalf(format string, args ...any) { a.Errorf(format, args...); runtime.Goexit() }
func (a *attempt) Skip(args ...any)                  { a.skipped = fmt.Sprint(args...); runtime.Goexit() }
func (a *attempt) Skipf(format string, args ...any) {
	a.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (a *attempt) SkipNow() { a.skipped = "skipped"; runtime.Goexit() }

// testbed runs body, again when an attempt failed because of the test bed.
func testbed(t *testing.T, body func(t testing.TB)) {
	t.Helper()
	for try := 1; ; try++ {
		a := &attempt{T: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			body(a)
		}()
		<-done
		if a.skipped != "" {
			t.Skip(a.skipped)
		}
		if !a.failed {
			return
		}
		reason := testbedFault(a.machines)
		if reason == "" || try == maxAttempts {
			for _, m := range a.msgs {
				t.Error(m)
			}
			if reason != "" {
				t.Errorf("test-bed fault on all %d attempts, the last: %s", try, reason)
			}
			t.FailNow()
		}
		t.Logf("attempt %d of %d spoilt by the test bed (%s); its errors were %q; running it again", try, maxAttempts, reason, a.msgs)
		// The spoilt attempt's appliances go before the next starts:
		// their cleanups belong to the test, which is not over, and a
		// live one holds what the next attempt reuses (TestIOMax's
		// disk image: "Failed to get write lock") and takes CPU from it.
		for _, m := range a.machines {
			m.Kill()
		}
	}
}

func TestTestbedFault(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		tcg   bool
		want  string
	}{
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "[ 25.4] Kernel panic - not syncing: corrupted stack end detected inside scheduler"}, true, "appliance kernel crashed"},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "s4| hyperroot vmm: s4: crash after 6.1s (vCPU 7: triple fault)"}, true, "guest triple fault in a 2-vCPU"},
		// In a 1-vCPU appliance a triple fault is the guest's or ours.
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=1 (QEMU TCG CPU version 2.5+) memory=1 MiB", "s4| hyperroot vmm: s4: crash after 6.1s (vCPU 7: triple fault)"}, true, ""},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "panic| [ 3.7] Kernel panic - not syncing: sysrq triggered crash"}, true, ""},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (AMD EPYC 7B13) memory=1 MiB", "[ 25.4] Kernel panic - not syncing"}, false, ""},
		{nil, true, "never printed its banner"},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "switch| port spoofer.0 disconnected", qemu.TripleFaultLine}, true, "triple-faulted with no message"},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (AMD EPYC 7B13) memory=1 MiB", qemu.TripleFaultLine}, false, ""},
		// A stalled guest is not the emulator's (issue 9 was ours).
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=1 (QEMU TCG CPU version 2.5+) memory=1 MiB", "[ 2.0] hyperroot: vm waiter started pid=90 cpus=1 memory=128M", "again| guest: booted nproc=1"}, true, ""},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=1 (QEMU TCG CPU version 2.5+) memory=1 MiB", "[ 2.0] hyperroot: vm w started pid=90 cpus=1 memory=128M", "[ 3.0] hyperroot: vm w exited code=1 reason=error"}, true, ""},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", qemu.LostInterruptPrefix + "appliance CPU 1 kept vector 236 pending"}, true, "the emulator lost an interrupt: appliance CPU 1"},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "demo2| hyperroot vmm: dump: vcpu 0: page walk of 0xffffffffc0700dcc: pml4e=0x1 pdpte=0x1 pde=0x1 pte=0x1: gpa 0x7b5dcc, present, executable (rip is the last fault's address: it faulted fetching this instruction)"}, true, "faulted again and again fetching an instruction"},
		// A user page (demand paging) or a page the guest's tables forbid is the guest's business.
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB", "demo2| hyperroot vmm: dump: vcpu 0: page walk of 0x400000: pml4e=0x5 pdpte=0x5 pde=0x5 pte=0x5: gpa 0x7b5000, present, executable, user (rip is the last fault's address: it faulted fetching this instruction)"}, true, ""},
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB",
			"demo1| hyperroot vmm: dump: vcpu 0: page walk of 0xffffffffc074edcc: pml5e=0x1 pml4e=0x1 pdpte=0x1 pde=0x1 pte=0x0: not present (rip is the last fault's address: it faulted fetching this instruction)",
			"demo1| hyperroot vmm: dump: vcpu 0: pf_guest+24554 exits+24554 signal_exits+1 insn_emulation+24554"}, true, "KVM injected page faults"},
		// A few injected faults over the dump's second are a guest at work.
		{[]string{"[ 1.0] hyperroot: hyperroot dev board=qemu kernel=x cpus=2 (QEMU TCG CPU version 2.5+) memory=1 MiB",
			"demo1| hyperroot vmm: dump: vcpu 0: page walk of 0x1000: pml4e=0x0: not present (rip is the last fault's address: it faulted fetching this instruction)",
			"demo1| hyperroot vmm: dump: vcpu 0: pf_guest+12 exits+40"}, true, ""},
		{nil, false, ""},
	} {
		got := faultIn(tc.lines, tc.tcg)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%q: fault %q, want %q", tc.lines, got, tc.want)
		}
	}
}
