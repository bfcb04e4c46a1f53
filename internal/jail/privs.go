package jail

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Credentials, capabilities and no_new_privs belong to each thread, not to
// the process, and a Go program has many threads by the time it jails
// itself (a VMM's include its vCPUs'). Every change of them therefore goes
// through the Go runtime's AllThreadsSyscall, which makes the system call
// on all threads at once; threads made later copy the thread that makes
// them. The runtime refuses it in a program that links cgo, whose C
// threads it does not know: a jailed program is built with CGO_ENABLED=0
// (the appliance's binary is). Landlock's own all-threads call (psx) is
// the same call then.

// errCgo is the error of a jail in a program that links cgo.
var errCgo = errors.New("jail: this binary links cgo, whose threads the Go runtime cannot reach: build it with CGO_ENABLED=0")

func allThreads(nr, a1, a2, a3 uintptr) error {
	if _, _, errno := syscall.AllThreadsSyscall(nr, a1, a2, a3); errno != 0 {
		if errno == syscall.ENOTSUP {
			return errCgo
		}
		return errno
	}
	return nil
}

func allThreadsPrctl(option int, arg uintptr) error {
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, uintptr(option), arg, 0, 0, 0, 0); errno != 0 {
		if errno == syscall.ENOTSUP {
			return errCgo
		}
		return errno
	}
	return nil
}

// setLimits lowers the process's resource limits (shared by its threads).
func setLimits(c Config) error {
	files, threads := c.Files, c.Threads
	if files == 0 {
		files = DefaultFiles
	}
	if threads == 0 {
		threads = DefaultThreads
	}
	for _, l := range []struct {
		name     string
		resource int
		n        uint64
	}{
		{"nofile", unix.RLIMIT_NOFILE, files},
		{"nproc", unix.RLIMIT_NPROC, threads},
		{"fsize", unix.RLIMIT_FSIZE, c.FileSize},
		{"core", unix.RLIMIT_CORE, 0},
		{"memlock", unix.RLIMIT_MEMLOCK, c.LockedMemory},
	} {
		if err := unix.Setrlimit(l.resource, &unix.Rlimit{Cur: l.n, Max: l.n}); err != nil {
			return fmt.Errorf("jail: rlimit %s %d: %w", l.name, l.n, err)
		}
	}
	return nil
}

// restrictLandlock denies every filesystem access Landlock knows on this
// kernel (binds keep only connect(2) to their Unix sockets, writable
// directories what a data directory needs: see writableAccess), TCP and
// UDP (a jail's own network namespace has no interface anyway; in the
// host's, Landlock is what forbids them), abstract Unix sockets and
// signals to processes outside the jail. Where the kernel has no Landlock
// it does nothing and returns 0; otherwise the ABI version.
func restrictLandlock(binds, writable []string) (int, error) {
	abi, err := ll.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return 0, nil // not built in, or not enabled: best effort
	}
	var rules []landlock.Rule
	if len(binds) > 0 {
		rules = append(rules, landlock.PathAccess(ll.AccessFSResolveUnix, binds...))
	}
	if len(writable) > 0 {
		rules = append(rules, landlock.PathAccess(writableAccess, writable...))
	}
	if err := landlock.V11.BestEffort().Restrict(rules...); err != nil {
		return 0, fmt.Errorf("jail: landlock: %w", err)
	}
	return abi, nil
}

// writableAccess is what Config.Writable grants below its directories:
// regular files read, written, truncated, made, renamed within their
// directory and removed, the directories listed (and opened, to fsync a
// rename). Not granted, so that a process taken over cannot leave traps
// for whoever uses the directory after it (its own restart, as root, before
// it jails itself again): symbolic links, links and renames across
// directories (REFER), devices, pipes, sockets, directories made or
// removed, and execution.
const writableAccess = ll.AccessFSReadFile | ll.AccessFSWriteFile | ll.AccessFSTruncate |
	ll.AccessFSReadDir | ll.AccessFSMakeReg | ll.AccessFSRemoveFile

// dropPrivileges empties the bounding set (while CAP_SETPCAP still allows
// it) and the ambient set, then takes gid and uid with no supplementary
// groups, which clears the permitted and effective sets, and last empties
// the inheritable set, which a change of uid keeps.
func dropPrivileges(uid, gid int) error {
	for c := 0; c < 64; c++ {
		if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); errors.Is(err, unix.EINVAL) {
			break // past the kernel's last capability
		}
		if err := allThreadsPrctl(unix.PR_CAPBSET_DROP, uintptr(c)); err != nil {
			return fmt.Errorf("jail: drop capability %d from the bounding set: %w", c, err)
		}
	}
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("jail: clear ambient capabilities: %w", errno)
	}
	if err := allThreads(unix.SYS_SETGROUPS, 0, 0, 0); err != nil {
		return fmt.Errorf("jail: setgroups: %w", err)
	}
	if err := allThreads(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); err != nil {
		return fmt.Errorf("jail: setresgid %d: %w", gid, err)
	}
	if err := allThreads(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); err != nil {
		return fmt.Errorf("jail: setresuid %d: %w", uid, err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3} // pid 0: each thread itself
	var data [2]unix.CapUserData
	err := allThreads(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	if err != nil {
		return fmt.Errorf("jail: clear capabilities: %w", err)
	}
	return nil
}
