package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"

	"github.com/hyperroot/hyperroot/vmm/cpuid"
)

// cpuVendor returns /proc/cpuinfo's vendor_id (AuthenticAMD, GenuineIntel).
func cpuVendor() string { return cpuid.HostCPU()["vendor_id"] }

// loadModules loads each module with its dependencies (from the modules.dep
// the image builder wrote) and reports on the console what was loaded and
// what failed. A module that fails does not stop the others.
func loadModules(c *console, names []string) {
	if len(names) == 0 {
		return
	}
	start := time.Now()
	prober, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		c.Errorf("modules", err)
		return
	}
	var loaded []string
	for _, n := range names {
		if err := prober.Probe(n, ""); err != nil {
			c.Errorf("module "+n, err)
			continue
		}
		loaded = append(loaded, n)
	}
	c.Printf("modules: loaded %s (%d of %d in %s)", strings.Join(loaded, " "), len(loaded), len(names),
		time.Since(start).Round(time.Millisecond))
}

// moduleParam reads /sys/module/<mod>/parameters/<param>.
func moduleParam(mod, param string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/module/%s/parameters/%s", mod, param))
	return strings.TrimSpace(string(b)), err
}
