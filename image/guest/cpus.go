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

// onlineCPUs brings CPUs the kernel left offline online: every present one
// with hyperroot.online=all on the command line, or those of a list such as
// hyperroot.online=1,511,1023. A big guest booted with maxcpus=1 starts its
// other CPUs here, after boot, through the same INIT/SIPI path the kernel's
// SMP bring-up takes; it exists for the end-to-end tests under nested QEMU
// TCG, where a 64-vCPU guest's idle APs, each ticking at 250 Hz on a
// periodic LAPIC timer until the kernel switches to one-shot ticks late in
// boot, starve the boot CPU for minutes. CPUs onlined after boot start in
// one-shot mode and cost nothing while idle. A list reaches the highest
// vCPUs of a 1024-vCPU guest (x2APIC ids) without waiting for the others.
// It prints progress every 8 CPUs and one line at the end:
// "guest: online <n> CPUs brought up in <ms> ms (present <p>)" (or a FAIL
// line per CPU that would not come up).
func onlineCPUs(cmdline []string) {
	var spec string
	for _, f := range cmdline {
		if v, ok := strings.CutPrefix(f, "hyperroot.online="); ok {
			spec = v
		}
	}
	if spec == "" {
		return
	}
	var files []string
	if spec == "all" {
		files, _ = filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*/online")
	} else {
		cpus, err := idlist.Parse(spec, 1<<16)
		if err != nil {
			fmt.Printf("guest: FAIL hyperroot.online=%s: %v\n", spec, err)
			return
		}
		for _, c := range cpus {
			files = append(files, fmt.Sprintf("/sys/devices/system/cpu/cpu%d/online", c))
		}
	}
	start := time.Now()
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil && spec == "all" || err == nil && strings.TrimSpace(string(b)) != "0" {
			continue
		}
		if err == nil {
			err = os.WriteFile(f, []byte("1"), 0)
		}
		if err != nil {
			fmt.Printf("guest: FAIL online %s: %v\n", filepath.Base(filepath.Dir(f)), err)
			continue
		}
		if n++; n%8 == 0 {
			fmt.Printf("guest: online %d CPUs so far\n", n)
		}
	}
	fmt.Printf("guest: online %d CPUs brought up in %d ms (present %d)\n", n, time.Since(start).Milliseconds(), countList("present"))
}

// onlineCount is how many CPUs are online now.
func onlineCount() int { return countList("online") }

// countList counts the CPUs of /sys/devices/system/cpu/<name> (online,
// present, possible: a list of ranges such as "0-3,5"); runtime.NumCPU,
// fixed at start, where that cannot be read.
func countList(name string) int {
	b, err := os.ReadFile("/sys/devices/system/cpu/" + name)
	if err != nil {
		return runtime.NumCPU()
	}
	cpus, err := idlist.Parse(strings.TrimSpace(string(b)), 1<<16)
	if err != nil {
		return runtime.NumCPU()
	}
	return len(cpus)
}
