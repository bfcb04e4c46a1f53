package main

import (
	"fmt"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
)

// TestFleetConfig: the fleet's configuration is one PID 1 accepts, with
// the VMs asked for.
func TestFleetConfig(t *testing.T) {
	cfg, err := config.Parse("fleet.yaml", []byte(fleetConfig(8, "128M")))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.VMs) != 8 {
		t.Fatalf("%d VMs, want 8", len(cfg.VMs))
	}
	for i, vm := range cfg.VMs {
		if vm.Name != fmt.Sprintf("fleet%d", i+1) || !bootedRE.MatchString(vm.Name+"| guest: booted nproc=1") {
			t.Errorf("VM %d is %q", i, vm.Name)
		}
	}
}

// TestApplianceLine: the banner's CPUs and clock are named; other lines,
// the ready line among them, are not a banner.
func TestApplianceLine(t *testing.T) {
	banner := "[   4.660] hyperroot: hyperroot c6834ee board=qemu kernel=6.1.0-57-cloud-amd64 (linux-image-6.1.0-57-cloud-amd64 6.1.192-3) cpus=2 (QEMU TCG CPU version 2.5+) memory=1978 MiB clocksource=tsc go=go1.26.8"
	if got, want := applianceLine(banner), "bench: fleet appliance cpus=2 clocksource=tsc"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if !eitherRE.MatchString(banner) {
		t.Error("the fleet does not wait for the banner")
	}
	if applianceLine("[   8.2] hyperroot: ready") != "" || applianceLine("fleet1| guest: booted") != "" {
		t.Error("a line that is not the banner was taken for it")
	}
}
