package uring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"io_uring_sqe", unsafe.Sizeof(SQE{}), 64},
		{"io_uring_cqe", unsafe.Sizeof(CQE{}), 16},
		{"io_sqring_offsets", unsafe.Sizeof(sqringOffsets{}), 40},
		{"io_cqring_offsets", unsafe.Sizeof(cqringOffsets{}), 40},
		{"io_uring_params", unsafe.Sizeof(params{}), 120},
		{"io_uring_probe", unsafe.Sizeof(probe{}), 16 + 256*8},
		{"sqe.user_data offset", unsafe.Offsetof(SQE{}.UserData), 32},
		{"sqe.len offset", unsafe.Offsetof(SQE{}.Len), 24},
		{"params.sq_off offset", unsafe.Offsetof(params{}.SQOff), 40},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestSetupErrorClassification(t *testing.T) {
	for _, c := range []struct {
		errno       unix.Errno
		unavailable bool
	}{
		{unix.ENOSYS, true},
		{unix.EPERM, true},
		{unix.EACCES, true},
		{unix.ENOMEM, false},
		{unix.EINVAL, false},
	} {
		err := setupError(4, c.errno)
		if got := errors.Is(err, ErrUnavailable); got != c.unavailable {
			t.Errorf("%v: unavailable=%v, want %v (%v)", c.errno, got, c.unavailable, err)
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("%v: errno not wrapped in %v", c.errno, err)
		}
	}
}

// newRing sets up a ring or skips/fails through testenv when the host
// forbids io_uring.
func newRing(t *testing.T, entries uint32) *Ring {
	t.Helper()
	r, err := Setup(entries)
	if errors.Is(err, ErrUnavailable) {
		testenv.Need(t, false, "io_uring: "+err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// reapN collects n completions, waiting in the kernel as needed.
func reapN(t *testing.T, r *Ring, n int) []CQE {
	t.Helper()
	var out []CQE
	for len(out) < n {
		c, ok := r.PopCQE()
		if ok {
			out = append(out, c)
			continue
		}
		if err := r.Wait(1); err != nil {
			t.Fatalf("wait: %v", err)
		}
	}
	return out
}

func TestSetupFeatures(t *testing.T) {
	r := newRing(t, 8)
	sq, cq := r.Entries()
	if sq != 8 || cq != 16 {
		t.Errorf("entries sq=%d cq=%d, want 8/16", sq, cq)
	}
	for _, op := range []uint8{OpNop, OpReadv, OpWritev, OpFsync, OpFallocate} {
		if !r.Supports(op) {
			t.Errorf("opcode %d not supported", op)
		}
	}
	if r.Supports(255) {
		t.Error("opcode 255 reported supported")
	}
	t.Logf("features %#x (single mmap %v, submit stable %v)", r.Features(),
		r.Features()&FeatSingleMmap != 0, r.Features()&FeatSubmitStable != 0)
}

func TestReadvWritevFsyncFallocate(t *testing.T) {
	r := newRing(t, 8)
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	a, b := bytes.Repeat([]byte{0xaa}, 4096), bytes.Repeat([]byte{0xbb}, 4096)
	iov := []unix.Iovec{{Base: &a[0]}, {Base: &b[0]}}
	iov[0].SetLen(len(a))
	iov[1].SetLen(len(b))
	if err := r.PrepWritev(fd, iov, 8192, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	if c := reapN(t, r, 1)[0]; c.UserData != 1 || c.Res != 8192 {
		t.Fatalf("writev completion %+v", c)
	}
	if err := r.PrepFsync(fd, FsyncDatasync, 0, 2); err != nil {
		t.Fatal(err)
	}
	// Punch the first 4 KiB of the written range, keeping the size.
	if err := r.PrepFallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8192, 4096, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	for _, c := range reapN(t, r, 2) {
		if c.Res != 0 || (c.UserData != 2 && c.UserData != 3) {
			t.Fatalf("fsync/fallocate completion %+v", c)
		}
	}
	got := make([]byte, 8192)
	giov := []unix.Iovec{{Base: &got[0]}}
	giov[0].SetLen(len(got))
	if err := r.PrepReadv(fd, giov, 8192, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	if c := reapN(t, r, 1)[0]; c.UserData != 4 || c.Res != 8192 {
		t.Fatalf("readv completion %+v", c)
	}
	want := append(make([]byte, 4096), b...)
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from written data with the punched hole")
	}
	if st, _ := f.Stat(); st.Size() != 16384 {
		t.Errorf("size %d after punch, want 16384", st.Size())
	}
}

func TestErrorResult(t *testing.T) {
	r := newRing(t, 4)
	buf := make([]byte, 16)
	iov := []unix.Iovec{{Base: &buf[0]}}
	iov[0].SetLen(16)
	if err := r.PrepReadv(-1, iov, 0, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	if c := reapN(t, r, 1)[0]; c.UserData != 9 || unix.Errno(-c.Res) != unix.EBADF {
		t.Fatalf("completion %+v, want -EBADF", c)
	}
}

func TestSQFull(t *testing.T) {
	r := newRing(t, 4)
	for i := range 4 {
		if err := r.PrepNop(uint64(i)); err != nil {
			t.Fatalf("nop %d: %v", i, err)
		}
	}
	if err := r.PrepNop(99); !errors.Is(err, ErrSQFull) {
		t.Fatalf("fifth prep: %v, want ErrSQFull", err)
	}
	if r.Pending() != 4 {
		t.Fatalf("pending %d", r.Pending())
	}
	if n, err := r.Submit(); err != nil || n != 4 {
		t.Fatalf("submit %d, %v", n, err)
	}
	if err := r.PrepNop(4); err != nil {
		t.Fatalf("prep after submit: %v", err)
	}
	r.Submit()
	seen := map[uint64]bool{}
	for _, c := range reapN(t, r, 5) {
		seen[c.UserData] = true
	}
	if len(seen) != 5 {
		t.Fatalf("completions %v", seen)
	}
}

// TestCQOverflow submits more NOPs than the CQ holds without reaping and
// checks that every completion still arrives (IORING_FEAT_NODROP).
func TestCQOverflow(t *testing.T) {
	r := newRing(t, 4) // CQ of 8
	const total = 40
	submitted := 0
	for submitted < total {
		for submitted < total && r.PrepNop(uint64(submitted)) == nil {
			submitted++
		}
		if _, err := r.Submit(); err != nil && !errors.Is(err, ErrBusy) {
			t.Fatal(err)
		}
	}
	sawOverflow := r.Overflowed()
	seen := make(map[uint64]bool)
	for len(seen) < total {
		c, ok := r.PopCQE()
		if ok {
			if seen[c.UserData] {
				t.Fatalf("duplicate completion %d", c.UserData)
			}
			seen[c.UserData] = true
			continue
		}
		if r.Overflowed() {
			sawOverflow = true
			if err := r.FlushOverflow(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if r.Pending() > 0 {
			if _, err := r.Submit(); err != nil && !errors.Is(err, ErrBusy) {
				t.Fatal(err)
			}
			continue
		}
		if err := r.Wait(1); err != nil {
			t.Fatal(err)
		}
	}
	if !sawOverflow {
		t.Error("CQ never reported overflow although 40 completions were posted into 8 slots")
	}
	if r.Dropped() != 0 {
		t.Errorf("dropped %d", r.Dropped())
	}
}

func TestEventfd(t *testing.T) {
	r := newRing(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.RegisterEventfd(efd); err != nil {
		t.Fatal(err)
	}
	r.PrepNop(7)
	r.PrepNop(8)
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	var buf [8]byte
	if _, err := unix.Read(efd, buf[:]); err != nil { // blocks until signalled
		t.Fatal(err)
	}
	if n := *(*uint64)(unsafe.Pointer(&buf[0])); n == 0 {
		t.Fatal("eventfd counter 0")
	}
	reapN(t, r, 2)
	if err := r.UnregisterEventfd(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseTwice(t *testing.T) {
	r, err := Setup(2)
	if errors.Is(err, ErrUnavailable) {
		testenv.Need(t, false, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
