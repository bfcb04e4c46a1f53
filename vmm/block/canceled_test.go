package block

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// canceledChild names the child process of TestUringKernelCancels.
const canceledChild = "HYPERROOT_BLOCK_CANCELED_CHILD"

// TestUringKernelCancels: the kernel completes an io_uring request with
// ECANCELED, without starting it, when it cannot start the io-wq worker
// thread the request needs (see maxCanceled). A process whose thread limit
// is reached gets exactly that on its first flush and write, every time:
// a flush submitted by a thread of a child process of this test whose uid
// is unprivileged (root is exempt from RLIMIT_NPROC), with the soft limit
// at 1. The flush must succeed, sent again by the backend (counted by
// testHookCanceled) from a thread that can have a worker, and a write
// after it must be found in the file. Without the resend, a guest would
// get an I/O error for what was a failure of one thread.
func TestUringKernelCancels(t *testing.T) {
	if os.Getenv(canceledChild) != "" {
		uringCanceledChild()
		return
	}
	testenv.Need(t, os.Geteuid() == 0, "root, for the child to change a thread's uid")
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestUringKernelCancels$", "-test.count=1")
	cmd.Env = append(os.Environ(), canceledChild+"=1")
	cmd.ExtraFiles = []*os.File{f} // fd 3
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "canceled-then-done") {
		t.Fatal("the child did not report its result")
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[8192:8192+4096], fill(4096)) {
		t.Fatal("the write is not in the file")
	}
}

// uringCanceledChild is the child's side: it reports with a line on
// stdout and its exit status.
func uringCanceledChild() {
	fail := func(format string, args ...any) {
		fmt.Printf("child: "+format+"\n", args...)
		os.Exit(1)
	}
	u, err := NewUring(os.NewFile(3, "disk"), Options{Depth: 4})
	if err != nil {
		fail("%v", err)
	}
	var canceled atomic.Int32
	testHookCanceled = func() { canceled.Add(1) }
	// The flush is submitted from a thread of its own whose uid (and only
	// its: credentials are per thread, and a raw setresuid changes the
	// calling thread's) is unprivileged, so that the kernel cannot create
	// an io-wq worker for it once RLIMIT_NPROC is 1. The runtime's other
	// threads stay root, which the limit exempts: they create threads as
	// the runtime needs, and the one that sends the canceled flush again
	// gets its worker.
	submitted, release := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			submitted <- fmt.Errorf("setresuid: %w", e)
			return
		}
		lim := unix.Rlimit{Cur: 1, Max: unix.RLIM_INFINITY}
		if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
			submitted <- err
			return
		}
		lim.Cur = 1
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
			submitted <- fmt.Errorf("setrlimit: %w", err)
			return
		}
		submitted <- u.Submit(Request{Op: Flush})
		<-release // the thread's requests are canceled when it exits
	}()
	if err := <-submitted; err != nil {
		fail("flush: %v", err)
	}
	c := <-u.Completions()
	close(release)
	if c.Err != nil {
		fail("flush: %v (sent again %d times)", c.Err, canceled.Load())
	}
	if canceled.Load() == 0 {
		fail("flush: done at once although its thread was at its thread limit: the kernel did not cancel it")
	}
	// The ring works on: a write, checked by the parent.
	if err := u.Submit(Request{Op: Write, Offset: 8192, Bufs: [][]byte{fill(4096)}}); err != nil {
		fail("submit: %v", err)
	}
	if c := <-u.Completions(); c.Err != nil || c.N != 4096 {
		fail("write: %+v", c)
	}
	if err := u.Close(); err != nil {
		fail("close: %v", err)
	}
	fmt.Printf("canceled-then-done (sent again %d times)\n", canceled.Load())
	os.Exit(0)
}
