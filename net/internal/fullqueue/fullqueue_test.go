package fullqueue

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWaitIsBounded: a write into a socket whose reader never reads (a
// wedged device) waits MaxWait for room, then gives up without an error;
// once the reader drains, the same write goes through without waiting.
func TestWaitIsBounded(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	f := os.NewFile(uintptr(fds[0]), "wedged")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 512)
	var full, waiting bool
	sent := 0
	write := func(fd uintptr) bool {
		for {
			_, err := unix.Write(int(fd), frame)
			switch err {
			case nil:
				sent++
			case unix.EAGAIN:
				full = true
				return !waiting
			default:
				t.Errorf("write: %v", err)
				return true
			}
		}
	}
	if err := rc.Write(write); err != nil || !full {
		t.Fatalf("filling the socket: err %v, full %v after %d frames", err, full, sent)
	}
	start := time.Now()
	if err := Wait(f, rc, write, &waiting); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if d := time.Since(start); d < MaxWait || d > 10*MaxWait {
		t.Errorf("Wait took %s, want about %s", d, MaxWait)
	}
	if waiting {
		t.Error("waiting still set after Wait")
	}
	// The deadline is gone: a drained socket takes frames again.
	buf := make([]byte, 1024)
	for {
		if _, err := unix.Read(fds[1], buf); err != nil {
			break
		}
	}
	before := sent
	full = false
	if err := rc.Write(write); err != nil || sent == before {
		t.Fatalf("after draining: err %v, %d more frames", err, sent-before)
	}
}
