package holdp

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestWaiter: a call that succeeds makes the next one raw, one that fails
// (an interrupted wait's EINTR; here closing no descriptor, EBADF) makes
// it plain again, and without SetHold nothing is ever raw.
func TestWaiter(t *testing.T) {
	ok := func(w *Waiter) unix.Errno { _, e := w.Syscall6(unix.SYS_GETPID, 0, 0, 0, 0, 0, 0); return e }
	fail := func(w *Waiter) unix.Errno { _, e := w.Syscall6(unix.SYS_CLOSE, ^uintptr(0), 0, 0, 0, 0, 0); return e }

	var plain Waiter
	if e := ok(&plain); e != 0 || plain.Holding() {
		t.Fatalf("without SetHold: errno %v, holding %v", e, plain.Holding())
	}
	var w Waiter
	w.SetHold(true)
	if w.Holding() {
		t.Fatal("the first call would hold")
	}
	if e := ok(&w); e != 0 || !w.Holding() {
		t.Fatalf("after a call that succeeded: errno %v, holding %v", e, w.Holding())
	}
	if e := ok(&w); e != 0 || !w.Holding() { // a raw call keeps it
		t.Fatalf("after a raw call that succeeded: errno %v, holding %v", e, w.Holding())
	}
	if e := fail(&w); e != unix.EBADF || w.Holding() {
		t.Fatalf("after a call that failed: errno %v, holding %v", e, w.Holding())
	}
	ok(&w)
	w.SetHold(false)
	if w.Holding() {
		t.Fatal("SetHold(false) left the next call raw")
	}
}
