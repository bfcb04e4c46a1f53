package hostpci

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeSysfs lays out a PF with SR-IOV (two VFs enabled, group 3), a VF
// (group 4) and a device without an IOMMU group, as sysfs shows them.
func fakeSysfs(t *testing.T) Sysfs {
	root := t.TempDir()
	devs := filepath.Join(root, "bus/pci/devices")
	mk := func(addr string, files map[string]string, links map[string]string) {
		d := filepath.Join(devs, addr)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for n, v := range files {
			if err := os.WriteFile(filepath.Join(d, n), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for n, to := range links {
			if err := os.Symlink(to, filepath.Join(d, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, g := range []string{"3", "4"} {
		os.MkdirAll(filepath.Join(root, "kernel/iommu_groups", g, "devices"), 0o755)
	}
	os.Symlink("../../../../bus/pci/devices/0000:00:01.0", filepath.Join(root, "kernel/iommu_groups/3/devices/0000:00:01.0"))
	os.Symlink("../../../../bus/pci/devices/0000:00:01.1", filepath.Join(root, "kernel/iommu_groups/4/devices/0000:00:01.1"))
	mk("0000:00:01.0", map[string]string{"vendor": "0x1b36", "device": "0x0010", "class": "0x010802",
		"sriov_totalvfs": "2", "sriov_numvfs": "0", "sriov_drivers_autoprobe": "1", "driver_override": "(null)"},
		map[string]string{"iommu_group": "../../../kernel/iommu_groups/3", "driver": "../../../bus/pci/drivers/nvme", "virtfn0": "../0000:00:01.1"})
	mk("0000:00:01.1", map[string]string{"vendor": "0x1b36", "device": "0x0010", "class": "0x010802"},
		map[string]string{"iommu_group": "../../../kernel/iommu_groups/4"})
	mk("0000:00:1f.2", map[string]string{"vendor": "0x8086", "device": "0x2922", "class": "0x010601"}, nil)
	return Sysfs{Root: root}
}

func TestParseAddr(t *testing.T) {
	if a, err := ParseAddr("0000:0A:1F.7"); err != nil || a != "0000:0a:1f.7" {
		t.Errorf("ParseAddr = %q, %v", a, err)
	}
	for _, s := range []string{"", "00:01.0", "0000:00:20.0", "0000:00:01.8", "0000:00:01.0/../x", "../../../etc"} {
		if _, err := ParseAddr(s); err == nil {
			t.Errorf("ParseAddr(%q) accepted", s)
		}
	}
}

func TestDevice(t *testing.T) {
	fs := fakeSysfs(t)
	if _, err := fs.Device("0000:00:09.0"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("a missing device: %v", err)
	}
	pf, err := fs.Device("0000:00:01.0")
	if err != nil {
		t.Fatal(err)
	}
	if pf.ID() != "1b36:0010" || pf.Class() != ClassNVMe || pf.Driver() != "nvme" {
		t.Errorf("id %s class %#x driver %q", pf.ID(), pf.Class(), pf.Driver())
	}
	if g, err := pf.Group(); err != nil || g != 3 {
		t.Errorf("group %d, %v", g, err)
	}
	if m, err := pf.GroupMembers(); err != nil || !reflect.DeepEqual(m, []string{"0000:00:01.0"}) {
		t.Errorf("members %v, %v", m, err)
	}
	if n, err := pf.TotalVFs(); err != nil || n != 2 {
		t.Errorf("total VFs %d, %v", n, err)
	}
	if err := pf.EnableVFs(3); err == nil {
		t.Error("3 VFs of 2 enabled")
	}
	if err := pf.EnableVFs(2); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"sriov_numvfs": "2", "sriov_drivers_autoprobe": "0"} {
		if b, _ := os.ReadFile(filepath.Join(pf.Dir(), f)); strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q, want %q (VFs for VMs: no driver may probe them)", f, b, want)
		}
	}
	if vf, err := pf.VF(0); err != nil || vf != "0000:00:01.1" {
		t.Errorf("VF 0 = %q, %v", vf, err)
	}
	if _, err := pf.VF(1); err == nil {
		t.Error("a VF sysfs does not list was found")
	}
	other, _ := fs.Device("0000:00:1f.2")
	if _, err := other.Group(); !errors.Is(err, ErrNoIOMMU) {
		t.Errorf("no IOMMU group: %v", err)
	}
	if _, err := other.TotalVFs(); !errors.Is(err, ErrNoSRIOV) {
		t.Errorf("no SR-IOV: %v", err)
	}
	if err := other.EnableVFs(1); !errors.Is(err, ErrNoSRIOV) {
		t.Errorf("EnableVFs without SR-IOV: %v", err)
	}
}

func TestNVMeBlockName(t *testing.T) {
	for in, want := range map[string]string{"nvme0c1n2": "nvme0n2", "nvme3c0n1": "nvme3n1", "nvme1n1": "nvme1n1", "nvme0": "nvme0", "ng0n1": "ng0n1"} {
		if got := NVMeBlockName(in); got != want {
			t.Errorf("NVMeBlockName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNVMeNamespace: a namespace is found by its NSID, not by the number
// in its device name (the kernel's head instance: NSID 2, attached first,
// is nvme0c0n1), and one the controller does not have is "".
func TestNVMeNamespace(t *testing.T) {
	root := t.TempDir()
	ctrl := filepath.Join(root, "class", "nvme", "nvme0")
	for name, nsid := range map[string]string{"nvme0c0n1": "2\n", "nvme0c0n2": "5\n"} {
		if err := os.MkdirAll(filepath.Join(ctrl, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctrl, name, "nsid"), []byte(nsid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(ctrl, "serial"), []byte("x\n"), 0o644)
	fs := Sysfs{Root: root}
	for nsid, want := range map[uint32]string{2: "nvme0n1", 5: "nvme0n2", 1: ""} {
		if got := fs.NVMeNamespace("nvme0", nsid); got != want {
			t.Errorf("namespace %d: %q, want %q", nsid, got, want)
		}
	}
	if got := fs.NVMeNamespace("nvme9", 2); got != "" {
		t.Errorf("no such controller: %q", got)
	}
	// The node: none until devtmpfs has made it.
	dev := t.TempDir()
	if got := fs.NVMeNamespaceNode("nvme0", 5, dev); got != "" {
		t.Errorf("node before it exists: %q", got)
	}
	if err := os.WriteFile(filepath.Join(dev, "nvme0n2"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := fs.NVMeNamespaceNode("nvme0", 5, dev), filepath.Join(dev, "nvme0n2"); got != want {
		t.Errorf("node: %q, want %q", got, want)
	}
	if got := fs.NVMeNamespaceNode("nvme0", 1, dev); got != "" {
		t.Errorf("node of no namespace: %q", got)
	}
}
