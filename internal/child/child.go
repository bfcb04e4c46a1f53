// Package child runs the supervisor's child processes (the VMMs, the
// switch, the benchmark's peers): start with inherited files and a stdin
// pipe, relay the output line by line, keep its last lines, wait, stop with
// a grace period then SIGKILL, and restart with back-off (Supervise). It is
// the one place a child is started, so that the isolation work can put
// each VMM into its jail here.
//
// Waiting belongs to a Starter: in PID 1 that is the reaper, which waits
// for every pid because it inherits all orphans (a second waiter would race
// with it); elsewhere Direct, which uses exec.Cmd.Wait.
package child

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/jail"
)

// Starter starts cmd and returns a channel that receives its wait status
// once. PID 1's reaper is one; Direct is the other.
type Starter interface {
	Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error)
}

// Direct starts children of a process that is not PID 1 and waits for them
// with exec.Cmd.Wait. Nothing else in the process may wait for any pid.
type Direct struct{}

// StatusLost is the exit status Direct reports for a child that something
// else in the process waited for, so that its real status is unknown.
const StatusLost = 255

// Start implements Starter.
func (Direct) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		cmd.Wait() // an exit status other than 0 is an error here: the status says it
		if cmd.ProcessState == nil {
			// Something else in this process waited for it (a
			// wait(-1) of its own): the status is lost.
			ch <- unix.WaitStatus(StatusLost << 8)
			return
		}
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		ch <- unix.WaitStatus(ws)
	}()
	return ch, nil
}

// Spec describes a child process.
type Spec struct {
	Path string
	Args []string // after Path (argv[1:])
	Env  []string // nil: the parent's environment
	Dir  string   // "": the parent's working directory
	// ExtraFiles become the child's descriptors 3, 4, ... The caller
	// keeps its own copies and may close them once Start returned.
	ExtraFiles []*os.File
	// Stdin gives the child a pipe on its standard input, which
	// Process.Write feeds; otherwise it reads /dev/null.
	Stdin bool
	// Line is called with each line the child writes to stdout or stderr
	// (one pipe, so in the order written), without the line end or a
	// trailing carriage return; a line longer than MaxLine comes in
	// pieces. Calls are made one at a time, in order, and never after
	// Done. It must not block for long: the child stalls while it does;
	// it may call the Process's methods other than Tail.
	Line func(string)
	// Tail is how many of the last lines Process.Tail keeps.
	Tail int
	// Started, if not nil, is called with the child's pid once it runs
	// and before any of its lines reach Line, so that a report of the
	// start comes before the child's output.
	Started func(pid int)
	// Attr are the child's process attributes; nil means a session of its
	// own (no terminal signals) and SIGKILL when the parent dies.
	Attr *syscall.SysProcAttr
	// StopReady, if not nil, says whether the child (by pid) handles
	// SIGTERM yet; a stop waits for it (within its grace) before sending
	// SIGTERM. A child that is the init of its own PID namespace (a jail)
	// loses a SIGTERM that comes before its handler: the kernel drops
	// it, and Go's runtime, between its own handler and signal.Notify,
	// exits with status 2 instead of dying of it.
	StopReady func(pid int) bool
}

// MaxLine is the longest line Spec.Line receives whole.
const MaxLine = 64 << 10

// drainTime bounds the wait for the output to end once the child exited:
// a grandchild still holding the pipe must not hold up its supervisor.
const drainTime = 2 * time.Second

// ErrExited is returned for a signal to, or a write for, a child that is
// gone.
var ErrExited = errors.New("the process has exited")

// Process is a started child.
type Process struct {
	cmd   *exec.Cmd
	pid   int
	ready func(pid int) bool // Spec.StopReady
	stdin *os.File
	done  chan struct{} // closed once it exited and its output ended
	ws    unix.WaitStatus

	mu     sync.Mutex
	exited bool // the status arrived: no more signals
	inDone bool // the input pipe is closed

	lineMu sync.Mutex // serialises Line calls; guards what follows
	closed bool       // Done: no more Line calls
	tail   []string
	keep   int
}

// Start starts the child described by spec through s. No descriptor of the
// parent but the child's standard streams and ExtraFiles crosses exec,
// even one the parent holds without close-on-exec.
func Start(s Starter, spec Spec) (*Process, error) {
	if err := jail.CloseOnExec(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env, cmd.Dir, cmd.ExtraFiles = spec.Env, spec.Dir, spec.ExtraFiles
	cmd.SysProcAttr = spec.Attr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	}
	out, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: output pipe: %w", spec.Path, err)
	}
	cmd.Stdout, cmd.Stderr = outW, outW
	var inR, inW *os.File
	if spec.Stdin {
		if inR, inW, err = os.Pipe(); err != nil {
			out.Close()
			outW.Close()
			return nil, fmt.Errorf("start %s: input pipe: %w", spec.Path, err)
		}
		cmd.Stdin = inR
	}
	wait, err := s.Start(cmd)
	// The child has its own copies from here on.
	outW.Close()
	if inR != nil {
		inR.Close()
	}
	if err != nil {
		out.Close()
		if inW != nil {
			inW.Close()
		}
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, ready: spec.StopReady, stdin: inW, done: make(chan struct{}), keep: spec.Tail}
	if spec.Started != nil {
		spec.Started(p.pid)
	}
	relayed := make(chan struct{})
	go p.relay(out, spec.Line, relayed)
	go p.finish(wait, out, relayed)
	return p, nil
}

// relay reads the child's output until it ends.
func (p *Process) relay(out io.Reader, line func(string), relayed chan<- struct{}) {
	defer close(relayed)
	r := bufio.NewReaderSize(out, MaxLine)
	for {
		b, err := r.ReadSlice('\n')
		if len(b) > 0 {
			b = bytes.TrimSuffix(b, []byte("\n"))
			b = bytes.TrimRight(b, "\r")
			p.line(string(b), line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (p *Process) line(s string, line func(string)) {
	p.lineMu.Lock()
	defer p.lineMu.Unlock()
	if p.closed {
		return
	}
	if p.keep > 0 {
		if len(p.tail) == p.keep {
			p.tail = append(p.tail[:0], p.tail[1:]...)
		}
		p.tail = append(p.tail, s)
	}
	if line != nil {
		line(s)
	}
}

// finish waits for the exit status, then for the output to end.
func (p *Process) finish(wait <-chan unix.WaitStatus, out *os.File, relayed <-chan struct{}) {
	ws := <-wait
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()
	select {
	case <-relayed:
	case <-time.After(drainTime):
	}
	p.lineMu.Lock()
	p.closed = true
	p.lineMu.Unlock()
	p.mu.Lock()
	p.inDone = true
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.cmd.Process.Release()
	p.mu.Unlock()
	out.Close()
	p.ws = ws
	close(p.done)
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.pid }

// Done is closed once the child has exited and its output has been relayed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for Done and returns the child's wait status.
func (p *Process) Wait() unix.WaitStatus {
	<-p.done
	return p.ws
}

// Tail returns the last Spec.Tail lines of the child's output.
func (p *Process) Tail() []string {
	p.lineMu.Lock()
	defer p.lineMu.Unlock()
	return append([]string(nil), p.tail...)
}

// Signal sends sig to the child; once it has exited, it returns ErrExited
// and signals nothing (the pid may be another process's by then).
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return ErrExited
	}
	// os.Process signals through a pidfd where the kernel has them, which
	// no other process can ever be.
	if err := p.cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return ErrExited
		}
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), p.pid, err)
	}
	return nil
}

// InputTimeout bounds a Write to a child's standard input: a child that
// reads none of it for that long (a VMM whose guest stopped reading its
// serial port, once the pipe's 64 KiB are full) fails the write instead of
// holding the writer, which may be the console's reader or an API request.
var InputTimeout = 5 * time.Second

// ErrInputStalled is a Write that InputTimeout ended.
var ErrInputStalled = errors.New("the process reads none of its input")

// Write writes to the child's standard input (Spec.Stdin), within
// InputTimeout.
func (p *Process) Write(b []byte) (int, error) {
	p.mu.Lock()
	in, closed := p.stdin, p.inDone
	p.mu.Unlock()
	switch {
	case in == nil:
		return 0, errors.New("the process has no input pipe")
	case closed:
		return 0, ErrExited
	}
	// The pipe is the runtime poller's (os.Pipe): deadlines work on it.
	if err := in.SetWriteDeadline(time.Now().Add(InputTimeout)); err != nil {
		return in.Write(b)
	}
	n, err := in.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w (%d of %d bytes written in %s)", ErrInputStalled, n, len(b), InputTimeout)
	}
	return n, err
}

// Stop asks the child to finish with SIGTERM and waits for it; after grace
// it calls killing (if not nil), sends SIGKILL and waits on. It returns the
// wait status.
func (p *Process) Stop(grace time.Duration, killing func()) unix.WaitStatus {
	go p.terminate(time.Now().Add(grace))
	select {
	case <-p.done:
	case <-time.After(grace):
		if killing != nil {
			killing()
		}
		p.Signal(unix.SIGKILL)
	}
	return p.Wait()
}

// stopReadyPoll is how often terminate looks whether the child handles
// SIGTERM yet: its runtime takes milliseconds to get there.
const stopReadyPoll = 10 * time.Millisecond

// terminate sends SIGTERM once the child handles it (Spec.StopReady), or at
// the deadline, or not at all if it exits first.
func (p *Process) terminate(deadline time.Time) {
	for p.ready != nil && !p.ready(p.pid) && time.Now().Before(deadline) {
		select {
		case <-p.done:
			return
		case <-time.After(stopReadyPoll):
		}
	}
	p.Signal(unix.SIGTERM)
}
