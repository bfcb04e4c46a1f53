package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runJob is the program named by hyperroot.run=<path>[,<arg>...] on the
// kernel command line: PID 1 runs it once, after the appliance is ready, as
// a child like the VMs (its output relayed as "run| <line>", its end
// reported as "run exited code=<n>"). It is how the image-testing side puts
// work of its own into an appliance without a shell: the e2e suite runs the
// test binaries of the packages that need /dev/kvm this way on machines
// whose host has none, and the benchmark image runs its benchmark program.
// In oneshot mode the verdict waits for it, and a non-zero exit fails it.
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

// runOnce starts the job in its own directory, relays its output and
// returns its exit code (128+n for a signal). The job gets the console
// environment PID 1 has plus HYPERROOT_STRICT=1: what a job needs from the
// appliance must be there, so its tests fail rather than skip.
func (j *runJob) run(c *console, r *reaper) (int, error) {
	cmd := exec.Command(j.Path, j.Args...)
	cmd.Dir = filepath.Dir(j.Path)
	cmd.Env = append(os.Environ(), "HYPERROOT_STRICT=1", "HOME=/tmp", "TMPDIR=/tmp")
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Stderr = outW, outW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	wait, err := r.Start(cmd)
	outW.Close()
	if err != nil {
		outR.Close()
		return 0, fmt.Errorf("start %s: %w", j.Path, err)
	}
	c.Printf("run started pid=%d %s", cmd.Process.Pid, strings.Join(append([]string{j.Path}, j.Args...), " "))
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			c.RelayAll("run", strings.TrimRight(sc.Text(), "\r"))
		}
	}()
	ws := <-wait
	// A grandchild may still hold the pipe: do not wait for it for ever.
	select {
	case <-relayed:
	case <-time.After(2 * time.Second):
	}
	outR.Close()
	cmd.Process.Release()
	code := exitCode(ws)
	reason := "exit"
	if ws.Signaled() {
		reason = "killed signal=" + unix.SignalName(ws.Signal())
	}
	c.Printf("run exited code=%d reason=%s", code, reason)
	return code, nil
}
