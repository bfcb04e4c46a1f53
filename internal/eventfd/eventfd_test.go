package eventfd

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSignal: each signal adds 1 to a real eventfd; a saturated counter is
// not an error; a closed descriptor is.
func TestSignal(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for range 3 {
		if err := Signal(fd); err != nil {
			t.Fatal(err)
		}
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil || binary.LittleEndian.Uint64(b[:]) != 3 {
		t.Fatalf("counter %d, %v; want 3", binary.LittleEndian.Uint64(b[:]), err)
	}
	// Saturate: the largest value a write may add is 2^64-2.
	binary.LittleEndian.PutUint64(b[:], 1<<64-2)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatal(err)
	}
	if err := Signal(fd); err != nil {
		t.Errorf("saturated counter: %v, want nil", err)
	}
	if n := testing.AllocsPerRun(100, func() { unix.Read(fd, b[:]); Signal(fd) }); n != 0 {
		t.Errorf("%v allocations per signal", n)
	}
	bad, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	unix.Close(bad)
	if err := Signal(bad); err == nil {
		t.Error("a closed descriptor signalled")
	}
}

// TestDrain: a signalled counter reads as set and is cleared by it; a
// counter at zero is not set and not an error; a closed descriptor is.
func TestDrain(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	Signal(fd)
	Signal(fd)
	if set, err := Drain(fd); !set || err != nil {
		t.Errorf("after two signals: set %v, %v", set, err)
	}
	if set, err := Drain(fd); set || err != nil {
		t.Errorf("drained: set %v, %v; want unset, no error", set, err)
	}
	bad, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	unix.Close(bad)
	if _, err := Drain(bad); err == nil {
		t.Error("a closed descriptor drained")
	}
}

// TestPeek: the counter reads as the signals sent and stays set, a
// counter at zero reads as zero, and a descriptor that cannot be read is an
// error.
func TestPeek(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for range 26 {
		Signal(fd)
	}
	for range 2 {
		if n, err := Peek(fd); n != 26 || err != nil {
			t.Fatalf("after 26 signals: %d, %v", n, err)
		}
	}
	if set, _ := Drain(fd); !set {
		t.Fatal("Peek cleared the counter")
	}
	if n, err := Peek(fd); n != 0 || err != nil {
		t.Errorf("drained: %d, %v", n, err)
	}
	bad, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	unix.Close(bad)
	if _, err := Peek(bad); err == nil {
		t.Error("a closed descriptor peeked")
	}
}
