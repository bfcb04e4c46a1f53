package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/atomicfile"
	"github.com/hyperroot/hyperroot/internal/datadisk"
)

// The appliance runs from RAM; what must outlive a boot lives on its data
// disk (internal/datadisk), mounted on config.DataDir: VM disks named by
// relative paths, the configuration last applied through the API
// (savedConfig), the API's certificate (apiDataDir). Without a data disk
// the same paths are in RAM, and a reboot forgets them.

// savedConfig is the configuration last applied through the API, kept for
// the next boot, which reads it before the image's own.
var savedConfig = filepath.Join(config.DataDir, "config.yaml")

// savedConfigCopy is where the boot puts the saved configuration for the
// switch, which may read the appliance's configuration files only.
var savedConfigCopy = filepath.Join(confDir, "saved.yaml")

// dataDisk is the data disk PID 1 mounted: its device, "" for none.
type dataDisk struct{ dev string }

// mountLabelled mounts the disk labelled datadisk.Label, if there is one:
// at boot, before the configuration, which may be on it.
func (d *dataDisk) mountLabelled(c *console) {
	dev, err := datadisk.Find("/sys/class/block", "/dev")
	if err != nil {
		c.Errorf("data", err)
		return
	}
	if dev != "" {
		d.mount(c, dev, "labelled "+datadisk.Label)
	}
}

// mountConfigured mounts the data disk the configuration names, formatting
// it first when it is empty and the configuration says so; a data disk
// mounted by its label already is kept.
func (d *dataDisk) mountConfigured(c *console, want *config.Data) {
	if want == nil {
		return
	}
	if d.dev != "" {
		if d.dev != want.Device && datadisk.Labelled(want.Device) != d.dev {
			c.Errorf("data", fmt.Errorf("the configuration names %s, but %s (labelled %s) is mounted already: keeping it", want.Device, d.dev, datadisk.Label))
		}
		return
	}
	dev := datadisk.Labelled(want.Device)
	if dev == "" {
		if !want.FormatIfEmpty {
			c.Errorf("data", fmt.Errorf("%s: no ext4 filesystem labelled %s (with format: if-empty an empty disk is formatted): nothing kept across boots", want.Device, datadisk.Label))
			return
		}
		c.Printf("data: %s has no filesystem labelled %s: formatting it if it is empty (GPT, one partition, ext4)", want.Device, datadisk.Label)
		start := time.Now()
		p, err := datadisk.Format(want.Device)
		if err != nil {
			c.Errorf("data", err)
			return
		}
		c.Printf("data: %s formatted in %s", p, time.Since(start).Round(time.Millisecond))
		dev = p
	}
	d.mount(c, dev, "named in the configuration")
}

func (d *dataDisk) mount(c *console, dev, how string) {
	if err := datadisk.Mount(dev, config.DataDir); err != nil {
		c.Errorf("data", err)
		return
	}
	d.dev = dev
	c.Printf("data: %s (%s) mounted on %s", dev, how, config.DataDir)
}

// guard unmounts the data disk if cfg gives it to a VM (the device itself,
// or the whole disk it is a partition of): a guest could then write the
// filesystem under PID 1's feet, or have written one labelled
// hyperroot-data on its own disk for PID 1 to find and trust at the next
// boot. It reports whether the data disk is still mounted.
func (d *dataDisk) guard(c *console, cfg *config.Config, whose string) bool {
	if d.dev == "" || cfg == nil {
		return d.dev != ""
	}
	for _, vm := range cfg.VMs {
		for _, disk := range vm.Disks {
			if !sameOrParent(d.dev, disk.Path) {
				continue
			}
			c.Errorf("data", fmt.Errorf("%s is vm %s's disk %s in %s: not used as the data disk (a guest writes it)", d.dev, vm.Name, disk.Path, whose))
			if err := unmountData(); err != nil {
				c.Errorf("data", err)
			}
			d.dev = ""
			return false
		}
	}
	return true
}

// sameOrParent says whether the block device dev is disk, or a partition
// of it (the kernel's sysfs knows a partition's disk).
func sameOrParent(dev, disk string) bool {
	if dev == disk {
		return true
	}
	if !strings.HasPrefix(disk, "/dev/") {
		return false
	}
	real, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", filepath.Base(dev)))
	if err != nil {
		return false
	}
	if _, err := os.Stat(filepath.Join(real, "partition")); err != nil {
		return false
	}
	return filepath.Base(filepath.Dir(real)) == filepath.Base(disk)
}

// savedConfig returns the configuration kept on the data disk, copied to
// where the switch may read it, or false when there is none.
func (d *dataDisk) savedConfig(c *console) ([]byte, string, bool) {
	if d.dev == "" {
		return nil, "", false
	}
	data, err := os.ReadFile(savedConfig)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", false
	}
	if err == nil {
		err = os.WriteFile(savedConfigCopy, data, 0o600)
	}
	if err != nil {
		c.Errorf("config", fmt.Errorf("the data disk's: %w", err))
		return nil, "", false
	}
	return data, savedConfigCopy, true
}

// saver returns the function that keeps an applied configuration for the
// next boot, or nil without a data disk.
func (d *dataDisk) saver() func(string) error {
	if d.dev == "" {
		return nil
	}
	return func(text string) error { return atomicfile.Write(savedConfig, []byte(text), 0o600) }
}

// unmountData unmounts the data disk at power-off, so that it is clean
// for the next boot (no journal to replay); one still busy is made
// read-only instead. Without a data disk there is nothing mounted there.
func unmountData() error {
	err := unix.Unmount(config.DataDir, 0)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		if err := unix.Mount("", config.DataDir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("unmount %s: busy, and read-only: %w", config.DataDir, err)
		}
		return nil
	}
	return fmt.Errorf("unmount %s: %w", config.DataDir, err)
}
