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
	logf   func(string, ...any)
	prefix string           // of every line: "port <name>"
	kind   string           // of the lines, in the count of those not shown
	now    func() time.Time // time.Now; tests move it

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
	return newLineLimit(logf, "port "+port, "connection")
}

// newLineLimit is a connLog for other lines that a client on the other side
// of a socket decides the number of (the API's refused requests): lines
// start with prefix, and the count of those not shown calls them kind.
func newLineLimit(logf func(string, ...any), prefix, kind string) *connLog {
	return &connLog{logf: logf, prefix: prefix, kind: kind, now: time.Now}
}

// printf prints the prefix and the text unless the window's lines are used up.
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
	l.logf("%s%s", l.prefix, fmt.Sprintf(format, a...))
}

// flush prints the count of suppressed lines, if any.
func (l *connLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *connLog) flushLocked() {
	if l.suppressed > 0 {
		l.logf("%s: %d %s lines not shown (more than %d in %s)", l.prefix, l.suppressed, l.kind, connLogBurst, connLogWindow)
		l.suppressed = 0
	}
}
