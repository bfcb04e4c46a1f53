package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The load actions make a guest use what QoS limits, for the resource
// control tests:
//
//	spin   keep the vCPU busy for hyperroot.spin= seconds (default 60) of
//	       the guest's clock, reporting "guest: spin start seconds=<n>" and
//	       "guest: spin done"
//	fill   allocate and touch hyperroot.fill= MiB (default 128) of memory,
//	       reporting "guest: fill <n> MiB" every 16 MiB and "guest: fill
//	       done mib=<n>"
//
// They power off when done.
var loadActions = map[string]func(seed uint64) error{
	"spin": spin,
	"fill": fill,
}

// cmdlineInt reads hyperroot.<key>= from the kernel command line.
func cmdlineInt(key string, def int) int {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return def
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "hyperroot."+key+"="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				return n
			}
		}
	}
	return def
}

func spin(uint64) error {
	secs := cmdlineInt("spin", 60)
	fmt.Printf("guest: spin start seconds=%d\n", secs)
	end := time.Now().Add(time.Duration(secs) * time.Second)
	x := uint64(1)
	for time.Now().Before(end) {
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
	var keep [][]byte
	for done := 0; done < mib<<20; done += fillChunk {
		b := make([]byte, fillChunk)
		for i := 0; i < len(b); i += 4096 {
			b[i] = byte(i)
		}
		keep = append(keep, b)
		fmt.Printf("guest: fill %d MiB\n", (done+fillChunk)>>20)
	}
	fmt.Printf("guest: fill done mib=%d\n", len(keep)*fillChunk>>20)
	return nil
}
