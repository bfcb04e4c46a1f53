package child

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestBackoffNext(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 8 * time.Second, Reset: time.Minute}
	failed, clean := unix.WaitStatus(1<<8), unix.WaitStatus(0)
	for _, tc := range []struct {
		name string
		prev time.Duration
		ws   unix.WaitStatus
		ran  time.Duration
		want time.Duration
	}{
		{"first restart", 0, failed, 0, time.Second},
		{"doubles", 2 * time.Second, failed, time.Second, 4 * time.Second},
		{"at most Max", 8 * time.Second, failed, time.Second, 8 * time.Second},
		{"a clean exit starts afresh", 8 * time.Second, clean, time.Second, time.Second},
		{"a long run starts afresh", 8 * time.Second, failed, time.Minute, time.Second},
		{"a signal is a failure", 2 * time.Second, unix.WaitStatus(unix.SIGKILL), time.Second, 4 * time.Second},
	} {
		if got := b.next(tc.prev, tc.ws, tc.ran); got != tc.want {
			t.Errorf("%s: next = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// superviseSh supervises `sh -c script` with the given number of runs
// allowed, recording exits and delays.
type record struct {
	mu     sync.Mutex
	exits  []int
	delays []time.Duration
	ready  chan struct{} // receives when the child printed "ready" or a restart is pending
}

func superviseSh(t *testing.T, script string, runs int, b Backoff, r *record) *Supervisor {
	return Supervise(Run{
		Start: func() (*Process, error) {
			return Start(Direct{}, Spec{Path: "/bin/sh", Args: []string{"-c", script}, Line: func(l string) {
				if l == "ready" && r.ready != nil {
					r.ready <- struct{}{}
				}
			}})
		},
		Exited: func(ws unix.WaitStatus, ran time.Duration) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.exits = append(r.exits, ws.ExitStatus())
			return len(r.exits) < runs
		},
		Restarting: func(d time.Duration) {
			r.mu.Lock()
			r.delays = append(r.delays, d)
			r.mu.Unlock()
			if r.ready != nil {
				r.ready <- struct{}{}
			}
		},
		Backoff: b,
	})
}

func TestSuperviseRestarts(t *testing.T) {
	b := Backoff{Min: 10 * time.Millisecond, Max: 25 * time.Millisecond, Reset: time.Hour}
	for _, tc := range []struct {
		name   string
		script string
		exits  []int
		delays []time.Duration
	}{
		{"failing: back-off grows", "exit 3", []int{3, 3, 3, 3},
			[]time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 25 * time.Millisecond}},
		{"clean: back-off stays", "exit 0", []int{0, 0, 0},
			[]time.Duration{10 * time.Millisecond, 10 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r record
			s := superviseSh(t, tc.script, len(tc.exits), b, &r)
			select {
			case <-s.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("supervision did not end")
			}
			if !slices.Equal(r.exits, tc.exits) || !slices.Equal(r.delays, tc.delays) || s.Err() != nil {
				t.Errorf("exits %v delays %v err %v, want %v %v", r.exits, r.delays, s.Err(), tc.exits, tc.delays)
			}
		})
	}
}

func TestSuperviseStop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string
		backoff time.Duration
		killed  bool
		exits   []int
	}{
		{"running child exits on SIGTERM", `trap 'exit 5' TERM; echo ready; while :; do sleep 0.05; done`, time.Hour, false, []int{5}},
		{"running child killed after grace", `trap '' TERM; echo ready; while :; do sleep 0.05; done`, time.Hour, true, []int{-1}},
		{"stopped during back-off", `exit 1`, time.Hour, false, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := record{ready: make(chan struct{}, 1)}
			s := superviseSh(t, tc.script, 100, Backoff{Min: tc.backoff, Max: tc.backoff, Reset: time.Hour}, &r)
			select { // running, or waiting to restart
			case <-r.ready:
			case <-time.After(20 * time.Second):
				t.Fatal("the child never got going")
			}
			killed := false
			start := time.Now()
			s.Stop(500*time.Millisecond, func() { killed = true })
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Stop took %s", d)
			}
			if killed != tc.killed || !slices.Equal(r.exits, tc.exits) || s.Process() != nil {
				t.Errorf("killed %v exits %v, want %v %v", killed, r.exits, tc.killed, tc.exits)
			}
		})
	}
}

func TestSuperviseStartError(t *testing.T) {
	want := errors.New("disk missing")
	s := Supervise(Run{Start: func() (*Process, error) { return nil, want },
		Exited: func(unix.WaitStatus, time.Duration) bool { t.Error("Exited called"); return false }})
	if err := s.Err(); err != want {
		t.Errorf("Err = %v, want %v", err, want)
	}
	s.Stop(time.Second, nil) // after the end: returns at once
}

// TestSupervisePanics: a panic in one of Run's callbacks ends that
// supervision with an error that says so, not the process (in PID 1 it
// would take every VM down); Stop still works after it.
func TestSupervisePanics(t *testing.T) {
	for name, run := range map[string]Run{
		"start": {Start: func() (*Process, error) { panic("start broke") }},
		"exited": {
			Start:  func() (*Process, error) { return Start(Direct{}, Spec{Path: "/bin/true"}) },
			Exited: func(unix.WaitStatus, time.Duration) bool { panic("exited broke") },
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := Supervise(run)
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("supervision did not end after a panic")
			}
			if err := s.Err(); err == nil || !strings.Contains(err.Error(), "internal error: panic: "+name+" broke") {
				t.Errorf("Err = %v", err)
			}
			s.Stop(time.Second, nil)
		})
	}
}
