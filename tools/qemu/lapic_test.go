package qemu

import (
	"fmt"
	"strings"
	"testing"
)

// qemuLAPIC is `info lapic N` output as QEMU 10 prints it.
func qemuLAPIC(cpu int, irr string, ppr int, enabled bool) string {
	spiv := "0x000001ff APIC enabled, focus=off, spurious vec 255"
	if !enabled {
		spiv = "0x000000ff APIC disabled, focus=off, spurious vec 255"
	}
	return fmt.Sprintf("dumping local APIC state for CPU %d \n\nLVTT\t 0x000400ec active-hi edge                 tsc-deadline Fixed  (vec 236)\n"+
		"SPIV\t %s\nISR\t (none)\nIRR\t %s\n\nAPR 0x00 TPR 0x00 DFR 0x0f LDR 0x00 PPR 0x%02x\n", cpu, spiv, irr, ppr)
}

// qemuRegs is `info registers -a` output with each CPU's flags: even CPUs
// in long mode (RFL), odd ones not (EFL).
func qemuRegs(efl ...uint32) string {
	var b strings.Builder
	for i, f := range efl {
		if i%2 == 0 { // long mode
			fmt.Fprintf(&b, "\nCPU#%d\nRAX=0000000000000000 RBX=0000000000000000\nRIP=ffffffff81e0e4ab RFL=%08x [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\n", i, f)
		} else {
			fmt.Fprintf(&b, "\nCPU#%d\nEAX=00000000 EBX=00000000\nEIP=0000fff0 EFL=%08x [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n", i, f)
		}
	}
	return b.String()
}

func TestLostInterrupt(t *testing.T) {
	on, off := uint32(0x246), uint32(0x46)
	for _, tc := range []struct {
		name       string
		regs0      string
		lapics0    []string
		regs1      string
		lapics1    []string
		wantPrefix string
	}{
		{"timer left pending on CPU 1",
			qemuRegs(on, on), []string{qemuLAPIC(0, "(none)", 0, true), qemuLAPIC(1, "236 ", 0x10, true)},
			qemuRegs(on, on), []string{qemuLAPIC(0, "(none)", 0, true), qemuLAPIC(1, "236 ", 0x10, true)},
			"appliance CPU 1 kept vector 236 pending"},
		{"taken in between (another vector now)",
			qemuRegs(on), []string{qemuLAPIC(0, "236 ", 0, true)},
			qemuRegs(on), []string{qemuLAPIC(0, "34 ", 0, true)}, ""},
		{"interrupts off: the kernel's doing",
			qemuRegs(off), []string{qemuLAPIC(0, "236 ", 0, true)},
			qemuRegs(off), []string{qemuLAPIC(0, "236 ", 0, true)}, ""},
		{"masked by priority",
			qemuRegs(on), []string{qemuLAPIC(0, "34 ", 0x20, true)},
			qemuRegs(on), []string{qemuLAPIC(0, "34 ", 0x20, true)}, ""},
		{"APIC disabled",
			qemuRegs(on), []string{qemuLAPIC(0, "236 ", 0, false)},
			qemuRegs(on), []string{qemuLAPIC(0, "236 ", 0, false)}, ""},
		{"level-triggered vector",
			qemuRegs(on), []string{qemuLAPIC(0, "40(level) ", 0, true)},
			qemuRegs(on), []string{qemuLAPIC(0, "40(level) 236 ", 0, true)}, "appliance CPU 0 kept vector 40 pending"},
		{"not QEMU's output", "error", []string{"error"}, "error", []string{"error"}, ""},
	} {
		got := lostInterrupt(tc.regs0, tc.lapics0, tc.regs1, tc.lapics1, nil, true)
		if (tc.wantPrefix == "") != (got == "") || !strings.HasPrefix(got, tc.wantPrefix) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.wantPrefix)
		}
	}
}

// ci9Regs and ci9LAPIC are QEMU's view of a 2-vCPU appliance whose CPU 0
// took no timer interrupt for 29 minutes (a CI run of 2026-12-06), cut
// to what matters: both CPUs halted in the idle loop with interrupts on;
// CPU 0's one-shot timer had run out with nothing pending, CPU 1's ran.
const ci9Regs = `
CPU#0
RAX=ffffffff8f4178a0 RBX=0000000000000000 RCX=0000000000000000 RDX=4000000000000000
RIP=ffffffff8f417a0b RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=%d
CR0=80050033 CR2=00000000007fabfb CR3=0000000001c28000 CR4=00751eb0

CPU#1
RAX=ffffffff8f4178a0 RBX=0000000000000000 RCX=0000000000000001 RDX=4000000000000000
RIP=ffffffff8f417a0b RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
`

func ci9LAPIC(cpu int, lvtt string, initial, current int, irr, isr string) string {
	return fmt.Sprintf(`dumping local APIC state for CPU %d 

LVT0	 0x00010700 active-hi edge  masked                      ExtINT (vec 0)
LVTT	 0x%s active-hi edge                 one-shot     Fixed  (vec 236)
Timer	 DCR=0x3 (divide by 16) initial_count = %d current_count = %d
SPIV	 0x000001ff APIC enabled, focus=off, spurious vec 255
ISR	 %s
IRR	 %s

APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10
`, cpu, lvtt, initial, current, isr, irr)
}

// TestLostTimer: a CPU its kernel says has an overdue timer, seen halted
// with its APIC timer run out and nothing pending, is a lost interrupt;
// each thing that makes it not one is not.
func TestLostTimer(t *testing.T) {
	halted := fmt.Sprintf(ci9Regs, 1)
	out := ci9LAPIC(0, "000000ec", 4263, 0, "(none)", "(none)")
	running := ci9LAPIC(1, "000000ec", 249639981, 168021814, "(none)", "(none)")
	cpu0 := map[int]bool{0: true}
	for _, tc := range []struct {
		name    string
		regs1   string
		lapic0  string // CPU 0's APIC at the second look
		overdue map[int]bool
		want    string
	}{
		{"ci9", halted, out, cpu0, "appliance CPU 0 sat halted with interrupts on for 3s, its one-shot APIC timer run out (initial count 4263)"},
		{"kernel has no timer waiting", halted, out, nil, ""},
		{"another CPU's timer overdue", halted, out, map[int]bool{1: true}, ""},
		{"not halted the second time", fmt.Sprintf(ci9Regs, 0), out, cpu0, ""},
		{"re-armed in between", halted, ci9LAPIC(0, "000000ec", 5000, 0, "(none)", "(none)"), cpu0, ""},
		{"timer running", halted, ci9LAPIC(0, "000000ec", 4263, 17, "(none)", "(none)"), cpu0, ""},
		{"timer masked", halted, ci9LAPIC(0, "000100ec", 4263, 0, "(none)", "(none)"), cpu0, ""},
		{"interrupt raised in between", halted, ci9LAPIC(0, "000000ec", 4263, 0, "236 ", "(none)"), cpu0, ""},
		{"interrupt in service", halted, ci9LAPIC(0, "000000ec", 4263, 0, "(none)", "236 "), cpu0, ""},
	} {
		got := lostInterrupt(halted, []string{out, running}, tc.regs1, []string{tc.lapic0, running}, tc.overdue, true)
		if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	// The kernel's words, as the console has them.
	got := overdueTimers([]string{
		"[   20.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
		"[   20.1] rcu: \tPossible timer handling issue on cpu=1 timer-softirq=9", // an older report's
		"[   37.604564] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
		"[   37.608080] rcu: rcu_preempt kthread timer wakeup didn't happen for 5251 jiffies! g281 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402",
		"[   37.608080] rcu: \tPossible timer handling issue on cpu=0 timer-softirq=315",
		"vfa| [   3.1] rcu: \tPossible timer handling issue on cpu=1 timer-softirq=2", // a guest's CPU, not the appliance's
	})
	if len(got) != 1 || !got[0] {
		t.Errorf("overdueTimers = %v, want CPU 0", got)
	}
}

func TestNoteStall(t *testing.T) {
	m := &Machine{stall: make(chan struct{}), stalls: map[string]int{}}
	for _, l := range []string{
		"demo2| [   30.106532] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
		"demo1| [   31.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
		"[ 40.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", // the appliance's own: counted apart
		"demo2| guest: rcu: INFO: fine",
	} {
		m.noteStall(l)
	}
	select {
	case <-m.stall:
		t.Fatal("stopped after one report per guest")
	default:
	}
	m.noteStall("demo2| [   93.141235] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
	select {
	case <-m.stall:
	default:
		t.Fatal("a guest's second stall report did not stop the machine")
	}
	if !strings.HasPrefix(m.Stalled(), "demo2| [   93.141235]") {
		t.Errorf("stalled = %q", m.Stalled())
	}
	m.noteStall("demo1| [   99] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!") // after: no second close
}

// TestApplianceStall: the appliance kernel's own second stall report stops
// the machine as a guest's does (ci9's appliance printed RCU stalls for 29
// minutes, and the silence watchdog never acted).
func TestApplianceStall(t *testing.T) {
	m := &Machine{stall: make(chan struct{}), stalls: map[string]int{}}
	m.noteStall("[   37.604564] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
	m.noteStall("[   37.605907] rcu: \t0-...!: (0 ticks this GP) idle=56c8/0/0x0 softirq=858/858 fqs=0 (false positive?)")
	select {
	case <-m.stall:
		t.Fatal("stopped after one report")
	default:
	}
	m.noteStall("[  100.630605] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
	select {
	case <-m.stall:
	default:
		t.Fatal("the appliance's second stall report did not stop the machine")
	}
}

// TestTripleFaultStops: a guest's triple fault stops a multi-vCPU
// appliance at once (the emulator's, retried), and not a 1-vCPU one,
// where it is a failure the test should see in full.
func TestTripleFaultStops(t *testing.T) {
	const line = "s4| hyperroot vmm: s4: crash after 6.1s (vCPU 7: triple fault)"
	for cpus, stops := range map[int]bool{1: false, 2: true} {
		m := &Machine{stall: make(chan struct{}), stalls: map[string]int{}, cpus: cpus}
		m.noteStall("s4| hyperroot vmm: s4: poweroff after 6.1s (guest powered off (ACPI S5))")
		m.noteStall(line)
		select {
		case <-m.stall:
			if !stops || m.Stalled() != line {
				t.Errorf("%d vCPUs: stopped for %q", cpus, m.Stalled())
			}
		default:
			if stops {
				t.Errorf("%d vCPUs: a guest's triple fault did not stop the machine", cpus)
			}
		}
	}
}

// TestRefaultStops: a VMM's report that KVM keeps faulting a vCPU stops
// the machine at once, whatever its vCPUs.
func TestRefaultStops(t *testing.T) {
	const line = "client| hyperroot vmm: client: vcpu 0: KVM injected 251234 page faults in 10s, each after emulating an instruction: the vCPU makes no progress"
	m := &Machine{stall: make(chan struct{}), stalls: map[string]int{}, cpus: 1}
	m.noteStall("client| guest: KVM injected 5 page faults in 10s, each after emulating an instruction") // the guest's own words: not the VMM's
	m.noteStall(line)
	select {
	case <-m.stall:
		if m.Stalled() != line {
			t.Errorf("stopped for %q", m.Stalled())
		}
	default:
		t.Error("a VMM's refault report did not stop the machine")
	}
}

// withEFER adds an EFER line to each CPU of qemuRegs output, as QEMU
// prints it after the control registers.
func withEFER(regs string, efer ...uint64) string {
	parts := strings.Split(regs, "\nCPU#")
	for i := 1; i < len(parts); i++ {
		parts[i] += fmt.Sprintf("EFER=%016x\n", efer[i-1])
	}
	return strings.Join(parts, "\nCPU#")
}

// TestLostInterruptNested: a CPU running a nested guest (QEMU shows the
// guest's registers: EFER without SVME, the guest's IF) takes the
// appliance's interrupts whatever the guest's IF, so a vector left
// pending there is the emulator's; the same registers in an appliance
// without VMs, or with SVME set (the appliance's own code with its
// interrupts off), are not.
func TestLostInterruptNested(t *testing.T) {
	const appliance, guest = 0x1d01, 0x0d01 // LME|LMA|SCE|NX, with and without SVME
	off := uint32(0x46)
	pending := []string{qemuLAPIC(0, "(none)", 0x10, true), qemuLAPIC(1, "236 ", 0x10, true)}
	for _, tc := range []struct {
		name     string
		efer     uint64
		vmsExist bool
		want     string
	}{
		{"ci35: guest with interrupts off", guest, true, "appliance CPU 1 kept vector 236 pending for 3s running a nested guest"},
		{"no VMs: the appliance's own EFER", guest, false, ""},
		{"appliance code with interrupts off", appliance, true, ""},
	} {
		regs := withEFER(qemuRegs(off, off), appliance, tc.efer)
		// CPU 1 of qemuRegs is not in long mode; make both long mode.
		regs = strings.ReplaceAll(regs, "EIP=0000fff0 EFL=", "RIP=ffffffff81e0e4ab RFL=")
		got := lostInterrupt(regs, pending, regs, pending, nil, tc.vmsExist)
		if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestVMsRunning(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		want  bool
	}{
		{nil, false},
		{[]string{"[ 1.0] hyperroot: vm a started pid=90 cpus=1 memory=128M"}, true},
		{[]string{"[ 1.0] hyperroot: vm a started pid=90 cpus=1 memory=128M", "[ 2.0] hyperroot: vm a exited code=0 reason=poweroff"}, false},
		{[]string{"[ 1.0] hyperroot: vm a started pid=90", "[ 2.0] hyperroot: vm a exited code=0 reason=poweroff",
			"[ 3.0] hyperroot: vm a restarting in 1s (restart: always)", "[ 4.0] hyperroot: vm a started pid=95"}, true},
		{[]string{"[ 1.0] hyperroot: vm a started pid=90", "[ 1.5] hyperroot: vm b started pid=91",
			"[ 2.0] hyperroot: vm a exited code=0 reason=poweroff"}, true},
		{[]string{"a| [ 1.0] hyperroot: vm x started"}, false}, // a guest's line, not PID 1's
	} {
		if got := vmsRunning(tc.lines); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.lines, got, tc.want)
		}
	}
}

// ci36Regs is `info registers -a` of ci36's TestPassthrough appliance, cut
// to what the classifier reads: both CPUs halted in the idle loop with
// interrupts on, SVME set (VMs exist, neither CPU in a guest).
const ci36Regs = `
CPU#0
RAX=0000000000000000 RBX=0000000000000000
RIP=ffffffffb9217a0b RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
EFER=0000000000001d01
CPU#1
RAX=0000000000000000 RBX=0000000000000001
RIP=ffffffffb9217a0b RFL=%08x [----A--] CPL=0 II=0 A20=1 SMM=0 HLT=%d
EFER=0000000000001d01
`

// TestLostEOI: a CPU its kernel says has an overdue timer, seen halted with
// interrupts on and the same vector in service both times, lost its end of
// interrupt in the emulator (ci36); each thing that makes it not so is not.
func TestLostEOI(t *testing.T) {
	halted := fmt.Sprintf(ci36Regs, 0x212, 1)
	cpu0 := ci9LAPIC(0, "000000ec", 192090, 47624, "(none)", "(none)")
	stuck := strings.Replace(ci9LAPIC(1, "000000ec", 4058, 0, "39 40 236 ", "236 "), "PPR 0x10", "PPR 0xe0", 1)
	cpu1 := map[int]bool{1: true}
	for _, tc := range []struct {
		name    string
		regs1   string
		lapic1  string // CPU 1's APIC at the second look
		overdue map[int]bool
		want    string
	}{
		{"ci36", halted, stuck, cpu1, "appliance CPU 1 sat halted with interrupts on for 3s with vector [236] in service"},
		{"kernel has no timer waiting", halted, stuck, nil, ""},
		{"running, not halted", fmt.Sprintf(ci36Regs, 0x212, 0), stuck, cpu1, ""},
		{"interrupts off", fmt.Sprintf(ci36Regs, 0x12, 1), stuck, cpu1, ""},
		{"acknowledged in between", halted, strings.Replace(stuck, "ISR\t 236 ", "ISR\t (none)", 1), cpu1, ""},
		{"another vector in service", halted, strings.Replace(stuck, "ISR\t 236 ", "ISR\t 34 ", 1), cpu1, ""},
	} {
		got := lostInterrupt(halted, []string{cpu0, stuck}, tc.regs1, []string{cpu0, tc.lapic1}, tc.overdue, true)
		if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
