package main

import (
	"os"
	"strings"
)

// cmdline holds the kernel command line's hyperroot.* options.
type cmdline struct {
	Oneshot bool   // hyperroot.oneshot=1: power off when the work is done
	Config  string // hyperroot.config=<path|URL>
	Bench   string // hyperroot.bench=boot: run the boot benchmark instead of the VMs
}

func readCmdline() cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return parseCmdline(string(b))
}

// parseCmdline picks the hyperroot.* options out of a kernel command line.
// Later occurrences win, as with the kernel's own parameters.
func parseCmdline(s string) cmdline {
	var c cmdline
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "hyperroot.oneshot":
			c.Oneshot = v == "1" || v == "true" || v == "yes"
		case "hyperroot.config":
			c.Config = v
		case "hyperroot.bench":
			c.Bench = v
		}
	}
	return c
}
