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
