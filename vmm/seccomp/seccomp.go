// Package seccomp confines a VMM to the system calls it makes once its
// machine is built, so that a guest that takes over the VMM through a
// device bug can do no more than the VMM itself does: no new files, no
// sockets but vhost-user reconnections, no exec, no ptrace, no KVM request
// but those a running machine issues.
//
// Two filters, one per thread role (filters.go lists them, with how each
// entry was found; program.go assembles each into one BPF program): a
// process-wide allowlist loaded on every thread at once
// (SECCOMP_FILTER_FLAG_TSYNC), which holds what the Go runtime and the
// VMM's other threads need (device goroutines, disk I/O through io_uring or
// a thread pool, vhost-user reconnection, console, dumps, exit), and a
// stricter one each vCPU thread loads on itself on top of it, before its
// first KVM_RUN. A thread's system calls pass only what both allow. Any
// other call kills the whole process (SECCOMP_RET_KILL_PROCESS, reported by
// the supervisor as reason=seccomp with the call's name, see KillRecord),
// or, in Log mode for development, is logged by the kernel's audit and
// let through (SECCOMP_RET_LOG).
//
// The switch has a filter of its own, built and loaded the same way
// (switch.go).
//
// The filters are the last thing the VMM does to itself before the guest
// runs: whatever set-up needs (opening the kernel, creating the VM, jailing
// the process) is done by then, and is not on the lists.
//
// What the Go runtime does on any thread, the vCPU filter allows too: a
// vCPU goroutine is locked to its thread, but the runtime still runs there
// (signals, preemption, stack growth, garbage collection assists, parking
// the thread on a futex while the goroutine waits, and the thread's exit).
// Threads are never created by a vCPU thread: the runtime creates them from
// its template thread whenever the current one is locked, so no new thread
// inherits the vCPU filter. A vCPU thread must die with its goroutine rather
// than run others under the stricter filter; VCPUThread sees to that.
package seccomp

import (
	"fmt"
	"runtime"

	bpf "github.com/elastic/go-seccomp-bpf"
)

// Mode is what a filter does with a system call it does not allow.
type Mode uint8

const (
	// Kill kills the process (SECCOMP_RET_KILL_PROCESS): the product's mode.
	Kill Mode = iota
	// Log lets the call through and has the kernel's audit log it
	// (SECCOMP_RET_LOG): for development, and for refreshing the lists.
	Log
	// Off loads no filter.
	Off
)

// String is the mode's name as ParseMode reads it.
func (m Mode) String() string {
	switch m {
	case Kill:
		return "kill"
	case Log:
		return "log"
	case Off:
		return "off"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode reads "kill", "log" or "off".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Kill, Log, Off} {
		if s == m.String() {
			return m, nil
		}
	}
	return Kill, fmt.Errorf("seccomp mode %q: want kill, log or off", s)
}

func (m Mode) action() bpf.Action {
	if m == Log {
		return bpf.ActionLog
	}
	return bpf.ActionKillProcess
}

// Process loads the process-wide filter on every thread of the process.
// It sets no_new_privs (which seccomp requires of a process without
// CAP_SYS_ADMIN) and fixes GOMAXPROCS at its current value: the runtime
// would otherwise re-read its CPU affinity and cgroup limits every second,
// calls no running VMM needs.
func Process(m Mode, o Options) error {
	if m == Off {
		return nil
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	if err := load(processPolicy(m.action(), o), true, true); err != nil {
		return fmt.Errorf("seccomp: process filter: %w", err)
	}
	return nil
}

// VCPUThread loads the vCPU filter on the calling goroutine's thread, which
// must be locked to it (runtime.LockOSThread) and is from then on for good:
// VCPUThread locks it once more, so that when the goroutine returns, its
// thread exits with it instead of going back to the runtime to run other
// goroutines under the stricter filter. Process must have been called
// first (it sets no_new_privs).
func VCPUThread(m Mode, o Options) error {
	if m == Off {
		return nil
	}
	runtime.LockOSThread()
	if err := load(vcpuPolicy(m.action(), o), false, false); err != nil {
		return fmt.Errorf("seccomp: vCPU thread filter: %w", err)
	}
	return nil
}

// Policies assembles both filters for action, for tests and for a reader
// who wants to see the programs (Policy.Dump).
func Policies(m Mode, o Options) (process, vcpu bpf.Policy) {
	return processPolicy(m.action(), o), vcpuPolicy(m.action(), o)
}

// Options say what a machine has that widens its filters; the zero value
// is a machine of virtio devices only.
type Options struct {
	// Passthrough: the machine has passed-through devices, whose BAR
	// pages it maps into the guest as KVM memory slots that follow a BAR
	// where the guest moves it, on the vCPU thread that wrote the
	// device's configuration space (kvm.PassthroughVMRequests).
	Passthrough bool
}
