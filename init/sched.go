package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// defaultSchedSlice is the least time a vCPU thread keeps a CPU that
// other threads wait for (hyperroot.sched.slice).
//
// Why: the kernel's defaults (CFS min_granularity 0.75 ms and latency 6 ms,
// times 1+log2(CPUs)) are made for desktops, where a short wait matters
// more than what a switch costs. On a hypervisor a switch between two VMs'
// vCPU threads costs far more than one between two processes: the CPU
// leaves one guest's context (VMCS/VMCB, TLB and cache contents) for
// another's. Server profiles lengthen the slice for this (tuned's
// throughput-performance and virtual-host: 10 ms). Measured on the fleet
// benchmark (8 VMs booting at once on a 2-CPU TCG appliance, where a switch
// between nested guests is dear), the last VM reached its init after a
// median 25.6 s against 29.4 s with the kernel's slices (5 runs each,
// alternating). Waking threads still preempt as before (wakeup_granularity
// is left alone), so a VMM's I/O completions are not held back by it.
const defaultSchedSlice = 10 * time.Millisecond

// schedPeriodSlices is the CFS period (latency_ns) in slices: up to that
// many threads per CPU each get a whole slice per period.
const schedPeriodSlices = 4

// schedKnobs are the CFS tunables tuneScheduler sets, in debugfs's sched
// directory (Linux 5.13 and later with CONFIG_SCHED_DEBUG, as Debian
// builds it; the sysctls of older kernels are gone). Kernels from 6.6 on
// (EEVDF) have neither file and keep their defaults.
var schedKnobs = [...]string{"min_granularity_ns", "latency_ns"}

// tuneScheduler sets the CPU scheduler's slices for VMs (see
// defaultSchedSlice) and says so; slice 0 leaves the kernel's. debugfs is
// mounted on a directory of its own for the writes and unmounted after:
// nothing the appliance starts later sees it.
func tuneScheduler(c *console, slice time.Duration) {
	if slice == 0 {
		c.Printf("sched: the kernel's time slices (hyperroot.sched.slice=kernel)")
		return
	}
	dir, err := os.MkdirTemp("", "debugfs")
	if err == nil {
		defer os.Remove(dir)
		err = unix.Mount("debugfs", dir, "debugfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	if err != nil {
		c.Printf("sched: the kernel's time slices: debugfs: %v", err)
		return
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	got, old, err := setSchedSlice(filepath.Join(dir, "sched"), slice)
	if err != nil {
		c.Printf("sched: the kernel's time slices: %v", err)
		return
	}
	c.Printf("sched: time slice %v, period %v (the kernel's %v, %v): a vCPU keeps its CPU longer between switches (hyperroot.sched.slice)",
		got[0], got[1], old[0], old[1])
}

// setSchedSlice writes slice and its period into the knobs in dir and
// returns what they read afterwards and before.
func setSchedSlice(dir string, slice time.Duration) (got, old [len(schedKnobs)]time.Duration, err error) {
	want := [len(schedKnobs)]time.Duration{slice, schedPeriodSlices * slice}
	for i, k := range schedKnobs {
		if old[i], err = readNanos(filepath.Join(dir, k)); err != nil {
			return got, old, err
		}
	}
	// The period first: a kernel that checked the pair would refuse a
	// slice longer than the current period.
	for _, i := range []int{1, 0} {
		p := filepath.Join(dir, schedKnobs[i])
		if err := os.WriteFile(p, []byte(strconv.FormatInt(want[i].Nanoseconds(), 10)), 0); err != nil {
			return got, old, err
		}
		if got[i], err = readNanos(p); err != nil {
			return got, old, err
		}
		if got[i] != want[i] {
			return got, old, fmt.Errorf("%s reads %v after writing %v", schedKnobs[i], got[i], want[i])
		}
	}
	return got, old, nil
}

func readNanos(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("no %s in this kernel (CONFIG_SCHED_DEBUG off, or EEVDF)", filepath.Base(path))
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s: %q is not a count of nanoseconds", path, b)
	}
	return time.Duration(n), nil
}

// parseSchedSlice reads hyperroot.sched.slice's value: a Go duration from
// 1 ms to 1 s, "kernel" (0: the kernel's own), or "" (not given: the
// default). A value it refuses leaves the default, with the error to say.
func parseSchedSlice(v string) (time.Duration, error) {
	switch v {
	case "":
		return defaultSchedSlice, nil
	case "kernel":
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err == nil && (d < time.Millisecond || d > time.Second) {
		err = errors.New("want 1ms to 1s, or kernel")
	}
	if err != nil {
		return defaultSchedSlice, fmt.Errorf("hyperroot.sched.slice=%s: %w", v, err)
	}
	return d, nil
}
