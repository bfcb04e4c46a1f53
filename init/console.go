package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// console writes the supervisor's lines, and the lines VMs write to their
// serial consoles, to the system console, each supervisor line stamped with
// the time since boot in the kernel's own format so that they interleave
// readably with kernel messages.
//
// One goroutine does the writing, in order, a whole line per write. A serial
// console is slow (11 KiB/s at 115200 baud) and must never stall a VM: when
// VMs write faster than the console drains, their lines are dropped (and the
// drop is reported) instead of blocking their VMMs. The supervisor's own lines
// are never dropped.
type console struct {
	lines   chan string
	pending atomic.Int64  // lines queued or being written
	dropped atomic.Uint64 // VM lines dropped since the last report

	// tap, when not nil, sees each line as it is written (escapeTally).
	tap func(line string)

	mu     sync.Mutex
	errors int // boot errors reported so far
}

// consoleQueue is how many lines may wait for the console.
const consoleQueue = 4096

func newConsole(w io.Writer) *console {
	c := &console{lines: make(chan string, consoleQueue)}
	if escapeTally != nil {
		c.tap = escapeTally.Line
	}
	go c.write(w)
	return c
}

func (c *console) write(w io.Writer) {
	for line := range c.lines {
		c.writeLine(w, line)
	}
}

// writeLine writes one queued line. A panic while writing (a bug here or
// in the writer) costs that line, not the console and not PID 1: it is
// counted as an error, reported straight to w (not through the queue,
// which may be full), and the writer goes on with the next line.
func (c *console) writeLine(w io.Writer, line string) {
	defer c.pending.Add(-1)
	defer func() {
		if v := recover(); v != nil {
			c.mu.Lock()
			c.errors++
			c.mu.Unlock()
			defer func() { recover() }() // the writer may panic again
			io.WriteString(w, fmt.Sprintf("[%8.3f] hyperroot: error: console: internal error: panic: %v (recovered; a line was lost)\n", uptime(), v))
		}
	}()
	if n := c.dropped.Swap(0); n > 0 {
		io.WriteString(w, fmt.Sprintf("[%8.3f] hyperroot: console: dropped %d VM console lines: the console is slower than the VMs\n", uptime(), n))
	}
	if c.tap != nil {
		c.tap(line)
	}
	io.WriteString(w, line)
}

// Flush waits until every queued line is written, or timeout passes.
func (c *console) Flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for c.pending.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// Printf writes one "hyperroot: ..." line.
func (c *console) Printf(format string, args ...any) {
	line := fmt.Sprintf("[%8.3f] hyperroot: %s\n", uptime(), fmt.Sprintf(format, args...))
	c.pending.Add(1)
	c.lines <- line
}

// Relay writes a line of VM name's serial console as "<name>| <line>".
func (c *console) Relay(name, line string) {
	line = cutLine(line)
	c.pending.Add(1)
	select {
	case c.lines <- name + "| " + line + "\n":
	default:
		c.pending.Add(-1)
		c.dropped.Add(1)
	}
}

// RelayAll is Relay for output that must not be lost, such as a test
// job's results: it waits for room in the queue instead of dropping.
func (c *console) RelayAll(name, line string) {
	line = cutLine(line)
	c.pending.Add(1)
	c.lines <- name + "| " + line + "\n"
}

// maxRelayLine bounds what one relayed line may hold in the console's
// queue: children's lines arrive in pieces of up to 64 KiB
// (internal/child), and a queue of consoleQueue such pieces from a chatty
// guest would pin 256 MiB of PID 1's memory; cut, it holds 16 MiB at most.
// A serial console shows 4 KiB in about a third of a second anyway.
const maxRelayLine = 4 << 10

// cutLine shortens a line longer than maxRelayLine, saying how much went.
func cutLine(line string) string {
	if len(line) <= maxRelayLine {
		return line
	}
	return fmt.Sprintf("%s... [cut %d bytes]", line[:maxRelayLine], len(line)-maxRelayLine)
}

// Errorf reports a failed boot step: the appliance carries on, and the
// failure is counted so that oneshot mode reports it.
func (c *console) Errorf(step string, err error) {
	c.mu.Lock()
	c.errors++
	c.mu.Unlock()
	c.Printf("error: %s: %v", step, err)
}

// Errors returns the number of errors reported.
func (c *console) Errors() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errors
}

// openConsole returns the kernel console; PID 1 normally inherits it as
// stdout, but a missing /dev/console in the initramfs leaves stdout closed.
func openConsole() io.Writer {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		return f
	}
	return os.Stdout
}
