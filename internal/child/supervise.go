package child

import (
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Backoff spaces restarts: the first comes after Min, each next one after
// twice the last, at most Max. A run that lasted Reset or longer, or ended
// with exit status 0, starts again from Min: only a child that fails at
// once again and again waits long.
type Backoff struct {
	Min, Max, Reset time.Duration
}

// next is the delay after a run that ended with ws after ran, given the
// previous delay (0 for none).
func (b Backoff) next(prev time.Duration, ws unix.WaitStatus, ran time.Duration) time.Duration {
	if prev == 0 || (ws.Exited() && ws.ExitStatus() == 0) || ran >= b.Reset {
		return b.Min
	}
	return min(2*prev, b.Max)
}

// Run is what Supervise does with each run of a child; its funcs are
// called on the supervising goroutine.
type Run struct {
	// Start starts one run (Start(starter, spec), after whatever it needs
	// to prepare, such as opening files) and may report it. An error ends
	// the supervision (Supervisor.Err). It must not call the Supervisor.
	Start func() (*Process, error)
	// Exited reports how a run ended and says whether to run again; once
	// Stop was called the answer is ignored: nothing restarts then.
	Exited func(ws unix.WaitStatus, ran time.Duration) (again bool)
	// Restarting reports the delay before the next run (may be nil).
	Restarting func(delay time.Duration)
	Backoff    Backoff
}

// Supervisor runs a child again and again as its Run says, until Exited
// says no, a start fails, or Stop.
type Supervisor struct {
	run  Run
	stop chan struct{} // closed by Stop
	done chan struct{} // closed when the supervision ended
	err  error

	mu       sync.Mutex
	cur      *Process
	stopping bool
}

// Supervise starts supervising on a goroutine of its own; the first run
// starts at once.
func Supervise(run Run) *Supervisor {
	s := &Supervisor{run: run, stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

// The supervision runs Run's callbacks on its own goroutine; in PID 1 a
// panic in one would end PID 1 and every VM with it. A panic ends this
// supervision instead, with an error that says so (Err).
func (s *Supervisor) loop() {
	defer close(s.done)
	defer func() {
		if v := recover(); v != nil {
			s.err = fmt.Errorf("supervision: internal error: panic: %v\n%s", v, debug.Stack())
		}
	}()
	var delay time.Duration
	for {
		// Under the lock, so that Stop either sees the new process or
		// prevents it.
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			return
		}
		start := time.Now()
		p, err := safeStart(s.run.Start) // a panic here must not leave s.mu locked
		if err != nil {
			s.err = err
			s.mu.Unlock()
			return
		}
		s.cur = p
		s.mu.Unlock()

		ws := p.Wait()
		ran := time.Since(start)
		s.mu.Lock()
		s.cur = nil
		stopping := s.stopping
		s.mu.Unlock()
		again := s.run.Exited(ws, ran)
		if stopping || !again {
			return
		}
		delay = s.run.Backoff.next(delay, ws, ran)
		if s.run.Restarting != nil {
			s.run.Restarting(delay)
		}
		select {
		case <-time.After(delay):
		case <-s.stop:
			return
		}
	}
}

// safeStart calls start, turning a panic into an error.
func safeStart(start func() (*Process, error)) (p *Process, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("start: internal error: panic: %v\n%s", v, debug.Stack())
		}
	}()
	return start()
}

// Process is the running child, or nil between runs.
func (s *Supervisor) Process() *Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Done is closed when the supervision has ended: the last run exited and
// was reported, or a start failed.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Err is the start error that ended the supervision, if one did; valid
// after Done.
func (s *Supervisor) Err() error {
	<-s.done
	return s.err
}

// Stop ends the supervision: no more restarts, the running child gets
// SIGTERM and grace to exit, then killing is called (if not nil) and it
// gets SIGKILL. It returns when the supervision has ended.
func (s *Supervisor) Stop(grace time.Duration, killing func()) {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		close(s.stop)
	}
	p := s.cur
	s.mu.Unlock()
	if p != nil {
		go p.terminate(time.Now().Add(grace))
	}
	select {
	case <-s.done:
		return
	case <-time.After(grace):
	}
	if p := s.Process(); p != nil {
		if killing != nil {
			killing()
		}
		p.Signal(unix.SIGKILL)
	}
	<-s.done
}
