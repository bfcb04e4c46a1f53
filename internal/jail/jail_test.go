package jail_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

// The test binary is also the jailed process: started with childArg as
// its first argument, TestMain runs child instead of the tests. That is
// the VMM's path: jail.Attr and an empty environment from the parent,
// jail.Enter on itself.
const childArg = "jail-test-child"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		os.Exit(jailedChild(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == benchArg {
		os.Exit(benchChild(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == writableChildArg {
		os.Exit(writableChild(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// The jailed VM's identity and limits in the test.
const (
	vmID      = 3_000_123
	otherID   = 3_000_456
	fileLimit = 1 << 20 // RLIMIT_FSIZE: the size of the test's disk
	extraFDs  = 2       // the disk and a socket, as a VMM's disk and vhost-user connection
)

// report is what the child says about itself, as JSON on stdout.
type report struct {
	FDs      []string // "fd:kind" of each descriptor at start, but the Go runtime's own
	Env      []string
	Jail     string            // jail.Report
	Probes   map[string]string // probe name: "" (it worked) or the errno's name
	Threads  []string          // per thread: "" or what is wrong with its credentials
	Lo       string            // the network namespace's interfaces
	Statfs   int64             // the root's mount flags (ST_*)
	Getppid  int
	Getpid   int
	EnterErr string
}

// probe is one thing the jailed process tries, and what must stop it.
type probe struct {
	name string
	want unix.Errno // 0: it must work
	why  string     // the mechanism that answers with want
}

// probes are the attempts the child makes, given the host's Landlock ABI
// version; their order is the order they run in.
func probes(abi int, modules unix.Errno) []probe {
	landlockOr := func(since int, otherwise unix.Errno) unix.Errno {
		if abi >= since {
			return unix.EACCES
		}
		return otherwise
	}
	return []probe{
		{"open /etc/passwd", unix.ENOENT, "the root is an empty tmpfs (pivot_root)"},
		{"open /proc/self/status", unix.ENOENT, "no /proc in the root"},
		{"read dir /", landlockOr(1, 0), "Landlock handles READ_DIR with no rule (DAC would allow it)"},
		{"open /dev/kvm", unix.ENOENT, "no /dev in the root"},
		{"open /dev/mem", unix.ENOENT, "no /dev in the root"},
		{"mknod /kvm c 10 232", unix.EROFS, "the root is read-only (and CAP_MKNOD is gone)"},
		{"mkdir /x", unix.EROFS, "the root is read-only"},
		{"create file in own socket dir", unix.EROFS, "the bind mount is read-only"},
		{"socket AF_PACKET", unix.EPERM, "no CAP_NET_RAW"},
		{"socket AF_INET SOCK_RAW", unix.EPERM, "no CAP_NET_RAW"},
		{"tcp connect 10.0.2.2:80", landlockOr(4, unix.ENETUNREACH), "Landlock (ABI 4+) denies TCP connect; else no route in the empty network namespace"},
		{"tcp connect 127.0.0.1:80", landlockOr(4, unix.ENETUNREACH), "Landlock (ABI 4+); else lo is down"},
		{"udp send 10.0.2.3:53", landlockOr(10, unix.ENETUNREACH), "Landlock (ABI 10+) denies UDP; else no route"},
		{"netlink set lo up", unix.EPERM, "no CAP_NET_ADMIN"},
		{"connect own socket", 0, "its directory is bound into the root, owned by the VM's uid"},
		{"connect other VM's socket", unix.ENOENT, "only its own socket directory is in the root"},
		{"connect other VM's socket by the abstract name", unix.ECONNREFUSED, "abstract sockets are per network namespace"},
		{"exec /proc/self/exe", unix.ENOENT, "no /proc, no binary in the root"},
		{"kill the test process", unix.ESRCH, "the PID namespace shows no process outside"},
		{"ptrace attach the test process", unix.ESRCH, "the PID namespace shows no process outside"},
		{"mount tmpfs on /", unix.EPERM, "no CAP_SYS_ADMIN"},
		{"umount own socket dir", unix.EPERM, "no CAP_SYS_ADMIN"},
		{"chroot /", unix.EPERM, "no CAP_SYS_CHROOT"},
		{"init_module", modules, "no CAP_SYS_MODULE (ENOSYS: the kernel has no modules)"},
		{"capset CAP_SYS_ADMIN", unix.EPERM, "the permitted set is empty"},
		{"raise ambient CAP_SYS_ADMIN", unix.EPERM, "the permitted and inheritable sets are empty"},
		{"setuid 0", unix.EPERM, "no CAP_SETUID"},
		{"setgid 0", unix.EPERM, "no CAP_SETGID"},
		{"write the disk below the size limit", 0, "the disk's descriptor crossed exec"},
		{"write the disk past the size limit", unix.EFBIG, "RLIMIT_FSIZE"},
		{"sethostname", unix.EPERM, "no CAP_SYS_ADMIN"},
	}
}

// TestJail jails a child as a VMM is, and checks from inside and outside
// what it can reach: once with the usual umask, once with the umask PID 1
// had for a moment while it made its API socket (0177), which a VMM forked
// then inherited: the jail's directories must not depend on it (they did:
// 0600, and the VMM's reconnections to its socket were refused).
func TestJail(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (namespaces, pivot_root, setuid): run the test as root")
	for _, umask := range []int{0o022, 0o177} {
		t.Run(fmt.Sprintf("umask=%04o", umask), func(t *testing.T) { testJail(t, umask) })
	}
}

func testJail(t *testing.T, umask int) {
	abi, _ := ll.LandlockGetABIVersion()
	modules := unix.EPERM
	if _, err := os.Stat("/proc/modules"); err != nil {
		modules = unix.ENOSYS // a kernel without loadable modules
	}
	tmp := t.TempDir()
	// The switch's layout: a directory per VM, its uid's, 0700.
	sw := filepath.Join(tmp, "switch")
	own, other := filepath.Join(sw, "vm-a"), filepath.Join(sw, "vm-b")
	ownL := listen(t, own, vmID)
	listen(t, other, otherID)
	listenAbstract(t)

	disk, err := os.OpenFile(filepath.Join(tmp, "disk.img"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	if err := disk.Truncate(fileLimit); err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := os.NewFile(uintptr(sp[0]), "vhost-user")
	defer conn.Close()
	defer unix.Close(sp[1])
	// A descriptor that must not cross although it is not close-on-exec
	// (as go test's own inherited ones may not be): not in ExtraFiles.
	leak, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(leak)

	bin := testenv.JailableTest(t)
	old := unix.Umask(umask) // the child inherits it at the fork
	pid, r := startJailedChild(t, child.Spec{
		Path: bin, Args: []string{childArg, strconv.Itoa(vmID), own, filepath.Join(own, "0.sock"),
			filepath.Join(other, "0.sock"), strconv.Itoa(os.Getpid()), "@" + abstractName(os.Getpid())},
		Env: []string{}, ExtraFiles: []*os.File{disk, conn}, Stdin: true, Attr: jail.Attr(),
	})
	unix.Umask(old)

	t.Run("descriptors", func(t *testing.T) {
		want := []string{"0:fifo", "1:fifo", "2:fifo", "3:file", "4:socket"}
		if !slices.Equal(r.FDs, want) {
			t.Errorf("descriptors across exec: %v, want %v", r.FDs, want)
			fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			for _, fd := range fds {
				target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
				t.Logf("now: fd %s: %s", fd.Name(), target)
			}
		}
	})
	t.Run("environment", func(t *testing.T) {
		if len(r.Env) != 0 {
			t.Errorf("environment %q, want none", r.Env)
		}
	})
	t.Run("namespaces", func(t *testing.T) {
		if r.Getpid != 1 || r.Getppid != 0 {
			t.Errorf("pid %d ppid %d in the jail, want 1 and 0 (a PID namespace of its own)", r.Getpid, r.Getppid)
		}
		if r.Lo != "lo:down" {
			t.Errorf("interfaces %q, want only lo, down", r.Lo)
		}
		for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
			a, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
			b, err2 := os.Readlink("/proc/self/ns/" + ns)
			if err1 != nil || err2 != nil || a == b {
				t.Errorf("namespace %s: child %s, test %s (%v, %v)", ns, a, b, err1, err2)
			}
		}
	})
	t.Run("probes", func(t *testing.T) {
		for _, p := range probes(abi, modules) {
			got, ok := r.Probes[p.name]
			if !ok {
				t.Errorf("%s: not tried", p.name)
				continue
			}
			want := ""
			if p.want != 0 {
				want = unix.ErrnoName(p.want)
			}
			if got != want {
				t.Errorf("%s: got %q, want %q (%s)", p.name, orOK(got), orOK(want), p.why)
			}
		}
	})
	t.Run("threads", func(t *testing.T) {
		for i, s := range r.Threads {
			if s != "" {
				t.Errorf("thread %d: %s", i, s)
			}
		}
		if len(r.Threads) == 0 {
			t.Error("no thread reported")
		}
	})
	t.Run("status", func(t *testing.T) {
		// The kernel's view of each of its threads, from outside.
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		if len(tasks) < 4 {
			t.Errorf("%d threads, want the main one and 3 parked before the jail at least", len(tasks))
		}
		id := strconv.Itoa(vmID)
		for _, task := range tasks {
			st := status(t, fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
			for k, want := range map[string]string{
				"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
				"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1",
				"Uid": strings.Repeat(id+"\t", 3) + id, "Gid": strings.Repeat(id+"\t", 3) + id, "Groups": "",
			} {
				if st[k] != want {
					t.Errorf("task %s: %s %q, want %q", task.Name(), k, st[k], want)
				}
			}
		}
	})
	t.Run("limits", func(t *testing.T) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{
			"Max open files": strconv.Itoa(jail.DefaultFiles), "Max processes": strconv.Itoa(jail.DefaultThreads),
			"Max file size": strconv.Itoa(fileLimit), "Max core file size": "0", "Max locked memory": "0",
		} {
			if got := limit(string(b), name); got != want+" "+want {
				t.Errorf("%s: %q, want %s (soft and hard)", name, got, want)
			}
		}
	})
	t.Run("root", func(t *testing.T) {
		if r.Statfs&unix.ST_RDONLY == 0 || r.Statfs&unix.ST_NOEXEC == 0 || r.Statfs&unix.ST_NOSUID == 0 {
			t.Errorf("root mount flags %#x, want read-only, noexec, nosuid", r.Statfs)
		}
		// Its mounts, and every name under its root, seen from outside.
		mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err != nil {
			t.Fatal(err)
		}
		var mounts []string
		for _, l := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
			f := strings.Fields(l)
			sep := slices.Index(f, "-")
			m := f[4] + " " + strings.Split(f[5], ",")[0]
			if f[4] == "/" {
				m += " " + f[sep+1]
			}
			mounts = append(mounts, m)
		}
		sort.Strings(mounts)
		want := []string{"/ ro tmpfs", own + " ro"}
		if !slices.Equal(mounts, want) {
			t.Errorf("mounts %q, want %q", mounts, want)
		}
		root := fmt.Sprintf("/proc/%d/root", pid)
		var names []string
		filepath.WalkDir(root+"/", func(p string, d os.DirEntry, err error) error {
			if err == nil && p != root+"/" {
				names = append(names, strings.TrimPrefix(p, root))
			}
			return nil
		})
		var wantNames []string
		for p := own; p != "/"; p = filepath.Dir(p) {
			wantNames = append(wantNames, p)
		}
		wantNames = append(wantNames, filepath.Join(own, "0.sock"))
		sort.Strings(wantNames)
		sort.Strings(names)
		if !slices.Equal(names, wantNames) {
			t.Errorf("the jail's root holds %q, want %q", names, wantNames)
		}
	})
	t.Run("reconnect", func(t *testing.T) {
		// The child connected to its own socket after the jail: the
		// connection is waiting in the backlog.
		ownL.SetDeadline(time.Now().Add(time.Minute))
		c, err := ownL.AcceptUnix()
		if err != nil {
			t.Fatalf("the jailed child's connection to its own socket: %v", err)
		}
		c.Close()
	})
}

func orOK(s string) string {
	if s == "" {
		return "success"
	}
	return s
}

// listen makes dir (owned by id, 0700) and a socket 0.sock in it (owned by
// id, 0600), as the switch does for a VM.
func listen(t *testing.T, dir string, id int) *net.UnixListener {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "0.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for _, p := range []string{dir, filepath.Join(dir, "0.sock")} {
		if err := os.Chown(p, id, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "0.sock"), 0o600); err != nil {
		t.Fatal(err)
	}
	return l
}

func abstractName(pid int) string { return fmt.Sprintf("hyperroot-jail-test-%d", pid) }

// listenAbstract listens on an abstract socket in the test's network
// namespace, which the jailed child must not reach.
func listenAbstract(t *testing.T) *net.UnixListener {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: "@" + abstractName(os.Getpid()), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func status(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// limit is the soft and hard value of one line of /proc/<pid>/limits.
func limit(limits, name string) string {
	for _, l := range strings.Split(limits, "\n") {
		if rest, ok := strings.CutPrefix(l, name); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 {
				return f[0] + " " + f[1]
			}
		}
	}
	return ""
}

// jailedChild is the jailed process: args are the VM's id, its socket directory,
// its socket, the other VM's socket, the test's pid and an abstract socket
// name of the test's network namespace.
func jailedChild(args []string) int {
	r := report{FDs: openFDs(), Env: os.Environ(), Probes: map[string]string{}}
	defer func() {
		b, _ := json.Marshal(r)
		os.Stdout.Write(append(b, '\n'))
		bufio.NewReader(os.Stdin).ReadString('\n') // until the test has looked at it from outside
	}()
	if len(args) != 6 {
		r.EnterErr = fmt.Sprintf("want 6 arguments, got %q", args)
		return 1
	}
	id, _ := strconv.Atoi(args[0])
	ownDir, ownSock, otherSock, abstract := args[1], args[2], args[3], args[5]
	testPid, _ := strconv.Atoi(args[4])

	// Threads that exist before the jail, as a VMM's do: each must end
	// up with the same credentials as the one that called Enter.
	const parked = 3
	check := make(chan chan string)
	for range parked {
		go func() {
			runtime.LockOSThread() // a thread of its own for good
			reply := <-check
			reply <- threadState(id)
		}()
	}

	rep, err := jail.Enter(jail.Config{UID: id, GID: id, Binds: []string{ownDir}, FileSize: fileLimit})
	if err != nil {
		r.EnterErr = err.Error()
		return 1
	}
	r.Jail = rep.String()
	r.Getpid, r.Getppid = os.Getpid(), os.Getppid()
	r.Threads = append(r.Threads, threadState(id))
	for range parked {
		reply := make(chan string)
		check <- reply
		r.Threads = append(r.Threads, <-reply)
	}
	var st unix.Statfs_t
	if unix.Statfs("/", &st) == nil {
		r.Statfs = st.Flags
	}
	if ifs, err := net.Interfaces(); err == nil {
		var s []string
		for _, i := range ifs {
			up := "down"
			if i.Flags&net.FlagUp != 0 {
				up = "up"
			}
			s = append(s, i.Name+":"+up)
		}
		r.Lo = strings.Join(s, ",")
	} else {
		r.Lo = err.Error()
	}

	disk := os.NewFile(3, "disk")
	try := map[string]func() error{
		"open /etc/passwd":       func() error { return openClose("/etc/passwd", unix.O_RDONLY) },
		"open /proc/self/status": func() error { return openClose("/proc/self/status", unix.O_RDONLY) },
		"read dir /":             func() error { return openClose("/", unix.O_RDONLY|unix.O_DIRECTORY) },
		"open /dev/kvm":          func() error { return openClose("/dev/kvm", unix.O_RDWR) },
		"open /dev/mem":          func() error { return openClose("/dev/mem", unix.O_RDONLY) },
		"mknod /kvm c 10 232":    func() error { return unix.Mknod("/kvm", unix.S_IFCHR|0o600, int(unix.Mkdev(10, 232))) },
		"mkdir /x":               func() error { return unix.Mkdir("/x", 0o755) },
		"create file in own socket dir": func() error {
			return openClose(filepath.Join(ownDir, "x"), unix.O_RDWR|unix.O_CREAT)
		},
		"socket AF_PACKET":        func() error { return socket(unix.AF_PACKET, unix.SOCK_RAW, 0) },
		"socket AF_INET SOCK_RAW": func() error { return socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP) },
		"tcp connect 10.0.2.2:80": func() error {
			return connectInet(unix.SOCK_STREAM, [4]byte{10, 0, 2, 2}, 80)
		},
		"tcp connect 127.0.0.1:80": func() error {
			return connectInet(unix.SOCK_STREAM, [4]byte{127, 0, 0, 1}, 80)
		},
		"udp send 10.0.2.3:53": func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Addr: [4]byte{10, 0, 2, 3}, Port: 53})
		},
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
		"connect own socket":        func() error { return connectUnix(ownSock) },
		"connect other VM's socket": func() error { return connectUnix(otherSock) },
		"connect other VM's socket by the abstract name": func() error {
			return connectUnix(abstract)
		},
		"exec /proc/self/exe": func() error {
			return unix.Exec("/proc/self/exe", []string{"x"}, nil)
		},
		"kill the test process": func() error { return unix.Kill(testPid, 0) },
		"ptrace attach the test process": func() error {
			_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_ATTACH, uintptr(testPid), 0, 0, 0, 0)
			return errnoErr(e)
		},
		"mount tmpfs on /":      func() error { return unix.Mount("tmpfs", "/", "tmpfs", 0, "") },
		"umount own socket dir": func() error { return unix.Unmount(ownDir, unix.MNT_DETACH) },
		"chroot /":              func() error { return unix.Chroot("/") },
		"init_module": func() error {
			img := make([]byte, 64)
			_, _, e := unix.Syscall(unix.SYS_INIT_MODULE, uintptr(unsafe.Pointer(&img[0])), uintptr(len(img)),
				uintptr(unsafe.Pointer(&[]byte("\x00")[0])))
			return errnoErr(e)
		},
		"capset CAP_SYS_ADMIN": func() error {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			data := [2]unix.CapUserData{{Effective: 1 << unix.CAP_SYS_ADMIN, Permitted: 1 << unix.CAP_SYS_ADMIN}}
			return unix.Capset(&hdr, &data[0])
		},
		"raise ambient CAP_SYS_ADMIN": func() error {
			return unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, unix.CAP_SYS_ADMIN, 0, 0)
		},
		"setuid 0": func() error {
			_, _, e := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0)
			return errnoErr(e)
		},
		"setgid 0": func() error {
			_, _, e := unix.RawSyscall(unix.SYS_SETGID, 0, 0, 0)
			return errnoErr(e)
		},
		"write the disk below the size limit": func() error {
			_, err := unix.Pwrite(int(disk.Fd()), []byte("x"), fileLimit-1)
			return err
		},
		"write the disk past the size limit": func() error {
			_, err := unix.Pwrite(int(disk.Fd()), []byte("x"), fileLimit)
			return err
		},
		"sethostname": func() error { return unix.Sethostname([]byte("x")) },
	}
	for _, p := range probes(0, 0) {
		f := try[p.name]
		if f == nil {
			r.Probes[p.name] = "no such probe"
			continue
		}
		r.Probes[p.name] = errnoName(f())
	}
	return 0
}

// threadState checks the calling thread's credentials (jail.Check).
func threadState(id int) string {
	if err := jail.Check(id, id); err != nil {
		return err.Error()
	}
	return ""
}

// openFDs lists the open descriptors and their kinds, without /proc.
func openFDs() []string {
	var fds []string
	for fd := 0; fd < 1024; fd++ {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			continue
		}
		kind := "other"
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFIFO:
			kind = "fifo"
		case unix.S_IFREG:
			kind = "file"
			// The Go runtime (1.25+) opens its cgroup's CPU limit files
			// at start and keeps them, to follow the limit.
			var fs unix.Statfs_t
			if unix.Fstatfs(fd, &fs) == nil && (fs.Type == unix.CGROUP_SUPER_MAGIC || fs.Type == unix.CGROUP2_SUPER_MAGIC) {
				continue
			}
		case unix.S_IFSOCK:
			kind = "socket"
		case unix.S_IFCHR:
			kind = "chardev"
		case unix.S_IFDIR:
			kind = "dir"
		}
		fds = append(fds, fmt.Sprintf("%d:%s", fd, kind))
	}
	return fds
}

func openClose(path string, flags int) error {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o600)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func socket(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func connectInet(typ int, addr [4]byte, port int) error {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrInet4{Addr: addr, Port: port})
}

func connectUnix(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func errnoName(err error) string {
	if err == nil {
		return ""
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

// startJailedChild starts the test binary as a child with spec (its Line
// is set here), waits for the child's JSON report and fails unless its
// jail.Enter worked. The child is told to exit, and must exit 0, when the
// test ends.
func startJailedChild(t *testing.T, spec child.Spec) (pid int, r report) {
	t.Helper()
	lines := make(chan string, 16)
	spec.Line = func(l string) {
		if strings.HasPrefix(l, "{") {
			lines <- l
		} else {
			t.Logf("child: %s", l)
		}
	}
	p, err := child.Start(child.Direct{}, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Write([]byte("done\n"))
		if ws := p.Wait(); ws.ExitStatus() != 0 || ws.Signaled() {
			t.Errorf("jailed child: exit status %d", ws.ExitStatus())
		}
	})
	var line string
	select {
	case line = <-lines:
	case <-p.Done():
		t.Fatal("the jailed child exited without a report")
	}
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("report %q: %v", line, err)
	}
	if r.EnterErr != "" {
		t.Fatalf("jail.Enter: %s", r.EnterErr)
	}
	t.Logf("jail: %s", r.Jail)
	return p.Pid(), r
}
