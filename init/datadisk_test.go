package main

import (
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
)

// TestDataDiskGuard: a data disk that the configuration gives to a VM is
// let go, with an error naming both.
func TestDataDiskGuard(t *testing.T) {
	var out syncBuffer
	c := newConsole(&out)
	cfg := &config.Config{VMs: []config.VM{{Name: "web", Disks: []config.Disk{{Path: "/dev/vdq"}}}}}
	d := dataDisk{dev: "/dev/vdz1"}
	if !d.guard(c, cfg, "the configuration") || d.dev != "/dev/vdz1" {
		t.Error("a data disk no VM has was let go")
	}
	d.dev = "/dev/vdq"
	if d.guard(c, cfg, "the image's configuration") || d.dev != "" {
		t.Error("a VM's disk kept as the data disk")
	}
	c.Flush(5 * time.Second)
	if !strings.Contains(out.String(), "error: data: /dev/vdq is vm web's disk /dev/vdq in the image's configuration: not used as the data disk") {
		t.Errorf("console: %q", out.String())
	}
}
