package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/child"
)

// TestGuard: a goroutine of PID 1 that panics is reported as an error with
// its stack (so a oneshot run fails), and PID 1 goes on; one started with
// goLoop runs again.
func TestGuard(t *testing.T) {
	var out syncBuffer
	c := newConsole(&out)
	if guard(c, "quiet", func() {}) {
		t.Error("guard reported a panic for a function that returned")
	}
	var m map[string]int
	if !guard(c, "relay", func() { m["x"]++ }) {
		t.Error("guard did not report the panic")
	}
	loopRestart = time.Millisecond
	runs := make(chan int, 3)
	n := 0
	goLoop(c, "looper", func() {
		n++
		runs <- n
		if n < 3 {
			panic("again")
		}
	})
	for want := 1; want <= 3; want++ {
		select {
		case got := <-runs:
			if got != want {
				t.Fatalf("run %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("goLoop did not start run %d after a panic", want)
		}
	}
	c.Flush(5 * time.Second)
	got := out.String()
	for _, want := range []string{
		"hyperroot: error: relay: internal error: panic: assignment to entry in nil map (recovered; going on)",
		"hyperroot: error: looper: internal error: panic: again (recovered; going on)",
		"    runtime/debug.Stack()", // the stack, indented under its error
	} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
	if c.Errors() != 3 {
		t.Errorf("Errors() = %d, want 3 (one per panic)", c.Errors())
	}
	if strings.Contains(got, "BUG:") {
		t.Error("a recovered panic reads like an appliance kernel crash (BUG:), which the test bed retries")
	}
}

// panicWriter panics on every write that contains "boom".
type panicWriter struct{ syncBuffer }

func (p *panicWriter) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("boom")) {
		panic("writer broke")
	}
	return p.syncBuffer.Write(b)
}

// TestConsoleWriterSurvivesPanic: a panic while writing a console line
// costs that line, not the console: later lines are still written and
// Flush does not wait for the lost one.
func TestConsoleWriterSurvivesPanic(t *testing.T) {
	var out panicWriter
	c := newConsole(&out)
	c.Printf("before")
	c.Printf("boom")
	c.Printf("after")
	start := time.Now()
	c.Flush(5 * time.Second)
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Flush waited %s: the lost line was still counted as pending", d)
	}
	got := out.String()
	for _, want := range []string{"hyperroot: before\n", "error: console: internal error: panic: writer broke", "hyperroot: after\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
	if c.Errors() != 1 {
		t.Errorf("Errors() = %d, want 1", c.Errors())
	}
}

// FuzzCutLine: a relayed console line, whatever a guest wrote, is kept
// whole up to maxRelayLine bytes, or cut there with a note of how much
// went; nothing else changes (a pattern repeated stands for long lines,
// which the fuzzer is slow to make).
func FuzzCutLine(f *testing.F) {
	f.Add("short", uint16(0))
	f.Add("x", uint16(maxRelayLine-1))
	f.Add("0123456789", uint16(maxRelayLine/10+3))
	f.Add("\x00\xff… [cut 12 bytes]", uint16(900))
	f.Fuzz(func(t *testing.T, pattern string, reps uint16) {
		line := strings.Repeat(pattern, 1+int(reps)%(2*maxRelayLine))
		if len(line) > 3*maxRelayLine {
			line = line[:3*maxRelayLine]
		}
		got := cutLine(line)
		if len(line) <= maxRelayLine {
			if got != line {
				t.Fatalf("a line of %d bytes changed", len(line))
			}
			return
		}
		want := line[:maxRelayLine] + fmt.Sprintf("... [cut %d bytes]", len(line)-maxRelayLine)
		if got != want {
			t.Fatalf("line of %d bytes cut to %d bytes, want %d", len(line), len(got), len(want))
		}
	})
}

// TestOneshotTimeoutNamesJob: a oneshot run whose hyperroot.run job has not
// ended by the timeout says so, in the timeout line and in the verdict.
// (CLOCK_BOOTTIME on the test's host is far past a 1 s timeout, so the
// timeout has expired at once.)
func TestOneshotTimeoutNamesJob(t *testing.T) {
	var out syncBuffer
	c := newConsole(&out)
	f := newFleet(c, child.Direct{}, true)
	f.unjailed = true // fake VMMs
	f.Start(nil)
	jobRunning.Store(true)
	defer jobRunning.Store(false)
	power := make(chan string, 1)
	go oneshot(c, f, make(chan bool), time.Second, power)
	select {
	case reason := <-power:
		if reason != "timeout" {
			t.Errorf("power-off reason %q, want timeout", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no power-off request")
	}
	c.Flush(5 * time.Second)
	got := out.String()
	for _, want := range []string{
		"hyperroot: timeout: 1s since boot, still running: the hyperroot.run job; dumping their VMMs\n",
		"hyperroot: result fail errors=0 vms= run=fail timeout=1s\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
}

// TestConsoleInputIgnoresControls: control characters typed on the console
// (the test harness's Ctrl-Q nudge among them) are neither a command nor
// an error, and do not spoil the command they precede.
func TestConsoleInputIgnoresControls(t *testing.T) {
	var out syncBuffer
	c := newConsole(&out)
	f := newFleet(c, child.Direct{}, true)
	f.unjailed = true // fake VMMs
	readConsoleInput(c, f, nil, strings.NewReader("\x11\x11\x11\n\x11\x11switch kill\n"))
	c.Flush(5 * time.Second)
	got := out.String()
	if strings.Contains(got, "to send a line to a VM's console") {
		t.Errorf("control characters were taken for a command:\n%s", got)
	}
	if !strings.Contains(got, "console: no switch is running") {
		t.Errorf("the command after the control characters was not understood:\n%s", got)
	}
}

// TestConsoleInputToRunJob: "@run <text>" reaches the hyperroot.run job's
// standard input while it runs, and says so when none runs.
func TestConsoleInputToRunJob(t *testing.T) {
	var out syncBuffer
	c := newConsole(&out)
	f := newFleet(c, child.Direct{}, true)
	readConsoleInput(c, f, nil, strings.NewReader("@run too early\n"))
	c.Flush(5 * time.Second)
	if got := out.String(); !strings.Contains(got, "console: no run job is running") {
		t.Fatalf("@run with no job:\n%s", got)
	}
	// A job that echoes its first input line and ends.
	job := &runJob{Path: "/bin/sh", Args: []string{"-c", "read l; echo got $l"}}
	done := make(chan int, 1)
	go func() {
		code, err := job.run(c, child.Direct{})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	for runProcess.Load() == nil {
		time.Sleep(time.Millisecond)
	}
	readConsoleInput(c, f, nil, strings.NewReader("@run stop now\n"))
	if code := <-done; code != 0 {
		t.Fatalf("job exited %d", code)
	}
	c.Flush(5 * time.Second)
	if got := out.String(); !strings.Contains(got, "run| got stop now\n") {
		t.Fatalf("the job did not get the line:\n%s", got)
	}
}
