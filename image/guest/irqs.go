package main

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// irqCounts is /proc/interrupts summed over CPUs, by source: a device's
// interrupt by its handler's name (virtio0-input.0), the architecture's
// by their row (LOC: local timer, RES: rescheduling IPIs, CAL: function
// calls, TLB: shootdowns). The network benchmark compares them per MiB
// between VMMs: a guest that takes more interrupts per byte under one
// VMM spends its CPU there.
type irqCounts map[string]uint64

// irqSources is how many sources the network benchmark's lines name.
const irqSources = 8

// readIRQs reads /proc/interrupts; nil when it cannot.
func readIRQs() irqCounts {
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return nil
	}
	return parseInterrupts(string(b))
}

// parseInterrupts parses /proc/interrupts: a header naming the CPUs, then
// one row per source, "key: count per CPU, then chip and handler names"
// (ERR and MIS have one count).
func parseInterrupts(s string) irqCounts {
	lines := strings.Split(s, "\n")
	if len(lines) == 0 {
		return nil
	}
	cpus := len(strings.Fields(lines[0]))
	out := irqCounts{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		key := strings.TrimSuffix(f[0], ":")
		var sum uint64
		n := 0
		for _, c := range f[1:min(len(f), 1+cpus)] {
			v, err := strconv.ParseUint(c, 10, 64)
			if err != nil {
				break
			}
			sum += v
			n++
		}
		if n == 0 {
			continue
		}
		name := key
		if _, err := strconv.Atoi(key); err == nil && len(f) > 1+n {
			name = f[len(f)-1] // the handler: virtio0-input.0, ...
		}
		out[name] += sum
	}
	return out
}

// irqSplit is the interrupts between two samples per MiB moved, the
// largest first, at most max sources ("virtio0-input.0=12.5 LOC=3.1");
// "" when none came or nothing moved.
func irqSplit(from, to irqCounts, mib float64, max int) string {
	if mib <= 0 {
		return ""
	}
	type src struct {
		name string
		n    uint64
	}
	var d []src
	for name, v := range to {
		if f := from[name]; v > f {
			d = append(d, src{name, v - f})
		}
	}
	slices.SortFunc(d, func(a, b src) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	parts := make([]string, 0, max)
	for _, s := range d[:min(len(d), max)] {
		parts = append(parts, fmt.Sprintf("%s=%.1f", s.name, float64(s.n)/mib))
	}
	return strings.Join(parts, " ")
}
