package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sh runs script with /bin/sh and collects its lines.
func sh(t *testing.T, script string, tail int) (*Process, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var lines []string
	p, err := Start(Direct{}, Spec{Path: "/bin/sh", Args: []string{"-c", script}, Tail: tail,
		Line: func(l string) { mu.Lock(); lines = append(lines, l); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	return p, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(lines) }
}

// waitLine waits until the child wrote want.
func waitLine(t *testing.T, lines func() []string, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(lines(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no line %q in %q", want, lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOutputAndStatus(t *testing.T) {
	long := strings.Repeat("x", MaxLine+10)
	for _, tc := range []struct {
		name     string
		script   string
		tail     int
		lines    []string
		wantTail []string
		exit     int         // exit status, or -1 for a signal
		sig      unix.Signal // with exit -1
	}{
		{"lines in order, both streams", `printf 'a\nb\r\n'; echo c >&2; printf d`, 0,
			[]string{"a", "b", "c", "d"}, nil, 0, 0},
		{"tail keeps the last lines", `for i in 1 2 3 4 5; do echo $i; done; exit 3`, 2,
			[]string{"1", "2", "3", "4", "5"}, []string{"4", "5"}, 3, 0},
		{"a long line comes in pieces", `printf '%s\n' ` + long, 0,
			[]string{long[:MaxLine], long[MaxLine:]}, nil, 0, 0},
		{"killed by a signal", `echo before; kill -9 $$`, 1,
			[]string{"before"}, []string{"before"}, -1, unix.SIGKILL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, lines := sh(t, tc.script, tc.tail)
			ws := p.Wait()
			if got := lines(); !slices.Equal(got, tc.lines) {
				t.Errorf("lines %.80q, want %.80q", got, tc.lines)
			}
			if got := p.Tail(); !slices.Equal(got, tc.wantTail) {
				t.Errorf("tail %q, want %q", got, tc.wantTail)
			}
			switch {
			case tc.exit >= 0 && (!ws.Exited() || ws.ExitStatus() != tc.exit):
				t.Errorf("status %#x, want exit %d", uint32(ws), tc.exit)
			case tc.exit < 0 && (!ws.Signaled() || ws.Signal() != tc.sig):
				t.Errorf("status %#x, want signal %v", uint32(ws), tc.sig)
			}
			if err := p.Signal(unix.SIGTERM); err != ErrExited {
				t.Errorf("Signal after exit = %v, want ErrExited", err)
			}
		})
	}
}

func TestStdinAndExtraFiles(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "extra")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("from fd 3\n")
	f.Seek(0, 0)
	defer f.Close()
	var got []string
	var mu sync.Mutex
	p, err := Start(Direct{}, Spec{Path: "/bin/sh", Args: []string{"-c", `cat <&3; read x; echo "got $x"`},
		ExtraFiles: []*os.File{f}, Stdin: true,
		Line: func(l string) { mu.Lock(); got = append(got, l); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	if want := []string{"from fd 3", "got hello"}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	if _, err := p.Write([]byte("late\n")); err == nil {
		t.Error("Write after exit succeeded")
	}
}

// TestStalledInput: a child that reads none of its input fails a write
// once the pipe is full, after InputTimeout, instead of holding the writer.
func TestStalledInput(t *testing.T) {
	defer func(d time.Duration) { InputTimeout = d }(InputTimeout)
	InputTimeout = 200 * time.Millisecond
	p, err := Start(Direct{}, Spec{Path: "/bin/sleep", Args: []string{"30"}, Stdin: true, Line: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second, nil)
	began := time.Now()
	n, err := p.Write(make([]byte, 1<<20))
	if !errors.Is(err, ErrInputStalled) || n >= 1<<20 {
		t.Fatalf("write of 1 MiB to a child that does not read: %d bytes, %v", n, err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the write took %s", took)
	}
	t.Logf("%d bytes written, then: %v", n, err)
}

func TestStop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string
		grace   time.Duration
		killed  bool
		wantEnd func(unix.WaitStatus) bool
	}{
		// Stop returns when the child exits: a grace far beyond what a
		// loaded machine needs to run the trap costs nothing (300 ms
		// was once too short for it).
		{"exits on SIGTERM", `trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`, time.Minute, false,
			func(ws unix.WaitStatus) bool { return ws.Exited() && ws.ExitStatus() == 7 }},
		// Waits the whole grace, whatever it is: short.
		{"ignores SIGTERM", `trap '' TERM; echo ready; while :; do sleep 0.05; done`, 300 * time.Millisecond, true,
			func(ws unix.WaitStatus) bool { return ws.Signaled() && ws.Signal() == unix.SIGKILL }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, lines := sh(t, tc.script, 0)
			waitLine(t, lines, "ready")
			killed := false
			ws := p.Stop(tc.grace, func() { killed = true })
			if killed != tc.killed || !tc.wantEnd(ws) {
				t.Errorf("Stop: killed %v (want %v), status %#x", killed, tc.killed, uint32(ws))
			}
		})
	}
}

// TestGrandchildHoldsOutput: a child whose background grandchild keeps the
// output pipe open is still reported soon after it exits.
func TestGrandchildHoldsOutput(t *testing.T) {
	p, _ := sh(t, `sleep 30 & echo $! ; exit 0`, 1)
	start := time.Now()
	p.Wait()
	if d := time.Since(start); d > drainTime+5*time.Second {
		t.Errorf("Wait took %s", d)
	}
	if tail := p.Tail(); len(tail) == 1 {
		var pid int
		if _, err := fmt.Sscan(tail[0], &pid); err == nil {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// countingStarter checks that every child goes through the Starter.
type countingStarter struct{ n atomic.Int32 }

func (c *countingStarter) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	c.n.Add(1)
	return Direct{}.Start(cmd)
}

func TestStartThroughStarter(t *testing.T) {
	var s countingStarter
	p, err := Start(&s, Spec{Path: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	if ws := p.Wait(); !ws.Exited() || ws.ExitStatus() != 0 || s.n.Load() != 1 {
		t.Errorf("status %#x, %d starts", uint32(ws), s.n.Load())
	}
	if _, err := Start(&s, Spec{Path: "/no/such/program"}); err == nil || !strings.Contains(err.Error(), "/no/such/program") {
		t.Errorf("Start of a missing program: %v", err)
	}
}

// TestStartedBeforeOutput: the start is reported before any line of the
// child's, however fast it writes.
func TestStartedBeforeOutput(t *testing.T) {
	for range 5 {
		var got []string
		var mu sync.Mutex
		add := func(s string) { mu.Lock(); got = append(got, s); mu.Unlock() }
		p, err := Start(Direct{}, Spec{Path: "/bin/sh", Args: []string{"-c", "echo out"},
			Started: func(pid int) { time.Sleep(20 * time.Millisecond); add(fmt.Sprint("started ", pid)) }, Line: add})
		if err != nil {
			t.Fatal(err)
		}
		p.Wait()
		if want := []string{fmt.Sprint("started ", p.Pid()), "out"}; !slices.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// TestStopReady: a stop waits until the child says it handles SIGTERM; a
// shell that has not set its trap yet would die of the signal instead.
func TestStopReady(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	p, err := Start(Direct{}, Spec{Path: "/bin/sh",
		Args:  []string{"-c", `read x; trap 'exit 7' TERM; : > "$0"; while :; do sleep 0.05; done`, ready},
		Stdin: true,
		StopReady: func(int) bool {
			_, err := os.Stat(ready)
			return err == nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan unix.WaitStatus, 1)
	go func() { stopped <- p.Stop(time.Minute, nil) }()
	if _, err := p.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if ws := <-stopped; !ws.Exited() || ws.ExitStatus() != 7 {
		t.Errorf("status %#x, want exit 7 from the trap (SIGTERM came before the child handled it?)", uint32(ws))
	}
}
