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
}

var (
	irrRE  = regexp.MustCompile(`(?m)^IRR\t? *(.*)$`)
	pprRE  = regexp.MustCompile(`\bPPR 0x([0-9a-fA-F]+)`)
	spivRE = regexp.MustCompile(`(?m)^SPIV.*\bAPIC enabled\b`)
	// `info registers -a`: a CPU's header and its flags.
	cpuRE = regexp.MustCompile(`(?m)^CPU#(\d+)\s*$`)
	eflRE = regexp.MustCompile(`\b[ER]FL=([0-9a-fA-F]+)`) // RFL in long mode
)

// parseLAPIC reads `info lapic N` output; ok is false when it is not one.
func parseLAPIC(out string) (lapicState, bool) {
	p := pprRE.FindStringSubmatch(out)
	irr := irrRE.FindStringSubmatch(out)
	if p == nil || irr == nil {
		return lapicState{}, false
	}
	ppr, _ := strconv.ParseUint(p[1], 16, 8)
	st := lapicState{ppr: int(ppr), enabled: spivRE.MatchString(out)}
	for _, f := range strings.Fields(irr[1]) {
		// QEMU prints vectors in decimal, a level-triggered one with
		// "(level)" after it.
		if v, err := strconv.Atoi(strings.TrimSuffix(f, "(level)")); err == nil && v >= 0 && v < 256 {
			st.irr = append(st.irr, v)
		}
	}
	return st, true
}

// interruptsOn reads the IF flag of each CPU from `info registers -a`.
func interruptsOn(out string) map[int]bool {
	on := map[int]bool{}
	heads := cpuRE.FindAllStringSubmatchIndex(out, -1)
	for i, h := range heads {
		end := len(out)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		cpu, _ := strconv.Atoi(out[h[2]:h[3]])
		if e := eflRE.FindStringSubmatch(out[h[1]:end]); e != nil {
			fl, _ := strconv.ParseUint(e[1], 16, 64)
			on[cpu] = fl&(1<<9) != 0
		}
	}
	return on
}

// lostInterrupt compares two looks at the appliance's CPUs (registers and
// each CPU's local APIC), taken emulatorRecheck apart: a CPU whose APIC
// was enabled and had the same vector pending above its priority both
// times, with interrupts on both times, was never interrupted in between.
// It returns a description of the first such CPU, or "".
func lostInterrupt(regs0 string, lapics0 []string, regs1 string, lapics1 []string) string {
	on0, on1 := interruptsOn(regs0), interruptsOn(regs1)
	for cpu := range min(len(lapics0), len(lapics1)) {
		a, ok0 := parseLAPIC(lapics0[cpu])
		b, ok1 := parseLAPIC(lapics1[cpu])
		if !ok0 || !ok1 || !a.enabled || !b.enabled || !on0[cpu] || !on1[cpu] {
			continue
		}
		for _, v := range a.irr {
			if v>>4 > a.ppr>>4 && v>>4 > b.ppr>>4 && slices.Contains(b.irr, v) {
				return fmt.Sprintf("appliance CPU %d kept vector %d pending for %s with interrupts on and priority %#x (QEMU's view)", cpu, v, emulatorRecheck, b.ppr)
			}
		}
	}
	return ""
}
