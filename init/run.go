package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// runJob is the program named by hyperroot.run=<path>[,<arg>...] on the
// kernel command line: PID 1 runs it once, after the appliance is ready, as
// a child like the VMs (its output relayed as "run| <line>", its end
// reported as "run exited code=<n>"). It is how the image-testing side puts
// work of its own into an appliance without a shell: the e2e suite runs the
// test binaries of the packages that need /dev/kvm this way on machines
// whose host has none, and the benchmark image runs its benchmark program.
// In oneshot mode the verdict waits for it, and a non-zero exit fails it.
// Its standard input is the console's "@run <text>" lines, so a test can
// tell a job when to stop.
type runJob struct {
	Path string
	Args []string
}

// parseRunJob splits hyperroot.run's value: commas separate the program
// from its arguments, since a kernel parameter cannot hold spaces.
func parseRunJob(v string) (*runJob, error) {
	if v == "" {
		return nil, nil
	}
	f := strings.Split(v, ",")
	if !filepath.IsAbs(f[0]) {
		return nil, fmt.Errorf("hyperroot.run=%s: the program must be an absolute path", v)
	}
	return &runJob{Path: f[0], Args: f[1:]}, nil
}

// run starts the job in its own directory, relays its output and returns
// its exit code (128+n for a signal). The job gets the console environment
// PID 1 has plus HYPERROOT_STRICT=1: what a job needs from the appliance
// must be there, so its tests fail rather than skip.
func (j *runJob) run(c *console, r child.Starter) (int, error) {
	p, err := child.Start(r, child.Spec{
		Path: j.Path, Args: j.Args, Dir: filepath.Dir(j.Path), Stdin: true,
		Env: append(os.Environ(), "HYPERROOT_STRICT=1", "HOME=/tmp", "TMPDIR=/tmp"),
		Started: func(pid int) {
			c.Printf("run started pid=%d %s", pid, strings.Join(append([]string{j.Path}, j.Args...), " "))
		},
		Line: guardLines(c, "run output", func(line string) { c.RelayAll("run", line) }),
	})
	if err != nil {
		return 0, err
	}
	runProcess.Store(p)
	defer runProcess.Store(nil)
	ws := p.Wait()
	code := vmmcli.Code(ws)
	reason := "exit"
	if ws.Signaled() {
		reason = "killed signal=" + unix.SignalName(ws.Signal())
	}
	c.Printf("run exited code=%d reason=%s", code, reason)
	return code, nil
}

// runProcess is the running hyperroot.run job, for the console's "@run".
var runProcess atomic.Pointer[child.Process]

// runInput sends a console line to the job's standard input.
func runInput(line string) error {
	p := runProcess.Load()
	if p == nil {
		return errors.New("no run job is running")
	}
	_, err := p.Write([]byte(line + "\n"))
	return err
}
