package virtiopci

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/eventfd"
)

// TestKickLoopParks: between kicks the loop's goroutine waits in Go's
// poller ("IO wait"), not in a system call that holds its thread and P
// ("syscall"), and each eventfd signal still reaches kick, once per
// signal taken, with the queue's index.
func TestKickLoopParks(t *testing.T) {
	fds, kicks := kickLoopFor(t, 2, 16)
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
	// Its state once it waits again (progress, not time).
	var state string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		state = kickLoopState()
		if state == "IO wait" || time.Now().After(deadline) {
			break
		}
	}
	if state != "IO wait" {
		t.Errorf("the kick loop waits in state %q, want \"IO wait\" (parked in the poller)", state)
	}
	select {
	case q := <-kicks:
		t.Errorf("a kick for queue %d nobody signalled", q)
	default:
	}
}

// kickLoopState is the scheduler state of the kick loop's goroutine, as its
// stack header gives it ("IO wait", "syscall", "running"), or "".
func kickLoopState() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "(*kickLoop).run") {
			continue
		}
		head, _, _ := strings.Cut(g, "\n")
		if i, j := strings.Index(head, "["), strings.Index(head, "]"); i >= 0 && j > i {
			state, _, _ := strings.Cut(head[i+1:j], ",")
			return state
		}
	}
	return ""
}

// BenchmarkKickLoop: an eventfd signal to the device's kick callback and
// back, the notification path of every request (kick to serve).
func BenchmarkKickLoop(b *testing.B) {
	fds, kicks := kickLoopFor(b, 1, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		eventfd.Signal(fds[0])
		<-kicks
	}
}

// kickLoopFor runs a kick loop on n fresh eventfds until the test ends;
// kick sends each call's queue to the returned channel (of capacity c).
// The activation kicks of every queue are taken already.
func kickLoopFor(tb testing.TB, n, c int) ([]int, chan int) {
	tb.Helper()
	fds, err := newEventFDs(n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { closeFDs(fds) })
	kicks := make(chan int, c)
	l, err := startKickLoop(fds, func(q int) { kicks <- q })
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.stop)
	for range fds {
		<-kicks
	}
	return fds, kicks
}
