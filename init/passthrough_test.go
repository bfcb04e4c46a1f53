package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/hostpci"
)

// TestDeviceStatus: what the API says of a VM's device, from sysfs and
// the claims (a fake sysfs: the claim path itself is TestPassthrough's).
func TestDeviceStatus(t *testing.T) {
	root := t.TempDir()
	dev := filepath.Join(root, "bus/pci/devices/0000:00:02.0")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../bus/pci/drivers/vfio-pci", filepath.Join(dev, "driver")); err != nil {
		t.Fatal(err)
	}
	o := &deviceOwners{fs: hostpci.Sysfs{Root: root}, m: map[string]deviceOwner{}}
	whole := config.Device{PCI: "0000:00:02.0"}
	if got, want := o.status("a", whole), (api.Device{Device: "0000:00:02.0", Address: "0000:00:02.0", State: api.DeviceFree, Driver: "vfio-pci"}); got != want {
		t.Errorf("unclaimed: %+v, want %+v", got, want)
	}
	o.m["0000:00:02.0"] = deviceOwner{vm: "a", driver: "nvme"}
	if got := o.status("a", whole); got.State != api.DeviceAssigned {
		t.Errorf("claimed by a, a's view: %+v", got)
	}
	if got := o.status("b", whole); got.State != api.DeviceFree {
		t.Errorf("claimed by a, b's view: %+v", got)
	}
	vf := config.Device{VF: &config.VFRef{PF: "0000:00:05.0", Index: 1}}
	if got := o.status("a", vf); got != (api.Device{Device: "VF 1 of 0000:00:05.0", State: api.DeviceFree}) {
		t.Errorf("a VF of a missing PF: %+v", got)
	}
}
