// Package jail confines a process that runs untrusted work, the VMM of one
// VM, to what it needs once it is set up: a guest that breaks out of the
// emulated devices into the VMM must find itself in a process that can no
// longer open a file, reach the network, see another process, gain a
// privilege or touch another VM.
//
// A jail is made in two halves. The parent starts the process in new mount,
// PID, IPC, UTS and network namespaces (Attr; AttrHostNetwork keeps the
// parent's network namespace, for the switch, whose tap and uplinks are
// interfaces of the host's), with an empty environment and no descriptors
// but the ones it needs. The process then opens and maps
// everything it will use (KVM, guest RAM, disks, its vhost-user sockets) and
// calls Enter on itself before the guest runs: Enter replaces its root with
// an empty read-only tmpfs holding only the directories it must still reach
// by path (its NICs' socket directories, to reconnect when the switch
// restarts), lowers its resource limits, applies Landlock where the kernel
// has it, and gives up root for a uid and gid of its own with no
// capabilities and no_new_privs, on every thread.
package jail

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Cloneflags are the namespaces a jailed process starts in: no mount, IPC,
// host name, network (a pathname Unix socket still works across network
// namespaces; abstract ones do not) or process the host sees.
const Cloneflags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWNET

// Attr are the process attributes a jailed process is started with
// (exec.Cmd.SysProcAttr): the namespaces, a session of its own and
// SIGKILL when its parent dies. Start it with an empty, non-nil
// environment and only the descriptors it needs in ExtraFiles.
//
// In a PID namespace of its own the process is that namespace's init, and
// the kernel drops every signal its parent sends it for which it has no
// handler, SIGKILL and SIGSTOP excepted; a signal it raises on itself with
// the default action is dropped too. A Go program therefore cannot "die of"
// SIGTERM there: it must handle the signals it is sent (signal.Notify) and
// exit.
func Attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: Cloneflags}
}

// AttrHostNetwork is Attr without the network namespace: the process stays
// in its parent's, for a jail whose work is on the host's network
// interfaces (the switch's tap device and AF_PACKET uplinks, which exist
// in the namespace of the process that opens them, and must be the
// host's). Enter it with Config.HostNetwork set. What the process may do
// there is then bounded by its lack of capabilities, Landlock (no TCP, no
// abstract Unix socket of the host) and its seccomp filter.
func AttrHostNetwork() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: Cloneflags &^ unix.CLONE_NEWNET}
}

// CloseOnExec marks every descriptor of the calling process from 3 up
// close-on-exec, so that a child it starts gets only its standard streams
// and the files it is given (exec.Cmd.ExtraFiles, which are duplicated for
// the child without the mark). Go opens its own files close-on-exec, but a
// descriptor the process inherited without the mark would otherwise leak
// into every child.
func CloseOnExec() error {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("mark descriptors close-on-exec: %w", err)
	}
	return nil
}

// Config says what a process keeps in its jail. The zero value of each
// limit is its default.
type Config struct {
	// UID and GID are the identity the process takes, neither 0: one of
	// its own, shared with no other process, so that nothing else it
	// could reach (another VM's sockets, processes) is its.
	UID, GID int
	// Binds are directories (absolute paths) that stay reachable in the
	// jail at the same path, read-only, such as the directory of a NIC's
	// vhost-user socket. Nothing else of the host's filesystem does.
	Binds []string
	// Writable are directories (absolute paths, distinct from Binds)
	// that stay reachable at the same path, read-write: the process may
	// read, write, truncate, create, rename (within one directory) and
	// remove regular files in them, list them, and nothing else there:
	// no directory, link, device, pipe or socket is made, and nothing
	// runs from them (where the kernel has Landlock; the mount is
	// nosuid, nodev and noexec regardless). Its own uid must be allowed
	// by the files' owners and modes to do so: Enter changes no owner.
	Writable []string
	// HostNetwork says the process was started with AttrHostNetwork, in
	// its parent's network namespace, and must not insist on one of its
	// own.
	HostNetwork bool
	// Files bounds the descriptors (RLIMIT_NOFILE); 0 is DefaultFiles.
	Files uint64
	// Threads bounds the threads of the jail's uid (RLIMIT_NPROC; uid is
	// the jail's own, so this is the process's); 0 is DefaultThreads.
	Threads uint64
	// FileSize bounds how far a write may extend or reach into a regular
	// file (RLIMIT_FSIZE): the size of the largest disk the process
	// writes. 0 means no regular file can be written at all.
	FileSize uint64
	// LockedMemory bounds mlock'ed memory (RLIMIT_MEMLOCK); 0 means none:
	// a VMM locks nothing once set up (its io_uring rings exist by then).
	LockedMemory uint64
}

// Defaults of Config's limits.
const (
	// DefaultFiles leaves room for what a VMM opens after set-up: the
	// eventfds a guest's programming of MSI-X vectors and queue
	// notifications creates (a few per queue) and a reconnection's socket.
	DefaultFiles = 4096
	// DefaultThreads is far above what a VMM runs (a thread per vCPU, the
	// Go runtime's, a disk thread pool's, io_uring's workers) and still
	// stops a runaway: a Go program dies when it cannot make a thread.
	DefaultThreads = 4096
)

// Report says what Enter could apply where it depends on the kernel.
type Report struct {
	// Landlock is the Landlock ABI version enforced, 0 when the kernel
	// has no Landlock (the rest of the jail still holds).
	Landlock int
	// PivotRoot is false when the old root could not be pivoted away
	// because it is the initramfs (rootfs, which cannot be unmounted):
	// the new root is then moved over it and chrooted into, the host's
	// mounts detached first, and the initramfs's own files lie hidden
	// under the new root, out of reach of a process without
	// CAP_SYS_CHROOT or a directory descriptor, which it has neither.
	PivotRoot bool
}

func (r Report) String() string {
	ll := "unavailable"
	if r.Landlock > 0 {
		ll = fmt.Sprintf("abi %d", r.Landlock)
	}
	root := "pivot_root"
	if !r.PivotRoot {
		root = "moved over the initramfs"
	}
	return fmt.Sprintf("root %s, landlock %s", root, ll)
}

// Enter jails the calling process, which must run as root in the
// namespaces of Attr, on all of its threads, and must not link cgo (see
// CloseOnExec for the parent's side). It returns only once every
// step held, or with the first error (the process must then not go on: it
// is half jailed).
func Enter(c Config) (Report, error) {
	var r Report
	if c.UID <= 0 || c.GID <= 0 {
		return r, fmt.Errorf("jail: uid %d gid %d: want an unprivileged uid and gid", c.UID, c.GID)
	}
	// Refused before anything changed, rather than half way.
	if err := allThreadsPrctl(unix.PR_SET_KEEPCAPS, 0); err != nil {
		return r, err
	}
	if err := checkNamespaces(c.HostNetwork); err != nil {
		return r, err
	}
	var err error
	if r.PivotRoot, err = newRoot(c.Binds, c.Writable); err != nil {
		return r, err
	}
	if err := setLimits(c); err != nil {
		return r, err
	}
	if err := allThreadsPrctl(unix.PR_SET_NO_NEW_PRIVS, 1); err != nil {
		return r, fmt.Errorf("jail: no_new_privs: %w", err)
	}
	if r.Landlock, err = restrictLandlock(c.Binds, c.Writable); err != nil {
		return r, err
	}
	if err := dropPrivileges(c.UID, c.GID); err != nil {
		return r, err
	}
	if err := Check(c.UID, c.GID); err != nil {
		return r, err
	}
	return r, nil
}

// Check verifies, on the calling thread, what Enter left: the uid and gid
// (real, effective, saved), no supplementary group, no capability in any
// set, no_new_privs.
func Check(uid, gid int) error {
	ru, eu, su := unix.Getresuid()
	rg, eg, sg := unix.Getresgid()
	if ru != uid || eu != uid || su != uid || rg != gid || eg != gid || sg != gid {
		return fmt.Errorf("jail: uids %d/%d/%d gids %d/%d/%d, want %d and %d", ru, eu, su, rg, eg, sg, uid, gid)
	}
	if n, err := unix.Getgroups(); err != nil || len(n) > 0 {
		return fmt.Errorf("jail: supplementary groups %v (%v), want none", n, err)
	}
	caps, err := Capabilities()
	if err != nil {
		return err
	}
	if caps != (CapSets{}) {
		return fmt.Errorf("jail: capabilities left: %+v", caps)
	}
	if nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || nnp != 1 {
		return fmt.Errorf("jail: no_new_privs is %d (%v), want 1", nnp, err)
	}
	return nil
}

// CapSets are the calling thread's capability sets as bit masks.
type CapSets struct {
	Effective, Permitted, Inheritable, Bounding, Ambient uint64
}

// Capabilities reads the calling thread's capability sets.
func Capabilities() (CapSets, error) {
	var s CapSets
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return s, fmt.Errorf("jail: capget: %w", err)
	}
	s.Effective = uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	s.Permitted = uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	s.Inheritable = uint64(data[0].Inheritable) | uint64(data[1].Inheritable)<<32
	for c := 0; c < 64; c++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the kernel's last capability
		}
		if err != nil {
			return s, fmt.Errorf("jail: read bounding set: %w", err)
		}
		if in == 1 {
			s.Bounding |= 1 << c
		}
		amb, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(c), 0, 0)
		if err == nil && amb == 1 {
			s.Ambient |= 1 << c
		}
	}
	return s, nil
}
