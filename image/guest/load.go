package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The load actions make a guest use what QoS limits, for the resource
// control tests:
//
//	spin   keep the vCPU busy for hyperroot.spin= seconds (default 60) of
//	       the guest's clock, or with hyperroot.spin=0 until a line comes on
//	       its console, reporting "guest: spin start seconds=<n>" and
//	       "guest: spin done"; with hyperroot.spinwait=1 it first reports
//	       "guest: spin waiting" and idles until a line comes (a test
//	       measures a spinner for seconds: spinning all its life would take
//	       a core from its neighbours under emulation for minutes)
//	fill   allocate and touch hyperroot.fill= MiB (default 128) of memory,
//	       reporting "guest: fill <n> MiB ms=<time of these 16>" every
//	       16 MiB and "guest: fill done mib=<n> ms=<time it took>"; with
//	       hyperroot.fillhold=1 it says "guest: fill holding at=<n> MiB"
//	       and waits for a line on its console before each 16 MiB and
//	       after the last, and a line "stop" ends it early: a test can
//	       read and change its limits between steps, memory held
//	memmap the physical memory map the VMM gave (memmap.go), and with
//	       hyperroot.probe=<hex address> a write and read back of that page
//	numa   the NUMA nodes the guest kernel found: "guest: numa node<i>
//	       cpus=<list> memtotal_kb=<n> distance=<d0>,<d1>..." each (the
//	       distance its SLIT gives to each node), then "guest: numa nodes=<n>";
//	       with hyperroot.numa=hold it then waits for a line on its console
//	kmsg   the kernel's log with its timestamps (kmsg.go): a boot timeline
//
//	spew   write hyperroot.spew= KiB (default 16) of 64-byte lines
//	       ("guest: spew <i> xxx...") to the console, wait until the console
//	       took them (tcdrain), and report "guest: spew bytes=<n>
//	       ms=<time> console=<its device>": what a console costs a
//	       talkative guest
//
// They power off when done.
var loadActions = map[string]func(seed uint64) error{
	"spin":   spin,
	"fill":   fill,
	"spew":   spew,
	"memmap": memmapAction, // memmap.go
	"numa":   numaAction,
	"kmsg":   kmsgAction, // kmsg.go
}

// numaAction reports the guest's NUMA nodes from sysfs.
func numaAction(uint64) error {
	dirs, err := filepath.Glob("/sys/devices/system/node/node[0-9]*")
	if err != nil || len(dirs) == 0 {
		return fmt.Errorf("no /sys/devices/system/node/node* (%v)", err)
	}
	sort.Slice(dirs, func(i, j int) bool {
		return len(dirs[i]) < len(dirs[j]) || len(dirs[i]) == len(dirs[j]) && dirs[i] < dirs[j]
	})
	for _, d := range dirs {
		cpus, err := os.ReadFile(filepath.Join(d, "cpulist"))
		if err != nil {
			return err
		}
		meminfo, err := os.ReadFile(filepath.Join(d, "meminfo"))
		if err != nil {
			return err
		}
		var kb uint64
		for _, l := range strings.Split(string(meminfo), "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[2] == "MemTotal:" {
				kb, _ = strconv.ParseUint(f[3], 10, 64)
			}
		}
		dist, _ := os.ReadFile(filepath.Join(d, "distance")) // the SLIT's row
		fmt.Printf("guest: numa %s cpus=%s memtotal_kb=%d distance=%s\n", filepath.Base(d), strings.TrimSpace(string(cpus)), kb,
			strings.Join(strings.Fields(string(dist)), ","))
	}
	fmt.Printf("guest: numa nodes=%d\n", len(dirs))
	if cmdlineString("numa") == "hold" {
		// Running on, with its RAM in place, until told otherwise.
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	return nil
}

// cmdlineInt reads hyperroot.<key>= from the kernel command line.
func cmdlineInt(key string, def int) int {
	if n, err := strconv.Atoi(cmdlineString(key)); err == nil {
		return n
	}
	return def
}

// cmdlineString reads hyperroot.<key>= from the kernel command line, or "".
func cmdlineString(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	v := ""
	for _, f := range strings.Fields(string(b)) {
		if s, ok := strings.CutPrefix(f, "hyperroot."+key+"="); ok {
			v = s
		}
	}
	return v
}

func spin(uint64) error {
	secs := cmdlineInt("spin", 60)
	in := bufio.NewReader(os.Stdin)
	if cmdlineInt("spinwait", 0) != 0 {
		fmt.Println("guest: spin waiting")
		if _, err := in.ReadString('\n'); err != nil {
			return fmt.Errorf("spin: waiting for a line: %w", err)
		}
	}
	var stop atomic.Bool
	if secs > 0 {
		fmt.Printf("guest: spin start seconds=%d\n", secs)
		time.AfterFunc(time.Duration(secs)*time.Second, func() { stop.Store(true) })
	} else {
		// Until told: a test measuring a share of CPU does not have to
		// guess how long its guests take to boot under emulation.
		fmt.Println("guest: spin start seconds=until-input")
		go func() {
			in.ReadString('\n')
			stop.Store(true)
		}()
	}
	x := uint64(1)
	for !stop.Load() {
		for range 1 << 16 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	fmt.Printf("guest: spin done (%x)\n", x&0xf)
	return nil
}

// fillChunk is how much fill touches between reports.
const fillChunk = 16 << 20

func fill(uint64) error {
	mib := cmdlineInt("fill", 128)
	// hold reports what is held and waits for a go-ahead: false to stop.
	hold := func(int) bool { return true }
	if cmdlineInt("fillhold", 0) != 0 {
		in := bufio.NewReader(os.Stdin)
		hold = func(done int) bool {
			fmt.Printf("guest: fill holding at=%d MiB\n", done>>20)
			line, err := in.ReadString('\n')
			return err == nil && strings.TrimSpace(line) != "stop"
		}
	}
	start := time.Now()
	var keep [][]byte
	for done := 0; done < mib<<20 && hold(done); done += fillChunk {
		t := time.Now()
		b := make([]byte, fillChunk)
		for i := 0; i < len(b); i += 4096 {
			b[i] = byte(i)
		}
		keep = append(keep, b)
		fmt.Printf("guest: fill %d MiB ms=%d\n", (done+fillChunk)>>20, time.Since(t).Milliseconds())
	}
	filled := len(keep) * fillChunk
	fmt.Printf("guest: fill done mib=%d ms=%d\n", filled>>20, time.Since(start).Milliseconds())
	if filled >= mib<<20 { // not stopped: hold what it filled
		hold(filled)
	}
	runtime.KeepAlive(keep)
	return nil
}

func spew(uint64) error {
	kib := cmdlineInt("spew", 16)
	dev, _ := os.Readlink("/proc/self/fd/1")
	line := make([]byte, 64)
	start := time.Now()
	for i := 0; i < kib*1024/len(line); i++ {
		n := copy(line, fmt.Sprintf("guest: spew %06d ", i))
		for j := n; j < len(line)-1; j++ {
			line[j] = 'x'
		}
		line[len(line)-1] = '\n'
		if _, err := os.Stdout.Write(line); err != nil {
			return err
		}
	}
	// TCSBRK with a non-zero argument is tcdrain: back when the
	// console has sent everything.
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	fmt.Printf("guest: spew bytes=%d ms=%d console=%s\n", kib*1024, time.Since(start).Milliseconds(), dev)
	return nil
}
