package qemu

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// LostInterruptPrefix starts the console line the silence watchdog adds
// when QEMU's own view shows an appliance CPU that left an interrupt
// pending although nothing kept it from taking it: a fault of the
// emulator, which a CPU never shows (it takes a deliverable interrupt at
// the next instruction boundary).
const LostInterruptPrefix = "qemu: lost interrupt: "

// lapicState is what QEMU's `info lapic` says of one CPU's local APIC.
type lapicState struct {
	irr     []int // pending vectors
	ppr     int   // processor priority
	enabled bool  // software-enabled (SPIV)
	// inService is whether any vector is in service (ISR); isr lists them.
	inService bool
	isr       []int
	// timerOut is whether the APIC timer is an unmasked one-shot whose
	// count was loaded (initial) and has run out: its interrupt is due.
	timerOut bool
	initial  uint64 // the timer's initial count
}

var (
	irrRE  = regexp.MustCompile(`(?m)^IRR\t? *(.*)$`)
	pprRE  = regexp.MustCompile(`\bPPR 0x([0-9a-fA-F]+)`)
	spivRE = regexp.MustCompile(`(?m)^SPIV.*\bAPIC enabled\b`)
	isrRE  = regexp.MustCompile(`(?m)^ISR\t? *(.*)$`)
	// The timer's LVT entry (masked, one-shot) and its counts.
	lvttRE  = regexp.MustCompile(`(?m)^LVTT\t? *0x([0-9a-fA-F]+) .*\bone-shot\b`)
	countRE = regexp.MustCompile(`(?m)^Timer\t? .*\binitial_count = (\d+) current_count = (\d+)`)
	// `info registers -a`: a CPU's header, its flags, whether it is
	// halted.
	cpuRE  = regexp.MustCompile(`(?m)^CPU#(\d+)\s*$`)
	eflRE  = regexp.MustCompile(`\b[ER]FL=([0-9a-fA-F]+)`) // RFL in long mode
	hltRE  = regexp.MustCompile(`\bHLT=([01])\b`)
	eferRE = regexp.MustCompile(`\bEFER=([0-9a-fA-F]+)`)
)

// eferSVME is EFER's SVM-enable bit: KVM sets it on every CPU of the
// appliance while any VM exists, and the guests' kernels never do.
const eferSVME = 1 << 12

// parseLAPIC reads `info lapic N` output; ok is false when it is not one.
func parseLAPIC(out string) (lapicState, bool) {
	p := pprRE.FindStringSubmatch(out)
	irr := irrRE.FindStringSubmatch(out)
	if p == nil || irr == nil {
		return lapicState{}, false
	}
	ppr, _ := strconv.ParseUint(p[1], 16, 8)
	st := lapicState{ppr: int(ppr), enabled: spivRE.MatchString(out)}
	if isr := isrRE.FindStringSubmatch(out); isr != nil {
		st.inService = !strings.Contains(isr[1], "(none)") && strings.TrimSpace(isr[1]) != ""
		st.isr = vectors(isr[1])
	}
	lvtt, count := lvttRE.FindStringSubmatch(out), countRE.FindStringSubmatch(out)
	if lvtt != nil && count != nil {
		lvt, _ := strconv.ParseUint(lvtt[1], 16, 32)
		st.initial, _ = strconv.ParseUint(count[1], 10, 64)
		current, _ := strconv.ParseUint(count[2], 10, 64)
		st.timerOut = lvt&(1<<16) == 0 && st.initial != 0 && current == 0
	}
	st.irr = vectors(irr[1])
	return st, true
}

// vectors reads a list of vectors as QEMU prints them: in decimal, a
// level-triggered one with "(level)" after it.
func vectors(s string) []int {
	var out []int
	for _, f := range strings.Fields(s) {
		if v, err := strconv.Atoi(strings.TrimSuffix(f, "(level)")); err == nil && v >= 0 && v < 256 {
			out = append(out, v)
		}
	}
	return out
}

// cpuFlags is what `info registers -a` says of one CPU.
type cpuFlags struct {
	on     bool // interrupts on (IF)
	halted bool // in HLT, waiting for an interrupt
	// nested is whether the CPU was running a nested guest: QEMU then
	// shows the guest's registers, and the guest's EFER lacks the
	// SVM-enable bit, which KVM sets on every appliance CPU while a VM
	// exists. Such a CPU takes the appliance's interrupts whatever the
	// guest's IF: KVM enters its guests with the host's interrupts on
	// (STI just before VMRUN) and virtual interrupt masking, so a
	// physical interrupt exits to the appliance at once.
	nested bool
}

// deliverable is whether an interrupt above the CPU's priority would be
// taken at once.
func (f cpuFlags) deliverable() bool { return f.on || f.nested }

// interruptsOn reads the IF flag, the halted state and whether it runs a
// nested guest of each CPU from `info registers -a`. vmsExist says the
// appliance has VMs (without any, no CPU can be in a nested guest, and
// EFER lacks SVME in the appliance too).
func interruptsOn(out string, vmsExist bool) map[int]cpuFlags {
	on := map[int]cpuFlags{}
	heads := cpuRE.FindAllStringSubmatchIndex(out, -1)
	for i, h := range heads {
		end := len(out)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		cpu, _ := strconv.Atoi(out[h[2]:h[3]])
		regs := out[h[1]:end]
		e := eflRE.FindStringSubmatch(regs)
		if e == nil {
			continue
		}
		fl, _ := strconv.ParseUint(e[1], 16, 64)
		hlt := hltRE.FindStringSubmatch(regs)
		f := cpuFlags{on: fl&(1<<9) != 0, halted: hlt != nil && hlt[1] == "1"}
		if e := eferRE.FindStringSubmatch(regs); e != nil {
			efer, _ := strconv.ParseUint(e[1], 16, 64)
			f.nested = vmsExist && efer&eferSVME == 0
		}
		on[cpu] = f
	}
	return on
}

// lostInterrupt compares two looks at the appliance's CPUs (registers and
// each CPU's local APIC), taken emulatorRecheck apart, and returns a
// description of the first CPU the emulator failed to interrupt, or "":
//   - a CPU whose APIC was enabled and had the same vector pending above
//     its priority both times, with interrupts on or running a nested
//     guest both times (cpuFlags.nested), was never interrupted in
//     between;
//   - a CPU its kernel says has a timer overdue (overdue: RCU's "timer
//     handling issue on cpu=N"), halted with interrupts on both times,
//     whose APIC timer had run out (an unmasked one-shot, the same count
//     loaded) with nothing pending or in service both times: its APIC
//     never raised the interrupt the kernel armed it for, and the CPU
//     sleeps for ever. (A CPU whose kernel has no timer to wait for looks
//     the same, which is why the kernel's word is needed too.)
//   - a CPU its kernel says has a timer overdue, halted with interrupts on
//     both times with the same vectors in service: Linux acknowledges
//     (EOI) an interrupt in its handler and halts only in its idle loop,
//     after every handler returned, so the emulator lost the EOI, and the
//     vector in service holds back every interrupt of its class or lower
//     (the timer's own, re-raised) for ever. Seen in ci36's
//     TestPassthrough: ISR 236, IRR 39 40 236, PPR 0xe0, for minutes.
//
// vmsExist says the appliance has started a VM (see interruptsOn).
func lostInterrupt(regs0 string, lapics0 []string, regs1 string, lapics1 []string, overdue map[int]bool, vmsExist bool) string {
	on0, on1 := interruptsOn(regs0, vmsExist), interruptsOn(regs1, vmsExist)
	for cpu := range min(len(lapics0), len(lapics1)) {
		a, ok0 := parseLAPIC(lapics0[cpu])
		b, ok1 := parseLAPIC(lapics1[cpu])
		if !ok0 || !ok1 || !a.enabled || !b.enabled || !on0[cpu].deliverable() || !on1[cpu].deliverable() {
			continue
		}
		for _, v := range a.irr {
			if v>>4 > a.ppr>>4 && v>>4 > b.ppr>>4 && slices.Contains(b.irr, v) {
				how := "with interrupts on"
				if on0[cpu].nested || on1[cpu].nested {
					how = "running a nested guest"
				}
				return fmt.Sprintf("appliance CPU %d kept vector %d pending for %s %s and priority %#x (QEMU's view)", cpu, v, emulatorRecheck, how, b.ppr)
			}
		}
		if overdue[cpu] && on0[cpu].halted && on1[cpu].halted && a.timerOut && b.timerOut && a.initial == b.initial &&
			len(a.irr) == 0 && len(b.irr) == 0 && !a.inService && !b.inService {
			return fmt.Sprintf("appliance CPU %d sat halted with interrupts on for %s, its one-shot APIC timer run out (initial count %d) and no interrupt pending or in service, while its kernel reported a timer on it overdue (QEMU's view)", cpu, emulatorRecheck, b.initial)
		}
		if overdue[cpu] && on0[cpu].halted && on1[cpu].halted && on0[cpu].on && on1[cpu].on &&
			len(a.isr) > 0 && slices.Equal(a.isr, b.isr) {
			return fmt.Sprintf("appliance CPU %d sat halted with interrupts on for %s with vector %v in service (its end of interrupt lost; pending %v, priority %#x), while its kernel reported a timer on it overdue (QEMU's view)", cpu, emulatorRecheck, b.isr, b.irr, b.ppr)
		}
	}
	return ""
}

// overdueRE matches the appliance kernel's RCU report of a CPU whose
// timers do not run.
var overdueRE = regexp.MustCompile(`^\[ *[0-9.]+\] rcu: .*Possible timer handling issue on cpu=(\d+)`)

// applianceStallRE starts the appliance kernel's RCU stall report.
var applianceStallRE = regexp.MustCompile(`^\[ *[0-9.]+\] rcu: INFO: rcu_\w+ detected stalls`)

// overdueTimers returns the CPUs the appliance's kernel said, in its
// latest RCU stall report, have a timer overdue: an earlier report's CPU
// may have recovered since.
func overdueTimers(lines []string) map[int]bool {
	cpus := map[int]bool{}
	last := -1
	for i, l := range lines {
		if applianceStallRE.MatchString(l) {
			last = i
		}
	}
	if last < 0 {
		return cpus
	}
	for _, l := range lines[last:] {
		if m := overdueRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			cpus[n] = true
		}
	}
	return cpus
}

// vmLifeRE matches PID 1's lines that a VM's VMM started or exited.
var vmLifeRE = regexp.MustCompile(`^\[ *[0-9.]+\] hyperroot: vm (\S+) (started|exited)\b`)

// vmsRunning says whether the appliance's console, read in order, leaves
// some VM's VMM running: a "started" line with no "exited" line after it.
func vmsRunning(lines []string) bool {
	running := map[string]bool{}
	for _, l := range lines {
		if m := vmLifeRE.FindStringSubmatch(l); m != nil {
			running[m[1]] = m[2] == "started"
		}
	}
	for _, r := range running {
		if r {
			return true
		}
	}
	return false
}
