package main

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pinProcess sets the CPU affinity of every thread of the VMM to cpus
// (--pin-emulator). Threads made later inherit it from the thread that
// makes them; the vCPU threads then move to their own CPUs (pinThread).
// The runtime runs the call on each of its threads (AllThreadsSyscall):
// thread ids from /proc would be the host's, not those of the VMM's own
// PID namespace (internal/jail).
func pinProcess(cpus []int) error {
	set := cpuSet(cpus)
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_SCHED_SETAFFINITY, 0, unsafe.Sizeof(set), uintptr(unsafe.Pointer(&set)))
	if errno != 0 {
		return fmt.Errorf("pin: threads to CPUs %v: %w", cpus, errno)
	}
	return nil
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
