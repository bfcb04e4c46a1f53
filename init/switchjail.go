package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/procfd"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// The switch parses what every VMM, and through them every guest, sends
// it, so it is confined like a VMM once set up: the supervisor starts it in
// namespaces of its own (switchNamespaces) with no environment, and
// switchJail.confine, once the tap, the uplinks' sockets, the DHCP servers
// and every VM port's listener are open, jails it (internal/jail) as a uid
// of its own (config.IDRange.SwitchID) with no capability, its directory
// the one thing of the filesystem it keeps (writable: it rewrites its lease
// and IPv6 claim files there), and loads its seccomp filter
// (vmm/seccomp.Switch). No capability is kept, not even CAP_NET_RAW with
// an uplink: the kernel checks it when an AF_PACKET socket is made
// (packet_create), not when one sends or receives, and the uplinks' sockets
// are made before the jail. Nor CAP_CHOWN: the sockets and directories the
// VMMs connect through are made and given to the VMs' uids before the jail
// too, by each start of the switch (a restart is a new process, root again
// until it jails itself), and a running switch makes none.

// switchJail is how `hyperroot switch` confines itself (--jail, --seccomp).
type switchJail struct {
	id       int          // uid and gid; 0: no jail
	dir      string       // the switch's directory, absolute
	mode     seccomp.Mode // its filter's
	captures bool         // --capture files are written (no file size bound)
	logf     func(string, ...any)

	hostNet bool // set by prepare
	ports   int
}

// Bounds of the jailed switch. Files: each VM port holds its listener, its
// VMM's connection, up to vhostuser.MaxRegions memory files and each
// queue's kick, call and error eventfds; 32 is room for that with margin.
// Leases and IPv6 claims stay far below the file size bound; a port whose
// guest makes the claims file grow that far loses its claims' persistence,
// not the appliance's memory (the directory is tmpfs).
const (
	switchFilesPerPort = 32
	switchFileSize     = 64 << 20
)

// switchNeedsHostNetwork says whether the switch for cfg works on the
// host's network interfaces (the host port's tap, uplinks), which exist in
// the network namespace of the process that opens them: it then stays in
// the host's namespace. Otherwise it gets one of its own, empty: pathname
// Unix sockets, all it uses, work across network namespaces.
func switchNeedsHostNetwork(cfg *config.Config) bool {
	if cfg == nil {
		return false
	}
	if cfg.Host != nil {
		return true
	}
	for _, n := range cfg.Networks {
		if n.Uplink != "" {
			return true
		}
	}
	return false
}

// prepare readies the process and its directory for the jail, before
// anything is built: see prepareSwitchDir, and procfd.Open, which must
// happen while the process is root and before a VMM can send a descriptor
// to check (the first connections are served once the jail holds, but
// procfd must not depend on that).
func (j *switchJail) prepare(cfg *config.Config) error {
	j.hostNet = switchNeedsHostNetwork(cfg)
	for _, vm := range cfg.VMs {
		j.ports += len(vm.NICs)
	}
	if j.id == 0 {
		return os.MkdirAll(j.dir, 0o700)
	}
	if err := procfd.Open(); err != nil {
		return err
	}
	return prepareSwitchDir(j.dir, j.id, cfg, j.logf)
}

// confine jails the process (with --jail) and loads its seccomp filter; it
// is startSwitchExt's last step before serving.
func (j *switchJail) confine() error {
	if j.id != 0 {
		// Files the set-up just wrote as root (the claims file
		// rewritten, leases renamed into place) become the jail's.
		if err := prepareSwitchDir(j.dir, j.id, nil, j.logf); err != nil {
			return err
		}
		c := jail.Config{UID: j.id, GID: j.id, Writable: []string{j.dir}, HostNetwork: j.hostNet,
			Files: jail.DefaultFiles + switchFilesPerPort*uint64(j.ports+maxAddedPorts), FileSize: switchFileSize}
		if j.captures {
			c.FileSize = unix.RLIM_INFINITY // pcap files grow as long as the switch runs
		}
		rep, err := jail.Enter(c)
		if err != nil {
			return err
		}
		netns := "own network namespace"
		if j.hostNet {
			netns = "host network namespace"
		}
		j.logf("jailed uid=%d (%s, %s)", j.id, rep, netns)
	}
	if j.mode != seccomp.Off {
		// A binary that links cgo has C threads (glibc's) whose calls
		// the filter does not allow: say so now rather than die of the
		// first one.
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_GETPID, 0, 0, 0); errno == syscall.ENOTSUP {
			return errors.New("seccomp: this binary links cgo, whose threads make calls the switch's filter refuses: " +
				"build it with CGO_ENABLED=0 (as the appliance's is) or run it with --seccomp off")
		}
	}
	if err := seccomp.Switch(j.mode); err != nil {
		return err
	}
	if testHookSwitchConfined != nil {
		testHookSwitchConfined()
	}
	return nil
}

// testHookSwitchConfined, when not nil, runs right after the switch's
// filter is loaded. Only init's tests set it (switchjail_test.go), to
// make a call the filter refuses, as a peer that took the switch over
// would; no command line can reach it.
var testHookSwitchConfined func()

// prepareSwitchDir readies dir, as root, for a switch that will jail itself
// as id: made if missing, refused if it is not a directory, its own and
// 0700. What lies at its top is what a previous switch left, jailed as id
// and possibly taken over by a peer; this start, root until it jails
// itself, must not be led anywhere by it. Regular files (leases, claims)
// become id's; a directory keeps its owner (a VM's socket directory, which
// vmSocketDir checks and owns); anything else (a symbolic link, a pipe, a
// socket other than its control socket, a device: nothing a switch makes there, and what its Landlock
// rules and seccomp filter forbid) is removed and reported, so that no
// later open follows or blocks on it. With cfg, a file where a VM's socket
// directory belongs is removed too (vmSocketDir would refuse it, and the
// switch would never start again). Nothing below the top is touched: the
// VMs' directories are theirs, 0700, and a jailed switch cannot enter them.
func prepareSwitchDir(dir string, id int, cfg *config.Config, logf func(string, ...any)) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("switch directory %s is not a directory", dir)
	}
	if err := os.Lchown(dir, id, id); err != nil {
		return fmt.Errorf("switch directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("switch directory: %w", err)
	}
	vmDirs := map[string]bool{}
	if cfg != nil {
		for _, vm := range cfg.VMs {
			vmDirs[filepath.Base(vmmcli.NICDir(dir, vm.Name))] = true
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("switch directory: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch t := e.Type(); {
		case t.IsDir():
		case t&fs.ModeSocket != 0 && e.Name() == controlSocket:
			// This start's own, made as root before it jails itself;
			// one a previous switch left is replaced by the next
			// (listenControl).
		case t.IsRegular() && !vmDirs[e.Name()]:
			if err := os.Lchown(p, id, id); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("switch directory: %w", err)
			}
		default:
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("switch directory: remove %s: %w", p, err)
			}
			logf("removed %s (%s) from the switch's directory: not something a switch leaves there", e.Name(), t)
		}
	}
	return nil
}
