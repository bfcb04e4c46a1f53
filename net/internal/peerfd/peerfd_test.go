package peerfd

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/procfd"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

func TestEventfd(t *testing.T) { checkEventfd(t) }

// TestEventfdJailed: as in the jailed switch, through a procfs of the
// process's own (internal/procfd proves it works without /proc).
func TestEventfdJailed(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (mounting a procfs)")
	if err := procfd.Open(); err != nil {
		t.Fatal(err)
	}
	checkEventfd(t)
}

func checkEventfd(t *testing.T) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := Eventfd(efd); err != nil {
		t.Fatalf("eventfd refused: %v", err)
	}
	if fl, _ := unix.FcntlInt(uintptr(efd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("eventfd left blocking")
	}
	// A saturated counter: writing must fail with EAGAIN, not block.
	max := [8]byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if _, err := unix.Write(efd, max[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != unix.EAGAIN {
		t.Errorf("write to a saturated eventfd: %v, want EAGAIN", err)
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	f, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tfd)
	for name, fd := range map[string]int{"pipe": p[1], "/dev/zero": int(f.Fd()), "epoll": ep, "timerfd": tfd,
		"closed": 999999, "negative": -1} {
		if err := Eventfd(fd); err == nil {
			t.Errorf("%s accepted as an eventfd", name)
		}
	}
	if err := Eventfd(p[1]); !errors.Is(err, ErrKind) {
		t.Errorf("pipe: %v does not wrap ErrKind", err)
	}
}

func TestSealedMemory(t *testing.T) {
	mk := func(flags int, seals int) int {
		fd, err := unix.MemfdCreate("peerfd-test", unix.MFD_CLOEXEC|flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, 1<<16); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	sealed := mk(unix.MFD_ALLOW_SEALING, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	if n, err := SealedMemory(sealed); err != nil || n != 1<<16 {
		t.Fatalf("sealed memfd: %d, %v", n, err)
	}
	if n, err := SealedMemory(mk(unix.MFD_ALLOW_SEALING, unix.F_SEAL_SHRINK)); err != nil || n != 1<<16 {
		t.Fatalf("memfd sealed against shrinking only: %d, %v", n, err)
	}
	f, err := os.CreateTemp(t.TempDir(), "ram")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(1 << 16)
	for name, fd := range map[string]int{
		"unsealed memfd":        mk(0, 0),
		"sealable, not sealed":  mk(unix.MFD_ALLOW_SEALING, 0),
		"sealed against growth": mk(unix.MFD_ALLOW_SEALING, unix.F_SEAL_GROW),
		"plain file":            int(f.Fd()),
		"closed":                999999,
	} {
		if _, err := SealedMemory(fd); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
