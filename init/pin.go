package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinProcess sets the CPU affinity of every thread of the VMM to cpus
// (--pin-emulator). Threads made later inherit it from the thread that
// makes them; the vCPU threads then move to their own CPUs (pinThread).
// It reads /proc/self/task, so it runs early, before any jail hides /proc.
func pinProcess(cpus []int) error {
	set := cpuSet(cpus)
	done := map[int]bool{}
	// Twice over until no thread is new: the runtime may start one while
	// the others are being moved (it then inherits from a thread that
	// may not have moved yet).
	for {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("pin: %w", err)
		}
		fresh := false
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin: thread %d to CPUs %v: %w", tid, cpus, err)
			}
			done[tid], fresh = true, true
		}
		if !fresh {
			return nil
		}
	}
}

// pinThread puts the calling (locked) thread on cpu.
func pinThread(cpu int) error {
	set := cpuSet([]int{cpu})
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin: to CPU %d: %w", cpu, err)
	}
	return nil
}

func cpuSet(cpus []int) unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return set
}
