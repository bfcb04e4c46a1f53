package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// reaper collects every child that exits. PID 1 inherits all orphans, so
// it must wait for any pid; the children it supervises itself get their
// status delivered on the channel Start returned, and the rest (orphans) are
// merely counted. Supervised children must be started with Start (it is the
// child.Starter the supervisor hands internal/child) and never waited for
// with exec.Cmd.Wait, which would race with the reaper.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	orphans int
	sigc    chan os.Signal
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan unix.WaitStatus{}, sigc: make(chan os.Signal, 1)}
	signal.Notify(r.sigc, unix.SIGCHLD)
	return r
}

// Run reaps children for ever; run it in its own goroutine.
func (r *reaper) Run() {
	for range r.sigc {
		r.reapAll()
	}
}

func (r *reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		delete(r.waiters, pid)
		if !ok {
			r.orphans++
		}
		r.mu.Unlock()
		if ok {
			ch <- ws
		}
	}
}

// Start starts cmd and returns a channel that receives its wait status once.
// The lock is held across Start so that a child exiting at once cannot be
// taken for an orphan.
func (r *reaper) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// Orphans returns how many unsupervised children were reaped.
func (r *reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}
