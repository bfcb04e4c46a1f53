package procfd

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// childEnv makes the test binary the child of TestLinkWithoutProc.
const childEnv = "HYPERROOT_PROCFD_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// TestLink: before Open, through the host's /proc.
func TestLink(t *testing.T) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if l, err := Link(efd); err != nil || l != "anon_inode:[eventfd]" {
		t.Errorf("eventfd: %q, %v", l, err)
	}
	if _, err := Link(-1); err == nil {
		t.Error("Link(-1) succeeded")
	}
}

// childReport is what the child found.
type childReport struct {
	Err       string
	ProcGone  bool              // /proc/self no longer resolves
	Links     map[string]string // kind: link or error
	Instance  []string          // the private procfs's root entries
	LongLink  string            // a file with a long path
	WantLong  string
	Closed    string // Link of a closed descriptor: the error
	Negative  string
	SecondErr string // a second Open
}

// TestLinkWithoutProc: a process in PID and mount namespaces of its own,
// as a jail's, calls Open and then loses /proc; Link still names its
// descriptors, and the procfs it mounted shows that process alone and no
// system files.
func TestLinkWithoutProc(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (mount and PID namespaces, mounting procfs)")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "HYPERROOT_PROCFD_TEST_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var r childReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	if r.Err != "" {
		t.Fatal(r.Err)
	}
	if !r.ProcGone {
		t.Error("the child still had /proc: the test proves nothing")
	}
	for kind, want := range map[string]string{"eventfd": "anon_inode:[eventfd]", "epoll": "anon_inode:[eventpoll]",
		"timerfd": "anon_inode:[timerfd]", "pipe": "pipe:[", "socket": "socket:["} {
		if got := r.Links[kind]; !strings.HasPrefix(got, want) {
			t.Errorf("%s: %q, want %q", kind, got, want)
		}
	}
	if r.LongLink != r.WantLong {
		t.Errorf("long path: %q, want %q", r.LongLink, r.WantLong)
	}
	if r.Closed == "" || r.Negative == "" {
		t.Errorf("a closed or negative descriptor was named: %q %q", r.Closed, r.Negative)
	}
	if r.SecondErr != "" {
		t.Errorf("a second Open: %s", r.SecondErr)
	}
	sort.Strings(r.Instance)
	if want := []string{"1", "self", "thread-self"}; !slices.Equal(r.Instance, want) {
		t.Errorf("the private procfs holds %q, want %q (this process alone, no system files)", r.Instance, want)
	}
}

func child() int {
	r := childReport{Links: map[string]string{}}
	defer func() {
		b, _ := json.Marshal(r)
		os.Stdout.Write(b)
	}()
	fail := func(step string, err error) int {
		r.Err = step + ": " + err.Error()
		return 0
	}
	if err := Open(); err != nil {
		return fail("Open", err)
	}
	if err := Open(); err != nil {
		r.SecondErr = err.Error()
	}
	// As the jail does: the host's mounts go, /proc with them.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("make mounts private", err)
	}
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil {
		return fail("detach /proc", err)
	}
	_, err := os.Stat("/proc/self")
	r.ProcGone = err != nil
	efd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	ep, _ := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	tfd, _ := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	var p [2]int
	unix.Pipe2(p[:], unix.O_CLOEXEC)
	sp, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	for kind, fd := range map[string]int{"eventfd": efd, "epoll": ep, "timerfd": tfd, "pipe": p[0], "socket": sp[0]} {
		l, err := Link(fd)
		if err != nil {
			l = err.Error()
		}
		r.Links[kind] = l
	}
	// A path longer than Link's first buffer.
	dir := os.Getenv("HYPERROOT_PROCFD_TEST_DIR") + "/" + strings.Repeat("d", 200)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fail("mkdir", err)
	}
	f, err := os.Create(dir + "/file")
	if err != nil {
		return fail("create", err)
	}
	r.WantLong = f.Name()
	r.LongLink, _ = Link(int(f.Fd()))
	if _, err := Link(987654); err != nil {
		r.Closed = err.Error()
	}
	if _, err := Link(-2); err != nil {
		r.Negative = err.Error()
	}
	root, err := unix.Openat(int(table.Load()), "../..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("open the procfs's root", err)
	}
	names, err := os.NewFile(uintptr(root), "procfs").Readdirnames(-1)
	if err != nil {
		return fail("list the procfs's root", err)
	}
	r.Instance = names
	return 0
}
