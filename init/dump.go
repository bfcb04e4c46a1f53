package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
)

// A VMM answers dumpSignal by printing its state on stderr, one line each
// "hyperroot vmm: dump <tag>: ...", ending with "... <tag>: end"
// (machine.Machine.Dump: per vCPU where its thread is, mp_state, registers,
// local APIC and pending events; then the VMM's goroutine stacks). The tag
// is a secret of this start of the VMM (--dump-tag, random): its guest's
// console output reaches the supervisor through the same pipe, and a guest
// printing "hyperroot vmm: dump: end" must not end a dump wait. The
// supervisor relays the tagged lines without the tag, as
// "<vm>| hyperroot vmm: dump: ...", and acts on those alone.
const (
	dumpSignal = unix.SIGUSR1
	dumpPrefix = "hyperroot vmm: dump: "
	dumpEnd    = "end"
)

// dumpLinePrefix is what starts each line of a dump by a VMM given tag ("":
// an untagged VMM, run by hand).
func dumpLinePrefix(tag string) string {
	if tag == "" {
		return dumpPrefix
	}
	return "hyperroot vmm: dump " + tag + ": "
}

// newDumpTag is a fresh random tag for one start of a VMM.
func newDumpTag() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// dumpLine reports whether line (of a VMM started with tag) is a line of
// its dump, and returns it as relayed, without the tag.
func dumpLine(line, tag string) (relayed string, ok bool) {
	rest, ok := strings.CutPrefix(line, dumpLinePrefix(tag))
	if !ok {
		return line, false
	}
	return dumpPrefix + rest, true
}

// stopReadySignal is the signal a VMM ignores once it handles SIGTERM
// (SigIgn of /proc/<pid>/status): a VMM never gets it otherwise, being in
// a session of its own with no terminal.
const stopReadySignal = unix.SIGHUP

// dumpTimeout bounds the wait for one VMM's dump: a VMM whose vCPUs do not
// answer gives up on each after 2 s (machine.dumpWait), so this is ample
// for a few vCPUs and still ends the wait on a VMM that cannot answer.
const dumpTimeout = 30 * time.Second

// Running lists the VMs whose VMM runs, by name.
func (f *fleet) Running() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name, e := range f.vms {
		if e.sup.Process() != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Dump asks VM name's VMM for its state and waits until its last line was
// relayed, or timeout.
func (f *fleet) Dump(name string, timeout time.Duration) error {
	f.mu.Lock()
	e := f.vms[name]
	f.mu.Unlock()
	var p *child.Process
	if e != nil {
		p = e.sup.Process()
	}
	if p == nil {
		return fmt.Errorf("no running vm %q", name)
	}
	drain(e.begun) // the lines of an earlier dump nobody waited for
	drain(e.dumped)
	deadline := time.Now().Add(timeout)
	// Until its Go runtime has installed its signal handlers, a VMM just
	// started would die of the signal (the default action): wait for them.
	for !catches(p.Pid(), dumpSignal) {
		if time.Now().After(deadline) {
			return fmt.Errorf("vmm pid %d did not install its signal handlers within %s", p.Pid(), timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Between the runtime's handlers and the VMM's own signal.Notify the
	// runtime ignores the signal: ask again until the dump begins.
	for {
		if err := p.Signal(dumpSignal); err != nil {
			return fmt.Errorf("signal vmm pid %d: %w", p.Pid(), err)
		}
		select {
		case <-e.begun:
		case <-time.After(min(dumpResend, time.Until(deadline))):
			if time.Now().Before(deadline) {
				continue
			}
			return fmt.Errorf("vmm pid %d did not begin a dump within %s", p.Pid(), timeout)
		}
		break
	}
	select {
	case <-e.dumped:
		return nil
	case <-time.After(time.Until(deadline)):
		return fmt.Errorf("vmm pid %d did not finish its dump within %s", p.Pid(), timeout)
	}
}

// dumpResend is how long Dump waits for the first line of a dump before it
// signals again: a VMM writes that line as soon as it takes the signal.
const dumpResend = 3 * time.Second

func drain(c chan struct{}) {
	select {
	case <-c:
	default:
	}
}

// notify signals c without blocking (a signal already pending is enough).
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// catches reports whether process pid has a handler for sig (the SigCgt
// mask of /proc/<pid>/status).
func catches(pid int, sig unix.Signal) bool { return sigMask(pid, "SigCgt", sig) }

// ignores reports whether process pid ignores sig (SigIgn).
func ignores(pid int, sig unix.Signal) bool { return sigMask(pid, "SigIgn", sig) }

func sigMask(pid int, mask string, sig unix.Signal) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	return sigIn(string(b), mask, sig)
}

func sigCaught(status string, sig unix.Signal) bool { return sigIn(status, "SigCgt", sig) }

// sigIn reports whether sig is in signal mask mask (SigCgt, SigIgn, ...)
// of a /proc/<pid>/status text.
func sigIn(status, mask string, sig unix.Signal) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, mask+":"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && sig >= 1 && sig <= 64 && mask&(1<<(sig-1)) != 0
		}
	}
	return false
}

// DumpAll dumps every running VMM at once and waits for all of them.
func (f *fleet) DumpAll(timeout time.Duration) {
	var wg sync.WaitGroup
	for _, name := range f.Running() {
		wg.Add(1)
		goGuarded(f.c, "dump "+name, func() {
			defer wg.Done()
			if err := f.Dump(name, timeout); err != nil {
				f.c.Printf("dump %s: %v", name, err)
			}
		})
	}
	wg.Wait()
}
