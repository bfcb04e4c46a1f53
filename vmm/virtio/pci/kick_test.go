package virtiopci

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
)

// TestKickLoop: each eventfd signal reaches kick once, with its queue's
// index, and nothing else does.
func TestKickLoop(t *testing.T) {
	kicks := make(chan int, 16)
	fds := kickLoopFor(t, 2, func(q int) { kicks <- q })
	for range fds {
		<-kicks // the activation kicks
	}
	for round := range 3 {
		q := round % 2
		eventfd.Signal(fds[q])
		select {
		case got := <-kicks:
			if got != q {
				t.Fatalf("round %d: kick for queue %d, want %d", round, got, q)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: no kick within 10s", round)
		}
	}
	select {
	case q := <-kicks:
		t.Errorf("a kick for queue %d nobody signalled", q)
	default:
	}
}

// BenchmarkKickRoundTrip: a request's notification path as a 1-vCPU guest
// at queue depth 1 sees it. The "vCPU", a locked thread blocked in a
// system call as a halted vCPU is in KVM_RUN, signals the queue's eventfd
// (KVM's ioeventfd) and waits on the interrupt eventfd (KVM's irqfd); the
// kick callback reads 4 KiB of a file and signals the interrupt. Run it
// under `taskset -c 0` too: the test bed's appliance has its CPUs shared
// with its guests.
//
// In think-200us the guest computes for 200 µs between requests (the
// vCPU blocked in a system call that long, as in KVM_RUN), at the Ps a
// 1-vCPU VMM has (machine.Procs): under TCG a request's path takes that
// long, which is what makes the Go runtime hand Ps between threads around
// the loop's blocking wait. Count what that costs with
//
//	perf stat -e 'syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep' \
//	  pci.test -test.run XXX -test.bench KickRoundTrip/think -test.benchtime 5000x
//
// (2026-12-07: 2.2 futex and 2.6 of the runtime monitor's nanosleeps per
// round trip, less the think time's own nanosleep, at GOMAXPROCS 2.)
func BenchmarkKickRoundTrip(b *testing.B) {
	b.Run("busy", func(b *testing.B) { kickRoundTrip(b, 0) })
	b.Run("think-200us", func(b *testing.B) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(machineProcs))
		kickRoundTrip(b, 200*time.Microsecond)
	})
}

// machineProcs is machine.Procs(1), which this package cannot import.
const machineProcs = 3

func kickRoundTrip(b *testing.B, think time.Duration) {
	irqfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking, as KVM_RUN is
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(irqfd)
	disk, err := os.CreateTemp(b.TempDir(), "disk")
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	const size = 1 << 20
	if _, err := disk.Write(make([]byte, size)); err != nil {
		b.Fatal(err)
	}
	buf, off := make([]byte, 4096), int64(0)
	ready := make(chan struct{}, 1)
	fds := kickLoopFor(b, 1, func(int) {
		if _, err := unix.Pread(int(disk.Fd()), buf, off); err != nil {
			panic(err)
		}
		off = (off + int64(len(buf))) % size
		eventfd.Signal(irqfd)
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	<-ready // the activation kick
	var c [8]byte
	if _, err := unix.Read(irqfd, c[:]); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pause := unix.NsecToTimespec(think.Nanoseconds())
		for range b.N {
			if think > 0 {
				unix.Nanosleep(&pause, nil) // the guest runs: the vCPU is in KVM_RUN
			}
			eventfd.Signal(fds[0])
			if _, err := unix.Read(irqfd, c[:]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// kickLoopFor runs a kick loop calling kick on n fresh eventfds until the
// test ends.
func kickLoopFor(tb testing.TB, n int, kick func(q int)) []int {
	tb.Helper()
	fds, err := newEventFDs(n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { closeFDs(fds) })
	l, err := startKickLoop(fds, kick)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.stop)
	return fds
}
