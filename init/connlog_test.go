package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestConnLog: a port's connection lines are printed up to the burst in
// each window; the rest are counted and the count is printed once, when
// the next window begins or at flush.
func TestConnLog(t *testing.T) {
	var lines []string
	l := newConnLog(func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }, "v.0")
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	for i := range 1000 {
		l.printf(" connected %d", i)
	}
	if len(lines) != connLogBurst {
		t.Fatalf("%d lines printed for 1000 in one window, want %d:\n%s", len(lines), connLogBurst, strings.Join(lines, "\n"))
	}
	if lines[0] != "port v.0 connected 0" {
		t.Errorf("first line %q", lines[0])
	}
	now = now.Add(connLogWindow)
	l.printf(" connected again")
	want := []string{
		fmt.Sprintf("port v.0: %d connection lines not shown (more than %d in %s)", 1000-connLogBurst, connLogBurst, connLogWindow),
		"port v.0 connected again",
	}
	if got := lines[connLogBurst:]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("after the window: %q, want %q", got, want)
	}
	for range connLogBurst {
		l.printf(" x")
	}
	l.flush()
	l.flush() // a second flush has nothing to say
	if last := lines[len(lines)-1]; last != fmt.Sprintf("port v.0: 1 connection lines not shown (more than %d in %s)", connLogBurst, connLogWindow) {
		t.Fatalf("flush printed %q", last)
	}
	if n := len(lines); n != connLogBurst+2+connLogBurst-1+1 {
		t.Fatalf("%d lines in all", n)
	}
}
