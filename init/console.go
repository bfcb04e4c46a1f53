package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// console writes the supervisor's lines to the system console, each stamped
// with the time since boot in the kernel's own format, so that they
// interleave readably with kernel messages. Lines are written whole, with one
// write each, so concurrent writers never tear them.
type console struct {
	mu     sync.Mutex
	w      io.Writer
	errors int // boot errors reported so far
}

func newConsole(w io.Writer) *console { return &console{w: w} }

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
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, line)
}

// Relay writes a line of VM name's serial console as "<name>| <line>".
func (c *console) Relay(name, line string) {
	out := name + "| " + line + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, out)
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
