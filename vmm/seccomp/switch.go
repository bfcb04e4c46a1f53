package seccomp

import (
	"fmt"
	"runtime"

	bpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// The switch (`hyperroot switch`) gets a filter of its own, loaded the same
// way as a VMM's process filter and at the same point: the last thing it
// does to itself once set up (its tap, uplink sockets and vhost-user
// listeners open, its jail entered), before it serves any port. Its threads
// all do the same work (ports forward on whichever thread the runtime gives
// them), so there is one filter for all of them.
//
// How the list was derived: from what a serving switch does (the Go
// runtime's calls, as for the VMM; accepting a VMM's connection and serving
// vhost-user messages with descriptors, which it checks (fstat, seals,
// procfd's readlink) and maps; kicks and interrupts through eventfds; the tap
// and the uplinks' batched AF_PACKET I/O; the DHCP lease and IPv6 claim
// files it rewrites in its directory; its console lines; its exit on SIGTERM
// or when a port stalls), then proved by running it with the filter in Log
// mode under init's TestSwitchJailed (a jailed switch on the host serving
// two vhost-user peers, DHCP and a restart) and the end-to-end network tests
// (HYPERROOT_SECCOMP=log on the appliance's kernel command line: the
// supervisor relays "switch seccomp: logged syscall=<name>"). A normal run
// logs none.
//
// Not on it, so a switch taken over by a peer cannot: open a socket of any
// family (it needs none once its listeners and uplinks are open, and a
// jailed switch shares the host's network namespace when it has a tap or an
// uplink), issue any ioctl, exec, fork, ptrace, mount, make links, devices
// or directories, or map executable memory.

// Switch loads the switch's filter on every thread of the process, in mode
// m; like Process it sets no_new_privs and fixes GOMAXPROCS.
func Switch(m Mode) error {
	if m == Off {
		return nil
	}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	if err := load(switchPolicy(m.action()), true, true); err != nil {
		return fmt.Errorf("seccomp: switch filter: %w", err)
	}
	return nil
}

// SwitchPolicy is the switch's filter for mode m, for tests and readers.
func SwitchPolicy(m Mode) bpf.Policy { return switchPolicy(m.action()) }

// switchPolicy is the allowlist of every thread of a serving switch.
func switchPolicy(deny bpf.Action) bpf.Policy {
	return bpf.Policy{DefaultAction: deny, Syscalls: []bpf.SyscallGroup{
		{Action: bpf.ActionAllow, Names: []string{
			// The data path first: kick and call eventfds and the tap
			// (read, write), the uplinks' batches, the runtime's
			// parking and poller.
			"read", "write", "recvmmsg", "sendmmsg", "futex", "epoll_pwait",
			// The Go runtime on any thread, as for the VMM (filters.go).
			"nanosleep", "sched_yield", "getpid", "gettid", "tgkill",
			"rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
			"munmap", "madvise", "clock_gettime", "restart_syscall",
			"getrandom", "exit", "exit_group",
			// vhost-user: a VMM (re)connecting (accept4, and the local
			// address net's accept asks for), its messages with
			// descriptors, the descriptors checked (peerfd: fstat,
			// seals and non-blocking through fcntl, the eventfd's link
			// through procfd) and registered with the poller, and
			// closed with the connection.
			"accept4", "getsockname", "recvmsg", "sendmsg", "fstat",
			"readlinkat", "epoll_ctl", "close",
			// A VM port PID 1 adds live comes as its listening socket
			// (init/switchcontrol.go): net.FileListener asks its
			// peer (none) and, below, its type.
			"getpeername",
			// The DHCP leases and IPv6 claims in the switch's directory
			// (dhcp's writeAtomic, init/claims6.go): made, written,
			// synced (with the directory), renamed into place, the
			// temporary file removed; and the listeners' socket files
			// removed at exit. os.Rename looks at its target first
			// (newfstatat), to refuse renaming over a directory.
			// os.Remove tries rmdir (unlinkat with AT_REMOVEDIR) when
			// unlink fails, as it does for the lease writer's temporary
			// file once renamed: Landlock refuses the removal of a
			// directory, and the VMs' directories are not the switch's.
			"openat", "fsync", "renameat", "newfstatat", "unlinkat",
		}, NamesWithCondtions: []bpf.NameWithConditions{
			// Never executable memory: the Go runtime maps none, and a
			// peer's guest RAM is mapped read-write only.
			{Name: "mmap", Conditions: bpf.ArgumentConditions{{Argument: 2, Operation: bpf.BitsNotSet, Value: unix.PROT_EXEC}}},
			// New threads of the runtime, never a new process.
			{Name: "clone", Conditions: bpf.ArgumentConditions{{Argument: 0, Operation: bpf.BitsSet, Value: unix.CLONE_THREAD}}},
			// Descriptor flags (close-on-exec, non-blocking), a memory
			// file's seals, and the duplicate of a kick eventfd the
			// runtime's poller waits on (vswitch's transmit worker,
			// found by init's TestSwitchJailed); not F_SETOWN/F_SETSIG
			// (signals on I/O), locks or leases.
			fcntl(unix.F_GETFD), fcntl(unix.F_SETFD), fcntl(unix.F_GETFL), fcntl(unix.F_SETFL),
			fcntl(unix.F_GET_SEALS), fcntl(unix.F_DUPFD_CLOEXEC),
			{Name: "getsockopt", Conditions: bpf.ArgumentConditions{{Argument: 2, Operation: bpf.Equal, Value: unix.SO_TYPE}}},
		}},
	}}
}

func fcntl(cmd int) bpf.NameWithConditions {
	return bpf.NameWithConditions{Name: "fcntl", Conditions: bpf.ArgumentConditions{{Argument: 1, Operation: bpf.Equal, Value: uint64(cmd)}}}
}
