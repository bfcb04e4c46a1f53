package main

import (
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

// A panic on any goroutine of PID 1 ends PID 1, and the kernel panics with
// it ("Attempted to kill init"), taking every VM down. Much of what PID 1's
// goroutines handle comes from guests and peers (console lines, console
// input, the switch's exits), so one bug there would be every VM's outage.
// Every goroutine PID 1 starts therefore runs under guard: a panic becomes
// an error on the console (it fails a oneshot run, as a bug should), with
// its stack, and PID 1 goes on. Goroutines that serve for the appliance's
// whole life run under goLoop, which starts them again. (The console's
// writer protects itself: see console.writeLine.)

// guard runs fn and reports whether it panicked; a panic is reported on c
// as an error of the named goroutine, with its stack.
func guard(c *console, name string, fn func()) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			c.Errorf(name, fmt.Errorf("internal error: panic: %v (recovered; going on)\n%s", v, indentStack(debug.Stack())))
		}
	}()
	fn()
	return false
}

// goGuarded runs fn once on a goroutine of its own, under guard.
func goGuarded(c *console, name string, fn func()) {
	go guard(c, name, fn)
}

// loopRestart is how long goLoop waits before it starts a goroutine that
// panicked again: a panic that comes back at once (the same bad input
// read again) must not flood the console.
var loopRestart = time.Second

// goLoop runs fn on a goroutine of its own, under guard, and starts it
// again each time it panics; it ends when fn returns.
func goLoop(c *console, name string, fn func()) {
	go func() {
		for guard(c, name, fn) {
			time.Sleep(loopRestart)
		}
	}()
}

// guardLines wraps a child's line callback (child.Spec.Line), which runs on
// the child package's relay goroutine in PID 1, so that a panic on one
// line is reported and costs that line only.
func guardLines(c *console, name string, line func(string)) func(string) {
	return func(l string) { guard(c, name, func() { line(l) }) }
}

// indentStack indents a stack trace so that each of its lines reads as
// part of the error above it.
func indentStack(stack []byte) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(string(stack), "\n"), "\n", "\n    ")
}
