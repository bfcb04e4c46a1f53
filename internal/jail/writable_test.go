package jail_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

// writableChildArg starts the test binary as the switch-shaped jailed
// process of TestJailWritableHostNetwork.
const writableChildArg = "jail-test-writable-child"

// switchID is the switch's identity in the test.
const switchID = 3_000_789

// writableProbes are what the switch-shaped child tries in its data
// directory and in the host's network namespace.
func writableProbes(abi int) []probe {
	landlockOr := func(since int, otherwise unix.Errno) unix.Errno {
		if abi >= since {
			return unix.EACCES
		}
		return otherwise
	}
	scoped := unix.Errno(0)
	if abi >= 6 {
		scoped = unix.EPERM
	}
	return []probe{
		{"write a file atomically (create, write, fsync, rename, fsync dir)", 0, "Writable grants regular files"},
		{"append to the file", 0, "Writable grants writing"},
		{"truncate the file", 0, "Writable grants truncation"},
		{"remove the file", 0, "Writable grants removal"},
		{"list the directory", 0, "Writable grants reading it"},
		{"symlink in the directory", landlockOr(1, 0), "Landlock: no MAKE_SYM"},
		{"mkfifo in the directory", landlockOr(1, 0), "Landlock: no MAKE_FIFO"},
		{"mkdir in the directory", landlockOr(1, 0), "Landlock: no MAKE_DIR"},
		{"bind a socket in the directory", landlockOr(1, 0), "Landlock: no MAKE_SOCK"},
		{"enter a VM's directory", unix.EACCES, "DAC: the VM's, 0700"},
		{"open /etc/passwd", unix.ENOENT, "the root is an empty tmpfs"},
		{"mkdir /x", unix.EROFS, "the root is read-only"},
		{"socket AF_PACKET", unix.EPERM, "no CAP_NET_RAW"},
		{"tcp connect to the test's listener", landlockOr(4, 0), "Landlock (ABI 4+) denies TCP connect in the host's network namespace"},
		{"connect the test's abstract socket", scoped, "Landlock (ABI 6+) scopes abstract sockets to the jail"},
		{"netlink set lo up", unix.EPERM, "no CAP_NET_ADMIN"},
		{"chown a file to root", unix.EPERM, "no CAP_CHOWN"},
	}
}

// TestJailWritableHostNetwork jails a process the way the switch is: in
// the parent's network namespace (AttrHostNetwork), with a data directory
// of its own (Writable) holding a VM's socket directory it must not enter.
func TestJailWritableHostNetwork(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (namespaces, pivot_root, setuid): run the test as root")
	abi, _ := ll.LandlockGetABIVersion()
	dir := filepath.Join(t.TempDir(), "switch")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, switchID, switchID); err != nil {
		t.Fatal(err)
	}
	listen(t, filepath.Join(dir, "vm-a"), vmID)
	listenAbstract(t)
	tcp, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()

	bin := testenv.JailableTest(t)
	pid, r := startJailedChild(t, child.Spec{
		Path: bin, Args: []string{writableChildArg, strconv.Itoa(switchID), dir, tcp.Addr().String(),
			"@" + abstractName(os.Getpid())},
		Env: []string{}, Stdin: true, Attr: jail.AttrHostNetwork(),
	})
	for ns, want := range map[string]bool{"mnt": false, "pid": false, "ipc": false, "uts": false, "net": true} {
		a, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		b, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 != nil || err2 != nil || (a == b) != want {
			t.Errorf("namespace %s: child %s, test %s (%v, %v): want shared=%v", ns, a, b, err1, err2, want)
		}
	}
	for _, pr := range writableProbes(abi) {
		got, ok := r.Probes[pr.name]
		if !ok {
			t.Errorf("%s: not tried", pr.name)
			continue
		}
		want := ""
		if pr.want != 0 {
			want = unix.ErrnoName(pr.want)
		}
		if got != want {
			t.Errorf("%s: got %q, want %q (%s)", pr.name, orOK(got), orOK(want), pr.why)
		}
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == dir {
			found = true
			if opts := strings.Split(f[5], ","); opts[0] != "rw" {
				t.Errorf("the writable directory is mounted %s, want rw", f[5])
			}
		}
	}
	if !found {
		t.Errorf("the writable directory is not mounted in the jail:\n%s", mi)
	}
	// Nothing the child left may be a trap for the next root process.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type()&(os.ModeSymlink|os.ModeNamedPipe|os.ModeSocket|os.ModeDevice) != 0 && abi >= 1 {
			t.Errorf("the child left %s (%s) in its directory", e.Name(), e.Type())
		}
	}
}

// writableChild is the switch-shaped jailed process: args are its id, its
// data directory, a TCP address and an abstract socket name of the test.
func writableChild(args []string) int {
	r := report{Probes: map[string]string{}}
	defer func() {
		b, _ := json.Marshal(r)
		os.Stdout.Write(append(b, '\n'))
		bufio.NewReader(os.Stdin).ReadString('\n')
	}()
	if len(args) != 4 {
		r.EnterErr = fmt.Sprintf("want 4 arguments, got %q", args)
		return 1
	}
	id, _ := strconv.Atoi(args[0])
	dir, tcp, abstract := args[1], args[2], args[3]
	rep, err := jail.Enter(jail.Config{UID: id, GID: id, Writable: []string{dir}, HostNetwork: true, FileSize: 1 << 20})
	if err != nil {
		r.EnterErr = err.Error()
		return 1
	}
	r.Jail = rep.String()
	file := filepath.Join(dir, "leases")
	try := map[string]func() error{
		"write a file atomically (create, write, fsync, rename, fsync dir)": func() error {
			f, err := os.CreateTemp(dir, ".leases.tmp-*")
			if err != nil {
				return err
			}
			defer os.Remove(f.Name())
			if _, err := f.WriteString("{}\n"); err != nil {
				return err
			}
			if err := f.Sync(); err != nil {
				return err
			}
			f.Close()
			if err := os.Rename(f.Name(), file); err != nil {
				return err
			}
			d, err := os.Open(dir)
			if err != nil {
				return err
			}
			defer d.Close()
			return d.Sync()
		},
		"append to the file": func() error {
			f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString("more\n")
			return err
		},
		"truncate the file": func() error { return os.WriteFile(file, []byte("x"), 0o600) },
		"remove the file":   func() error { return os.Remove(file) },
		"list the directory": func() error {
			_, err := os.ReadDir(dir)
			return err
		},
		"symlink in the directory": func() error { return unix.Symlink("/etc/shadow", filepath.Join(dir, "claims6")) },
		"mkfifo in the directory":  func() error { return unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600) },
		"mkdir in the directory":   func() error { return unix.Mkdir(filepath.Join(dir, "d"), 0o700) },
		"bind a socket in the directory": func() error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(dir, "s.sock")})
		},
		"enter a VM's directory": func() error { return openClose(filepath.Join(dir, "vm-a"), unix.O_RDONLY|unix.O_DIRECTORY) },
		"open /etc/passwd":       func() error { return openClose("/etc/passwd", unix.O_RDONLY) },
		"mkdir /x":               func() error { return unix.Mkdir("/x", 0o755) },
		"socket AF_PACKET":       func() error { return socket(unix.AF_PACKET, unix.SOCK_RAW, 0) },
		"tcp connect to the test's listener": func() error {
			ap, err := net.ResolveTCPAddr("tcp4", tcp)
			if err != nil {
				return err
			}
			return connectInet(unix.SOCK_STREAM, [4]byte(ap.IP.To4()), ap.Port)
		},
		"connect the test's abstract socket": func() error { return connectUnix(abstract) },
		"netlink set lo up": func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			ifr, err := unix.NewIfreq("lo")
			if err != nil {
				return err
			}
			ifr.SetUint16(unix.IFF_UP)
			return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
		},
		"chown a file to root": func() error {
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				return err
			}
			defer os.Remove(file)
			return os.Lchown(file, 0, 0)
		},
	}
	for _, p := range writableProbes(0) {
		f := try[p.name]
		if f == nil {
			r.Probes[p.name] = "no such probe"
			continue
		}
		r.Probes[p.name] = errnoName(f())
	}
	return 0
}
