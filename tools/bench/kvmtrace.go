package main

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// tracingDir is tracefs, which the network benchmark mounts for kvmTrace.
const tracingDir = "/sys/kernel/tracing"

// kvmHist is a trace event counted by a histogram trigger in the kernel
// (no event is copied out, so the stream pays a map update per event):
// keys are the event's fields the counts are split by, label names an
// entry from them (group says what process a thread id belongs to).
type kvmHist struct {
	event string // under events/
	keys  string
	label func(fields map[string]uint64, group func(tid uint64) string) string
}

// kvmHists are what the stream's account splits KVM's exits by: the exit
// reason, and for the two kinds a guest's interrupts and timers cost most,
// which MSR (x2APIC EOI, TSC deadline, ...) and which I/O port; and the
// system calls of the processes on the data path (the switch and VMMs,
// QEMU), which cost the most of an emulated CPU's time per wake-up.
var kvmHists = []kvmHist{
	{"kvm/kvm_exit", "exit_reason,isa", func(f map[string]uint64, _ func(uint64) string) string {
		return exitName(f["isa"], f["exit_reason"])
	}},
	{"kvm/kvm_msr", "ecx,write", func(f map[string]uint64, _ func(uint64) string) string {
		return fmt.Sprintf("%s%#x", map[bool]string{false: "rd", true: "wr"}[f["write"] != 0], f["ecx"])
	}},
	{"kvm/kvm_pio", "rw,port", func(f map[string]uint64, _ func(uint64) string) string {
		return fmt.Sprintf("%s%#x", map[bool]string{false: "in", true: "out"}[f["rw"] != 0], f["port"])
	}},
	{"raw_syscalls/sys_enter", "common_pid,id", func(f map[string]uint64, group func(uint64) string) string {
		return group(f["common_pid"]) + ":" + syscallName(f["id"])
	}},
}

// kvmTrace counts events by kvmHists between start and read, for every
// VM and process of the appliance; proc (normally /proc) says what a
// thread is.
type kvmTrace struct{ dir, proc string }

func (t kvmTrace) trigger(h kvmHist) string {
	return filepath.Join(t.dir, "events", h.event, "trigger")
}

func (h kvmHist) spec() string { return "hist:keys=" + h.keys + ":sort=hitcount" }

// start (re)installs the histograms, from zero.
func (t kvmTrace) start() error {
	var errs []error
	for _, h := range kvmHists {
		// A histogram left by an earlier round goes first: removing
		// one that is not there fails, harmlessly.
		os.WriteFile(t.trigger(h), []byte("!"+h.spec()), 0)
		if err := os.WriteFile(t.trigger(h), []byte(h.spec()), 0); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.event, err))
		}
	}
	return errors.Join(errs...)
}

// stop removes the histograms.
func (t kvmTrace) stop() {
	for _, h := range kvmHists {
		os.WriteFile(t.trigger(h), []byte("!"+h.spec()), 0)
	}
}

// kvmCount is one histogram entry, named by its event's label.
type kvmCount struct {
	event, name string
	n           uint64
}

// read returns every histogram's counts so far by label, the largest
// first within each event; an event it cannot read is left out.
func (t kvmTrace) read() []kvmCount {
	groups := map[uint64]string{}
	group := func(tid uint64) string {
		g, ok := groups[tid]
		if !ok {
			g = threadGroup(t.proc, tid)
			groups[tid] = g
		}
		return g
	}
	var out []kvmCount
	for _, h := range kvmHists {
		b, err := os.ReadFile(filepath.Join(t.dir, "events", h.event, "hist"))
		if err != nil {
			continue
		}
		ev := filepath.Base(h.event)
		byLabel := map[string]uint64{}
		// A VMM's system calls by thread as well: which of them are
		// the runtime's (its monitor, idle threads) and which the
		// vCPU's or the kick loop's shows only per thread.
		byThread := map[string]uint64{}
		for _, e := range parseHist(string(b)) {
			byLabel[h.label(e.fields, group)] += e.n
			if h.event == "raw_syscalls/sys_enter" && group(e.fields["common_pid"]) == "vmm" {
				byThread[fmt.Sprintf("%d:%s", e.fields["common_pid"], syscallName(e.fields["id"]))] += e.n
			}
		}
		out = appendSorted(out, ev, byLabel)
		out = appendSorted(out, "vmm_thread", byThread)
	}
	return out
}

// subtractCounts is counts less base (an earlier read of the same
// histograms), per event and label, sorted as read sorts them; labels
// that did not move are left out.
func subtractCounts(counts, base []kvmCount) []kvmCount {
	if base == nil {
		return counts
	}
	was := map[[2]string]uint64{}
	for _, c := range base {
		was[[2]string{c.event, c.name}] = c.n
	}
	var events []string
	by := map[string]map[string]uint64{}
	for _, c := range counts {
		n := c.n - min(c.n, was[[2]string{c.event, c.name}])
		if by[c.event] == nil {
			by[c.event] = map[string]uint64{}
			events = append(events, c.event)
		}
		if n > 0 {
			by[c.event][c.name] = n
		}
	}
	var out []kvmCount
	for _, ev := range events {
		out = appendSorted(out, ev, by[ev])
	}
	return out
}

// appendSorted appends counts by label as event's, the largest first.
func appendSorted(out []kvmCount, event string, byLabel map[string]uint64) []kvmCount {
	first := len(out)
	for l, n := range byLabel {
		out = append(out, kvmCount{event, l, n})
	}
	slices.SortFunc(out[first:], func(a, b kvmCount) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	return out
}

type histEntry struct {
	fields map[string]uint64
	n      uint64
}

// parseHist reads a histogram trigger's output: one line per key,
// "{ field: value, field: value } hitcount: n", values in decimal (or
// hex with 0x), sorted by count (the trigger's sort=hitcount) but sorted
// again here. Lines it cannot read are skipped.
func parseHist(s string) []histEntry {
	var out []histEntry
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			continue
		}
		keys, rest, ok := strings.Cut(line[1:], "}")
		if !ok {
			continue
		}
		_, hits, ok := strings.Cut(rest, "hitcount:")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.Fields(hits + " x")[0], 10, 64)
		if err != nil {
			continue
		}
		e := histEntry{fields: map[string]uint64{}, n: n}
		for _, kv := range strings.Split(keys, ",") {
			k, v, _ := strings.Cut(kv, ":")
			val, err := strconv.ParseUint(strings.Fields(v + " x")[0], 0, 64)
			if err != nil {
				e.fields = nil // a key it cannot read: not a count to name
				break
			}
			e.fields[strings.TrimSpace(k)] = val
		}
		if e.fields != nil {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b histEntry) int { return cmp.Compare(b.n, a.n) })
	return out
}

// kvmCountsLine is counts per unit of work (a MiB streamed, a thousand
// requests), the first max of each event: "kvm_exit npf=120.5 msr=80.1
// ... kvm_msr wr0x80b=40.0 ...".
func kvmCountsLine(counts []kvmCount, work float64, max int) string {
	if work <= 0 || len(counts) == 0 {
		return ""
	}
	var b strings.Builder
	last, shown := "", 0
	for _, c := range counts {
		if c.event != last {
			last, shown = c.event, 0
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(c.event)
		}
		if shown == max {
			continue
		}
		shown++
		fmt.Fprintf(&b, " %s=%.1f", c.name, float64(c.n)/work)
	}
	return b.String()
}

// kvmISA* are kvm_exit's isa field.
const (
	kvmISAVMX = 1
	kvmISASVM = 2
)

// svmExits and vmxExits name the exit codes a guest's I/O and timers
// cause (AMD APM vol. 2 appendix C; Intel SDM vol. 3 appendix C).
var (
	svmExits = map[uint64]string{
		0x040 + 14: "pf", 0x060: "intr", 0x061: "nmi", 0x064: "vintr", 0x06e: "rdtsc", 0x072: "cpuid",
		0x074: "iret", 0x077: "pause", 0x078: "hlt", 0x07b: "io", 0x07c: "msr", 0x081: "vmmcall",
		0x08d: "xsetbv", 0x400: "npf", 0x401: "avic_ipi", 0x402: "avic_access",
	}
	vmxExits = map[uint64]string{
		0: "exception", 1: "intr", 7: "intr_window", 10: "cpuid", 12: "hlt", 18: "vmcall", 28: "cr",
		30: "io", 31: "msr_read", 32: "msr_write", 40: "pause", 44: "apic_access", 45: "eoi",
		48: "ept_violation", 49: "ept_misconfig", 52: "preemption_timer", 56: "apic_write",
	}
)

// syscalls names the x86-64 system calls a switch, a VMM or QEMU makes on
// the data path; others go by number.
var syscalls = map[uint64]string{
	0: "read", 1: "write", 3: "close", 7: "poll", 9: "mmap", 11: "munmap", 13: "rt_sigaction",
	14: "rt_sigprocmask", 15: "rt_sigreturn", 16: "ioctl", 17: "pread64", 18: "pwrite64", 19: "readv",
	20: "writev", 23: "select", 24: "sched_yield", 28: "madvise", 35: "nanosleep", 39: "getpid",
	44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 186: "gettid", 200: "tkill",
	202: "futex", 228: "clock_gettime", 230: "clock_nanosleep", 232: "epoll_wait", 233: "epoll_ctl",
	234: "tgkill", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 286: "timerfd_settime",
	295: "preadv", 296: "pwritev", 327: "preadv2", 328: "pwritev2", 426: "io_uring_enter",
}

func syscallName(id uint64) string {
	if n, ok := syscalls[id]; ok {
		return n
	}
	return "sys" + strconv.FormatUint(id, 10)
}

// exitName names an exit reason of the given ISA, or gives its number.
func exitName(isa, reason uint64) string {
	table := svmExits
	if isa == kvmISAVMX {
		table = vmxExits
	}
	if n, ok := table[reason]; ok {
		return n
	}
	if isa == kvmISASVM && reason >= 0x040 && reason < 0x060 {
		return fmt.Sprintf("exc%d", reason-0x040)
	}
	return fmt.Sprintf("%#x", reason)
}
