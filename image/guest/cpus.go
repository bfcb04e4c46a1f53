package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/internal/idlist"
)

// onlineCPUs brings every present CPU the kernel left offline online, when
// the command line has hyperroot.online=all. A big guest booted with
// maxcpus=1 starts its other CPUs here, after boot, through the same
// INIT/SIPI path the kernel's SMP bring-up takes; it exists for the
// end-to-end tests under nested QEMU TCG, where a 64-vCPU guest's idle APs,
// each ticking at 250 Hz on a periodic LAPIC timer until the kernel switches
// to one-shot ticks late in boot, starve the boot CPU for minutes. CPUs
// onlined after boot start in one-shot mode and cost nothing while idle.
// It prints progress every 8 CPUs and one line at the end:
// "guest: online <n> CPUs brought up in <ms> ms" (or a FAIL line per CPU
// that would not come up).
func onlineCPUs(cmdline []string) {
	want := false
	for _, f := range cmdline {
		if f == "hyperroot.online=all" {
			want = true
		}
	}
	if !want {
		return
	}
	start := time.Now()
	files, _ := filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*/online")
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) != "0" {
			continue
		}
		if err := os.WriteFile(f, []byte("1"), 0); err != nil {
			fmt.Printf("guest: FAIL online %s: %v\n", filepath.Base(filepath.Dir(f)), err)
			continue
		}
		if n++; n%8 == 0 {
			fmt.Printf("guest: online %d CPUs so far\n", n)
		}
	}
	fmt.Printf("guest: online %d CPUs brought up in %d ms\n", n, time.Since(start).Milliseconds())
}

// onlineCount is how many CPUs are online now (/sys/devices/system/cpu/online,
// a list of ranges such as "0-3,5"); runtime.NumCPU, fixed at start, where
// that cannot be read.
func onlineCount() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	cpus, err := idlist.Parse(strings.TrimSpace(string(b)), 1<<16)
	if err != nil {
		return runtime.NumCPU()
	}
	return len(cpus)
}
