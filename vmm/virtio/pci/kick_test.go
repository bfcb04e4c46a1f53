package virtiopci

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/eventfd"
)

// TestKickLoop: each eventfd signal reaches kick once, with its queue's
// index, and nothing else does.
func TestKickLoop(t *testing.T) {
	for _, hold := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "hold"}[hold], func(t *testing.T) { testKickLoop(t, hold) })
	}
}

func testKickLoop(t *testing.T, hold bool) {
	kicks := make(chan int, 16)
	fds := kickLoopFor(t, 2, hold, func(q int) { kicks <- q })
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

// TestKickLoopHeld: a loop that keeps its P while it waits holds nothing
// up: with every other P busy, a collection (which must stop every P)
// and a goroutine that needs a P still get one, the runtime's signal
// ending the held wait; kicks still arrive afterwards.
func TestKickLoopHeld(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	kicks := make(chan int, 16)
	fds := kickLoopFor(t, 1, true, func(q int) { kicks <- q })
	<-kicks // the activation kick; the next wait is held
	eventfd.Signal(fds[0])
	<-kicks // and the one after this kick too
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the other P, busy
		for {
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		runtime.GC()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a collection and a goroutine waited 30 s for the loop's held P")
	}
	eventfd.Signal(fds[0])
	select {
	case <-kicks:
	case <-time.After(10 * time.Second):
		t.Fatal("no kick after the held wait was interrupted")
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
//
// The loop keeps its P while it waits (kickLoop's hold) as in a VMM;
// think-200us-plain is the loop without.
func BenchmarkKickRoundTrip(b *testing.B) {
	b.Run("busy", func(b *testing.B) { kickRoundTrip(b, 0, true) })
	for _, hold := range []bool{true, false} {
		name := "think-200us"
		if !hold {
			name += "-plain"
		}
		b.Run(name, func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(machineProcs))
			kickRoundTrip(b, 200*time.Microsecond, hold)
		})
	}
}

// machineProcs is the Ps of a VMM with one vCPU and this device
// (machine.Procs), which this package cannot import.
const machineProcs = 3

func kickRoundTrip(b *testing.B, think time.Duration, hold bool) {
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
	fds := kickLoopFor(b, 1, hold, func(int) {
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
func kickLoopFor(tb testing.TB, n int, hold bool, kick func(q int)) []int {
	tb.Helper()
	return kickLoopPolling(tb, n, hold, unix.SYS_EPOLL_PWAIT2, func(q int) time.Duration { kick(q); return 0 })
}

// kickLoopPolling is kickLoopFor with a kick that may ask for polls, and
// epoll_pwait2's system call number.
func kickLoopPolling(tb testing.TB, n int, hold bool, pwait2 uintptr, kick func(q int) time.Duration) []int {
	tb.Helper()
	fds, err := newEventFDs(n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { closeFDs(fds) })
	l, err := startKickLoopWith(fds, kick, hold, pwait2)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.stop)
	return fds
}

// TestKickLoopPolls: a kick that returns a delay is called again for its
// queue once the delay has passed, with no signal, until it returns 0;
// the other queue's kicks still arrive meanwhile.
func TestKickLoopPolls(t *testing.T) {
	t.Run("epoll_pwait2", func(t *testing.T) { testKickLoopPolls(t, unix.SYS_EPOLL_PWAIT2) })
	// A kernel without it (before 5.11): a number no kernel has gives
	// ENOSYS the same way, and the loop waits in milliseconds instead.
	t.Run("no epoll_pwait2", func(t *testing.T) { testKickLoopPolls(t, 1<<20) })
}

func testKickLoopPolls(t *testing.T, pwait2 uintptr) {
	type call struct {
		q  int
		at time.Time
	}
	calls := make(chan call, 64)
	var polls atomic.Int32 // queue 0's calls after its signal
	const delay = 2 * time.Millisecond
	fds := kickLoopPolling(t, 2, true, pwait2, func(q int) time.Duration {
		calls <- call{q, time.Now()}
		if q == 0 && polls.Load() > 0 && polls.Add(1) <= 4 {
			return delay // ask for three polls after the kick
		}
		return 0
	})
	<-calls
	<-calls // the activation kicks
	polls.Store(1)
	start := time.Now()
	eventfd.Signal(fds[0])
	eventfd.Signal(fds[1])
	var got []int
	last := start
	timeout := time.After(10 * time.Second)
	for len(got) < 5 {
		select {
		case c := <-calls:
			got = append(got, c.q)
			if c.q == 0 {
				if n := len(got); n > 1 && c.at.Sub(last) < delay {
					t.Errorf("queue 0 called %v after its last call, before the %v it asked for", c.at.Sub(last), delay)
				}
				last = c.at
			}
		case <-timeout:
			t.Fatalf("calls %v after 10s; want queue 0 four times (a kick, three polls) and queue 1 once", got)
		}
	}
	select {
	case c := <-calls:
		t.Errorf("a call for queue %d after the polls ended", c.q)
	case <-time.After(20 * time.Millisecond):
	}
	n0 := 0
	for _, q := range got {
		if q == 0 {
			n0++
		}
	}
	if n0 != 4 {
		t.Errorf("queue 0 called %d times, want 4 (a kick and three polls); calls %v", n0, got)
	}
}
