package main

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/bench/result"
)

// The boot-log benchmark (hyperroot-bench bootlog): where the guest
// kernel's time goes under hyperroot and under QEMU pc. The test guest
// boots with initcall_debug and prints its kernel's log with the kernel's
// own timestamps (the kmsg action), then powers off. For each VMM it
// prints when the kernel ran /init, the initcalls that took longest, and
// the longest silences between two records (where the kernel waited for
// something without saying so): the boot benchmark's phases say the
// guest's own boot is most of hyperroot's start, and this says which part.
const bootLogCmdline = "console=ttyS0 quiet panic=-1 initcall_debug log_buf_len=4M hyperroot.guest=kmsg"

// bootLogVMMs are the VMMs compared.
var bootLogVMMs = []string{"hyperroot", "hyperroot-bzimage", "qemu-pc"}

func runBootLogBench(e *env) error {
	var peers []benchPeer
	for _, p := range bootPeersWith(e.hyperroot, bootLogCmdline) {
		if slices.Contains(bootLogVMMs, p.name) {
			peers = append(peers, p)
		}
	}
	fig := result.Figure{Bench: "bootlog", Name: "guest kernel: its clock start to running /init", Unit: "s", Lower: true,
		Ours: "hyperroot", Values: map[string][]float64{}}
	for round := 1; round <= benchRounds; round++ {
		for _, p := range roundOrder(peers, round) {
			booted := settle(e, "bootlog", round, p.name)
			records, err := bootLog(e.starter, p)
			booted()
			tl := readTimeline(records)
			if err == nil && tl.init == 0 {
				err = fmt.Errorf("the guest's log has no 'Run /init' record (%d records)", len(records))
			}
			if err != nil && p.name == "hyperroot" {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if err != nil {
				// A peer's failure is its figure's, as in the boot
				// benchmark: the record counts the boots that came through.
				e.logf("bench: bootlog round=%d vmm=%s failed: %v", round, p.name, err)
				continue
			}
			fig.Values[p.name] = append(fig.Values[p.name], tl.init.Seconds())
			e.logf("bench: bootlog round=%d vmm=%s init=%.3fs records=%d", round, p.name, tl.init.Seconds(), len(records))
			for _, c := range tl.slowest(12) {
				e.logf("bench: bootlog round=%d vmm=%s initcall %s %.1fms", round, p.name, c.name, float64(c.d)/float64(time.Millisecond))
			}
			for _, g := range tl.gaps(8) {
				e.logf("bench: bootlog round=%d vmm=%s silence %.1fms at %.3fs after %q before %q", round, p.name, float64(g.d)/float64(time.Millisecond), g.at.Seconds(), g.prev, g.next)
			}
		}
	}
	e.logf("%s", fig.Line())
	return nil
}

// bootLog boots p once and returns its guest's "guest: kmsg" records.
func bootLog(starter child.Starter, p benchPeer) ([]string, error) {
	var records []string // only touched by Line until the process is done
	proc, err := child.Start(starter, child.Spec{Path: p.argv[0], Args: p.argv[1:], Tail: 16,
		Line: func(line string) {
			if _, rec, ok := strings.Cut(line, "guest: kmsg "); ok {
				records = append(records, rec)
			}
		}})
	if err != nil {
		return nil, err
	}
	select {
	case <-proc.Done():
	case <-time.After(bootTimeout):
		proc.Signal(unix.SIGKILL)
		proc.Wait()
		return nil, fmt.Errorf("did not power off within %v; output ended with %q", bootTimeout, proc.Tail())
	}
	if ws := proc.Wait(); len(records) == 0 {
		return nil, fmt.Errorf("no kernel log from the guest (%s); output ended with %q", vmmcli.Reason(ws), proc.Tail())
	}
	return records, nil
}

// timeline is a guest kernel's log read for where its boot went.
type timeline struct {
	init  time.Duration // when the kernel ran /init
	times []time.Duration
	texts []string
	calls []initcall
}

type initcall struct {
	name string
	d    time.Duration
}

var initcallRE = regexp.MustCompile(`^initcall (\S+?)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[\S+\])? returned -?\d+ after (\d+) usecs`)

// readTimeline parses "<seconds> <text>" records.
func readTimeline(records []string) timeline {
	var tl timeline
	for _, r := range records {
		ts, text, ok := strings.Cut(r, " ")
		if !ok {
			continue
		}
		secs, err := strconv.ParseFloat(ts, 64)
		if err != nil {
			continue
		}
		at := time.Duration(secs * float64(time.Second))
		tl.times, tl.texts = append(tl.times, at), append(tl.texts, text)
		if strings.HasPrefix(text, "Run /init as init process") && tl.init == 0 {
			tl.init = at
		}
		if m := initcallRE.FindStringSubmatch(text); m != nil {
			us, _ := strconv.ParseInt(m[2], 10, 64)
			tl.calls = append(tl.calls, initcall{m[1], time.Duration(us) * time.Microsecond})
		}
	}
	return tl
}

// slowest are the n initcalls that took longest, longest first.
func (tl timeline) slowest(n int) []initcall {
	c := slices.Clone(tl.calls)
	slices.SortStableFunc(c, func(a, b initcall) int { return int(b.d - a.d) })
	return c[:min(n, len(c))]
}

type gap struct {
	d, at      time.Duration // how long, and when it ended
	prev, next string        // the records before and after it
}

// gaps are the n longest silences between consecutive records up to
// /init, longest first.
func (tl timeline) gaps(n int) []gap {
	var out []gap
	for i := 1; i < len(tl.times); i++ {
		if tl.init > 0 && tl.times[i] > tl.init {
			break
		}
		out = append(out, gap{d: tl.times[i] - tl.times[i-1], at: tl.times[i], prev: tl.texts[i-1], next: tl.texts[i]})
	}
	slices.SortStableFunc(out, func(a, b gap) int { return int(b.d - a.d) })
	return out[:min(n, len(out))]
}
