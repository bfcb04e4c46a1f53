package seccomp

import (
	bpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/vfio"
)

// The lists, one per thread role. Each entry says who makes the call.
//
// How they were derived: from the code paths a running VMM takes (the Go
// runtime's system calls, runtime/sys_linux_amd64.s and what calls them;
// the VMM's own unix.* and syscall.* calls under vmm/, net/vhostuser and
// internal/uring, minus those made only while building the machine), then
// proved by running the real workloads with the filters in Log mode
// (HYPERROOT_SECCOMP=log on the appliance's kernel command line): the
// KVM-in-appliance tests, the end-to-end tests (disks, network, switch
// restart, reboot, dumps) and the default demo. In Log mode the kernel's
// audit logs each call a filter would have refused, and the supervisor
// relays it to the console as "vm <name> seccomp: logged syscall=<name>";
// a normal run logs none.
//
// To refresh them (a new device, a new Go release, a new kernel): build the
// image, run those workloads with HYPERROOT_SECCOMP=log, and add each
// logged call to the role that made it, here, saying who makes it. A call
// that shows up only in Log mode and only on an error path still belongs
// here: in Kill mode the error would become a kill.
//
// The filters are checked in order, and most calls a running VMM makes are
// KVM_RUN and the futex, read and write calls around it: those come first.

// processPolicy is the allowlist of every thread of a running VMM.
func processPolicy(deny bpf.Action, o Options) bpf.Policy {
	return bpf.Policy{DefaultAction: deny, Syscalls: []bpf.SyscallGroup{
		{Action: bpf.ActionAllow, NamesWithCondtions: kvmRequests(o)},
		{Action: bpf.ActionAllow, Names: []string{
			// The Go runtime on any thread: parking and waking threads,
			// the network poller (eventfds, sockets, timers), scheduling,
			// signals (preemption by SIGURG through tgkill, SIGUSR1 for
			// dumps, SIGTERM), heap and stacks, the clock where the vDSO
			// is not used, and a syscall restarted after a signal.
			"futex", "read", "write", "epoll_pwait", "nanosleep", "sched_yield",
			"getpid", "gettid", "tgkill", "rt_sigreturn", "rt_sigprocmask",
			"rt_sigaction", "sigaltstack", "munmap", "madvise", "clock_gettime",
			"restart_syscall", "getrandom", "exit", "exit_group",
			// Disks: io_uring submissions, the thread pool's positional
			// I/O, inline service of cached requests (RWF_NOWAIT), FLUSH,
			// DISCARD and WRITE_ZEROES.
			"io_uring_enter", "preadv", "pwritev", "preadv2", "pwritev2",
			"fdatasync", "fallocate",
			// Kicks, interrupts and devices started or reset by the guest
			// (eventfds, the kick loop's epoll), and vhost-user: messages
			// with descriptors, the watcher's ppoll, and reconnecting to a
			// restarted switch (socket below, connect, and the address
			// and error queries of net.DialUnix). The kick loop waits
			// with epoll_pwait2 while a device polls its ring
			// (virtio-blk's interrupt holdoff): a timeout in ns.
			"epoll_pwait2", "eventfd2", "epoll_create1", "epoll_ctl", "close", "fcntl",
			"sendmsg", "recvmsg", "ppoll", "connect", "getsockopt",
			"getsockname", "getpeername",
			// A passed-through device's registers and configuration
			// space, reached through its VFIO regions (vmm/vfio).
			"pread64", "pwrite64",
		}, NamesWithCondtions: []bpf.NameWithConditions{
			// A passed-through device's MSI-X enabled or disabled by its
			// guest, and the device reset as the machine closes.
			{Name: "ioctl", Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: vfio.IoctlSetIRQs}}},
			{Name: "ioctl", Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: vfio.IoctlReset}}},
			// Never executable memory: the Go runtime maps none.
			{Name: "mmap", Conditions: bpf.ArgumentConditions{{Argument: 2, Operation: bpf.BitsNotSet, Value: unix.PROT_EXEC}}},
			// New threads of the runtime, never a new process.
			{Name: "clone", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.BitsSet, Value: unix.CLONE_THREAD}}},
			// vhost-user sockets only.
			{Name: "socket", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.Equal, Value: unix.AF_UNIX}}},
			// A disk's io_uring backend closing (the VMM's end): the
			// eventfd registered at set-up is unregistered
			// (IORING_UNREGISTER_EVENTFD, internal/uring). Found when
			// TestDiskWriteVerify's VMM was killed at its exit.
			{Name: "io_uring_register", Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: ioringUnregisterEventfd}}},
			// A vCPU thread as it starts, before its own filter: named
			// (vmm/machine, PR_SET_NAME) and pinned to its host CPU
			// (--pin-vcpus, init/pin.go: itself only). Found when
			// TestSeccompKillInAppliance's VMMs were killed for prctl.
			{Name: "prctl", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.Equal, Value: unix.PR_SET_NAME}}},
			// Each device's kick loop as it starts, on a thread of its
			// own (vmm/virtio/pci): its timed waits for a device's poll
			// to the microsecond.
			{Name: "prctl", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.Equal, Value: unix.PR_SET_TIMERSLACK}}},
			{Name: "sched_setaffinity", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.Equal, Value: 0}}},
			// Each vCPU thread loads its own filter on top of this one.
			{Name: "seccomp", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.Equal, Value: unix.SECCOMP_SET_MODE_FILTER}}},
		}},
	}}
}

// vcpuPolicy is the allowlist of a vCPU thread, on top of processPolicy.
func vcpuPolicy(deny bpf.Action, o Options) bpf.Policy {
	return bpf.Policy{DefaultAction: deny, Syscalls: []bpf.SyscallGroup{
		{Action: bpf.ActionAllow, NamesWithCondtions: kvmRequests(o)},
		{Action: bpf.ActionAllow, Names: []string{
			// The Go runtime on a locked thread: parked while its
			// goroutine waits, woken, preempted and signalled, its stack
			// grown, assisting the collector, and at last exiting (its
			// signal mask and stack undone first).
			"futex", "read", "write", "nanosleep", "sched_yield", "getpid",
			"gettid", "tgkill", "rt_sigreturn", "rt_sigprocmask", "sigaltstack",
			"munmap", "madvise", "clock_gettime", "restart_syscall", "exit",
			"exit_group",
			// The devices whose registers the guest writes, on this
			// thread: a virtio device started at DRIVER_OK gets eventfds
			// (ioeventfds, irqfds, the kick loop's epoll) and, for a
			// vhost-user NIC, hands its rings over to the switch in
			// messages with descriptors; a reset closes them.
			"eventfd2", "epoll_create1", "epoll_ctl", "close", "sendmsg", "recvmsg",
			// A passed-through device: its registers (VFIO regions)
			// and its MSI-X, which the guest enables on this thread.
			"pread64", "pwrite64",
		}, NamesWithCondtions: []bpf.NameWithConditions{
			{Name: "ioctl", Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: vfio.IoctlSetIRQs}}},
			{Name: "mmap", Conditions: bpf.ArgumentConditions{{Argument: 2, Operation: bpf.BitsNotSet, Value: unix.PROT_EXEC}}},
			// A collection this thread starts (allocating) or finishes
			// (assisting) ends with the runtime restarting the world,
			// which polls the network poller without waiting (timeout
			// 0): found by a 1024-vCPU guest, whose vCPU threads
			// allocate enough at start to trigger one. A waiting poll
			// never happens on a locked thread.
			{Name: "epoll_pwait", Conditions: bpf.ArgumentConditions{{Argument: 3, Operation: bpf.Equal, Value: 0}}},
		}},
	}}
}

// ioringUnregisterEventfd is io_uring_register's IORING_UNREGISTER_EVENTFD.
const ioringUnregisterEventfd = 5

// kvmRequests lets ioctl through for the KVM requests a running machine
// issues (kvm.RunningVCPURequests and kvm.RunningVMRequests, and
// kvm.PassthroughVMRequests for a machine with passed-through devices),
// KVM_RUN first; no other request, on any descriptor.
func kvmRequests(o Options) []bpf.NameWithConditions {
	var out []bpf.NameWithConditions
	reqs := append(kvm.RunningVCPURequests(), kvm.RunningVMRequests()...)
	if o.Passthrough {
		reqs = append(reqs, kvm.PassthroughVMRequests()...)
	}
	for _, req := range reqs {
		out = append(out, bpf.NameWithConditions{Name: "ioctl",
			Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: uint64(req)}}})
	}
	return out
}
