package main

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A VMM answers dumpSignal by printing its state on stderr, one line each
// "hyperroot vmm: dump: ...", ending with dumpEndLine (machine.Machine.Dump:
// per vCPU where its thread is, mp_state, registers, local APIC and pending
// events; then the VMM's goroutine stacks). The supervisor relays the lines
// like any other of the VMM's output, as "<vm>| hyperroot vmm: dump: ...".
const (
	dumpSignal  = unix.SIGUSR1
	dumpPrefix  = "hyperroot vmm: dump: "
	dumpEndLine = dumpPrefix + "end"
)

// dumpTimeout bounds the wait for one VMM's dump: a VMM whose vCPUs do not
// answer gives up on each after 2 s (machine.dumpWait), so this is ample
// for a few vCPUs and still ends the wait on a VMM that cannot answer.
const dumpTimeout = 30 * time.Second

// Running lists the VMs whose VMM runs, by name.
func (f *fleet) Running() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name := range f.procs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Dump asks VM name's VMM for its state and waits until its last line was
// relayed, or timeout.
func (f *fleet) Dump(name string, timeout time.Duration) error {
	f.mu.Lock()
	p := f.procs[name]
	f.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no running vm %q", name)
	}
	select { // the end of an earlier dump nobody waited for
	case <-p.dumped:
	default:
	}
	if err := unix.Kill(p.pid, dumpSignal); err != nil {
		return fmt.Errorf("signal vmm pid %d: %w", p.pid, err)
	}
	select {
	case <-p.dumped:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("vmm pid %d did not finish its dump within %s", p.pid, timeout)
	}
}

// DumpAll dumps every running VMM at once and waits for all of them.
func (f *fleet) DumpAll(timeout time.Duration) {
	var wg sync.WaitGroup
	for _, name := range f.Running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.Dump(name, timeout); err != nil {
				f.c.Printf("dump %s: %v", name, err)
			}
		}()
	}
	wg.Wait()
}
