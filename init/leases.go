package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/atomicfile"
	"github.com/hyperroot/hyperroot/net/dhcp"
)

// The switch keeps each network's DHCP leases in its directory, in RAM
// (<network>.leases, written whole at each change). With a data disk they
// outlive a reboot: PID 1 puts the kept copies in the switch's directory
// before the switch starts, and keeps a copy each time the switch reports
// a new or changed lease, and at power-off. A guest then gets its address
// back after a reboot of the appliance, as after a restart of the switch.

// leasesDir holds the kept lease files on the data disk.
var leasesDir = filepath.Join(config.DataDir, "leases")

// leaseFile is network's lease file in dir.
func leaseFile(dir, network string) string { return filepath.Join(dir, network+".leases") }

// restoreLeases copies the kept lease files of cfg's networks into the
// switch's directory dir. A network without a kept file starts empty.
func restoreLeases(c *console, cfg *config.Config, dir string) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.Errorf("leases", err)
		return
	}
	n := 0
	for _, nw := range cfg.Networks {
		data, err := dhcp.ReadLeaseFile(leaseFile(leasesDir, nw.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			err = atomicfile.Write(leaseFile(dir, nw.Name), data, 0o600)
		}
		if err != nil {
			c.Errorf("leases", fmt.Errorf("network %s: %w", nw.Name, err))
			continue
		}
		n++
	}
	if n > 0 {
		c.Printf("leases: %d networks' leases restored from %s", n, leasesDir)
	}
}

// keepLeases copies network's lease file from the switch's directory dir
// to the data disk. network comes from the switch's output, so only a
// network of cfg is taken: never a path.
func keepLeases(cfg *config.Config, dir, network string) error {
	known := false
	for _, nw := range cfg.Networks {
		known = known || nw.Name == network
	}
	if !known {
		return fmt.Errorf("network %q: not one of the configuration's", network)
	}
	data, err := dhcp.ReadLeaseFile(leaseFile(dir, network))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(leasesDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(leaseFile(leasesDir, network), data, 0o600)
}

// leaseNetwork returns the network of the switch's report of a new or
// changed lease ("lease network=<name> ip=..."), or false for other lines.
func leaseNetwork(line string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "lease network=")
	if !ok {
		return "", false
	}
	name, _, _ := strings.Cut(rest, " ")
	return name, name != ""
}
