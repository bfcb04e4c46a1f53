package main

import (
	"fmt"
	"sync"
	"time"
)

// connLog rate-limits one switch port's connection lines ("connected",
// "disconnected", why a frontend was cut off). A VMM connects a handful of
// times in a VM's life; a VMM its guest has taken over can connect
// thousands of times a second, and the console is shared by every VM.
// The first connLogBurst lines of each connLogWindow are printed; the
// rest are counted, and the count is printed with the first line after
// the window (or by flush, when the switch stops).
type connLog struct {
	logf func(string, ...any)
	port string
	now  func() time.Time // time.Now; tests move it

	mu         sync.Mutex
	start      time.Time // of the current window
	lines      int       // printed in it
	suppressed int       // not printed in it
}

const (
	connLogWindow = time.Minute
	connLogBurst  = 10 // five connections, each connected and disconnected
)

func newConnLog(logf func(string, ...any), port string) *connLog {
	return &connLog{logf: logf, port: port, now: time.Now}
}

// printf prints "port <name><text>" unless the window's lines are used up.
func (l *connLog) printf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.start) >= connLogWindow {
		l.flushLocked()
		l.start, l.lines = now, 0
	}
	if l.lines >= connLogBurst {
		l.suppressed++
		return
	}
	l.lines++
	l.logf("port %s%s", l.port, fmt.Sprintf(format, a...))
}

// flush prints the count of suppressed lines, if any.
func (l *connLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *connLog) flushLocked() {
	if l.suppressed > 0 {
		l.logf("port %s: %d connection lines not shown (more than %d in %s)", l.port, l.suppressed, connLogBurst, connLogWindow)
		l.suppressed = 0
	}
}
