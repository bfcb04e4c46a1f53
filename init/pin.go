package main

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
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

// pinThread puts the calling (locked) thread on cpus.
func pinThread(cpus []int) error {
	set := cpuSet(cpus)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin: to CPUs %v: %w", cpus, err)
	}
	return nil
}

// vcpuPlacement is where each vCPU thread runs, for the machine to apply
// on the thread as it starts: vCPU i on its --pin-vcpus CPU, or else on
// the host CPUs of the guest NUMA node it belongs to (so that a guest
// node's vCPUs run next to its RAM); nil when neither says anything.
func vcpuPlacement(a vmmcli.Args) func(i int) error {
	if pins := a.PinVCPUs; len(pins) > 0 {
		return func(i int) error { return pinThread([]int{pins[i%len(pins)]}) }
	}
	sets := map[int][]int{} // vCPU -> its node's host CPUs
	for _, n := range a.NUMANodes {
		if len(n.HostCPUs) == 0 {
			continue
		}
		for _, c := range n.CPUs {
			sets[c] = n.HostCPUs
		}
	}
	if len(sets) == 0 {
		return nil
	}
	return func(i int) error {
		if cpus, ok := sets[i]; ok {
			return pinThread(cpus)
		}
		return nil
	}
}

func cpuSet(cpus []int) unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return set
}
