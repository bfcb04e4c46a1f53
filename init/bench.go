package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The boot benchmark (hyperroot.bench=boot on the kernel command line, in an
// image built with `mkimage -bench`, which adds the peer VMM gokvm as
// /bin/gokvm): both VMMs boot the same guest kernel and initramfs with the
// same command line, alternately, in the same appliance run; the time from
// starting the VMM process to the guest's init printing "guest: booted" is
// compared. The machine is shared and noisy, so only the ratio of medians
// measured side by side means anything.

const (
	benchRounds  = 3
	benchCmdline = "console=ttyS0 quiet panic=-1 hyperroot.guest=wait"
	benchMemory  = "256M"
	gokvmPath    = "/bin/gokvm"
)

// runBench runs the benchmarks hyperroot.bench= names, comma-separated:
// boot (this file), disk (benchdisk.go) and net (benchnet.go). Each
// reports on the console; the first that fails ends the run, since a broken
// benchmark's later figures would be read as real.
func runBench(c *console, r *reaper, names string) error {
	for _, name := range strings.Split(names, ",") {
		var err error
		switch name {
		case "boot":
			err = runBootBench(c, r)
		case "disk":
			err = runDiskBench(c, r)
		case "net":
			err = runNetBench(c, r)
		default:
			err = fmt.Errorf("unknown benchmark %q (known: boot, disk, net)", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

type benchPeer struct {
	name string
	argv []string
}

func runBootBench(c *console, r *reaper) error {
	if _, err := os.Stat(gokvmPath); err != nil {
		return fmt.Errorf("no peer VMM in this image (%v): build it with mkimage -bench", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kernel, initrd := "/guest/vmlinuz", "/guest/initramfs.cpio"
	peers := []benchPeer{
		{"hyperroot", []string{self, "vmm", "--name", "bench", "--kernel", kernel, "--initrd", initrd,
			"--cmdline", benchCmdline, "--cpus", "1", "--memory", benchMemory}},
		{"gokvm", []string{gokvmPath, "boot", "-k", kernel, "-i", initrd, "-p", benchCmdline, "-c", "1", "-m", benchMemory}},
	}
	times := map[string][]time.Duration{}
	for round := 1; round <= benchRounds; round++ {
		for _, p := range peers {
			d, rss, err := bootOnce(r, p, p.name == "hyperroot")
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			times[p.name] = append(times[p.name], d)
			c.Printf("bench: boot round=%d vmm=%s time-to-init=%.3fs", round, p.name, d.Seconds())
			if rss != "" {
				c.Printf("bench: memory vmm=%s %s", p.name, rss)
			}
		}
	}
	ours, theirs := median(times["hyperroot"]), median(times["gokvm"])
	c.Printf("bench: boot hyperroot=%.3fs gokvm=%.3fs ratio=%.2f (median of %d, hyperroot/gokvm, lower is better)",
		ours.Seconds(), theirs.Seconds(), ours.Seconds()/theirs.Seconds(), benchRounds)
	return nil
}

// bootOnce starts one VMM, waits for the guest's init to report, optionally
// samples its memory, and kills it.
func bootOnce(r *reaper, p benchPeer, sample bool) (time.Duration, string, error) {
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	out, w, err := os.Pipe()
	if err != nil {
		return 0, "", err
	}
	cmd.Stdout, cmd.Stderr = w, w
	start := time.Now()
	wait, err := r.Start(cmd)
	w.Close()
	if err != nil {
		out.Close()
		return 0, "", err
	}
	booted := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "guest: booted") {
				booted <- time.Since(start)
				break
			}
		}
		for sc.Scan() { // drain until the process is gone
		}
	}()
	var d time.Duration
	var rss string
	select {
	case d = <-booted:
		if sample {
			time.Sleep(500 * time.Millisecond) // let the guest settle into its idle loop
			rss = memorySample(cmd.Process.Pid)
		}
	case ws := <-wait:
		out.Close()
		return 0, "", fmt.Errorf("exited before the guest booted: %v", exitReason(ws))
	case <-time.After(5 * time.Minute):
		err = fmt.Errorf("guest did not boot within 5 minutes")
	}
	unix.Kill(cmd.Process.Pid, unix.SIGKILL)
	<-wait
	out.Close()
	return d, rss, err
}

// memorySample reads a process's resident memory from /proc: guest RAM is
// the memfd mapping (named "/memfd:..." in smaps), so what the VMM itself
// costs is everything else that is resident: Go heap and stacks, and the
// pages of its own binary (which, living in the initramfs, count as shmem
// too, so RssShmem alone would hide them).
func memorySample(pid int) string {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return err.Error()
	}
	kb := map[string]int{}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			kb[k], _ = strconv.Atoi(f[0])
		}
	}
	guest, inGuest := 0, false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			inGuest = len(f) >= 6 && strings.HasPrefix(f[5], "/memfd:")
		case inGuest && len(f) == 3 && f[0] == "Rss:":
			n, _ := strconv.Atoi(f[1])
			guest += n
		}
	}
	return fmt.Sprintf("rss=%dKiB guest-touched=%dKiB overhead=%dKiB (anon=%dKiB)",
		kb["VmRSS"], guest, kb["VmRSS"]-guest, kb["RssAnon"])
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
