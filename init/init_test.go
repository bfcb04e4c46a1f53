package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cmdline
	}{
		{"console=ttyS0 quiet", cmdline{}},
		{"hyperroot.oneshot=1 hyperroot.config=/x.yaml", cmdline{Oneshot: true, Config: "/x.yaml"}},
		{"hyperroot.oneshot=0", cmdline{}},
		{"hyperroot.oneshot=1 hyperroot.oneshot=0", cmdline{}},
		{"hyperroot.config=http://10.0.0.1/c.yaml\n", cmdline{Config: "http://10.0.0.1/c.yaml"}},
	} {
		if got := parseCmdline(tc.in); got != tc.want {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestConsoleLines(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf)
	c.Printf("ready")
	c.Errorf("kvm", errors.New("no /dev/kvm"))
	c.Flush(5 * time.Second)
	re := regexp.MustCompile(`^\[ *\d+\.\d{3}\] hyperroot: ready\n\[ *\d+\.\d{3}\] hyperroot: error: kvm: no /dev/kvm\n$`)
	if !re.MatchString(buf.String()) {
		t.Errorf("console output %q", buf.String())
	}
	if c.Errors() != 1 {
		t.Errorf("Errors() = %d", c.Errors())
	}
}

// TestConsoleCutsLongLines: a relayed line is bounded, so a guest writing
// 64 KiB lines cannot pin PID 1's memory in the console queue.
func TestConsoleCutsLongLines(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf)
	c.Relay("vm", strings.Repeat("x", 64<<10))
	c.RelayAll("run", "short")
	c.Flush(5 * time.Second)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	want := "vm| " + strings.Repeat("x", maxRelayLine) + fmt.Sprintf("... [cut %d bytes]", 64<<10-maxRelayLine)
	if lines[0] != want {
		t.Errorf("long line relayed as %d bytes ending %q", len(lines[0]), lines[0][len(lines[0])-30:])
	}
	if lines[1] != "run| short" {
		t.Errorf("second line %q", lines[1])
	}
}

// TestReaper makes the test process a subreaper, as PID 1 is for the whole
// system, and checks that a supervised child's status reaches its waiter
// while an orphaned grandchild is reaped and counted.
func TestReaper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := newReaper()
	go r.Run()
	// The reaper waits for any pid: it must not outlive this test and take
	// the children of the next ones.
	defer func() { signal.Stop(r.sigc); close(r.sigc) }()
	ch, err := r.Start(exec.Command("/bin/sh", "-c", "sleep 0.2 & exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ws := <-ch:
		if !ws.Exited() || ws.ExitStatus() != 3 {
			t.Errorf("status %v, want exit 3", ws)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no status for the supervised child")
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Orphans() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("orphaned grandchild was not reaped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDispatch(t *testing.T) {
	if dispatch([]string{"version"}) != 0 || dispatch([]string{"bogus"}) != 2 || dispatch(nil) != 2 {
		t.Error("dispatch exit codes")
	}
}

// blockingWriter blocks every write until released.
type blockingWriter struct {
	release chan struct{}
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return w.buf.Write(p)
}

// TestConsoleNeverBlocksVMs: a console that does not drain must not stall
// the VMs' relays; what was dropped is reported once it drains again.
func TestConsoleNeverBlocksVMs(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	c := newConsole(w)
	done := make(chan struct{})
	go func() {
		for i := 0; i < consoleQueue+500; i++ {
			c.Relay("vm", "line")
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Relay blocked on a stuck console")
	}
	close(w.release)
	c.Printf("after")
	c.Flush(10 * time.Second)
	out := w.buf.String()
	if !regexp.MustCompile(`hyperroot: console: dropped \d+ VM console lines`).MatchString(out) {
		t.Errorf("no drop report in %d bytes of output", len(out))
	}
	if !strings.HasSuffix(out, "hyperroot: after\n") {
		t.Errorf("supervisor line lost or out of order: ...%q", out[max(0, len(out)-80):])
	}
}
