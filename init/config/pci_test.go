package config

import (
	"strings"
	"testing"
)

func TestParsePCI(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`pci:
  sriov:
    - {device: 0000:00:05.0, vfs: 2, namespaces: [1, 2]}
    - {device: 0000:00:06.0, vfs: 1}
vms:
  - name: a
    kernel: /k
    devices: [{vf: {pf: 0000:00:05.0, index: 1}}, {pci: 0000:00:07.0}]
  - name: b
    kernel: /k
    devices: [{vf: {pf: 0000:00:05.0, index: 0}}, {pci: 0000:0A:1F.7}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.PCI == nil || len(c.PCI.SRIOV) != 2 {
		t.Fatalf("pci: %+v", c.PCI)
	}
	if s := c.PCI.SRIOV[0]; s.Device != "0000:00:05.0" || s.VFs != 2 || len(s.Namespaces) != 2 || s.Namespaces[1] != 2 {
		t.Errorf("sriov[0] = %+v", s)
	}
	a, b := c.VMs[0].Devices, c.VMs[1].Devices
	if len(a) != 2 || a[0].VF == nil || a[0].VF.PF != "0000:00:05.0" || a[0].VF.Index != 1 || a[1].PCI != "0000:00:07.0" {
		t.Errorf("vm a devices %+v", a)
	}
	if len(b) != 2 || b[1].PCI != "0000:0a:1f.7" || b[0].String() != "VF 0 of 0000:00:05.0" {
		t.Errorf("vm b devices %+v (addresses are lowered)", b)
	}
}

func TestPCIErrors(t *testing.T) {
	sriov := "pci:\n  sriov: [{device: 0000:00:05.0, vfs: 2}]\n"
	vms := func(devs ...string) string {
		s := "vms:\n"
		for i, d := range devs {
			s += "  - {name: v" + string(rune('a'+i)) + ", kernel: /k, devices: [" + d + "]}\n"
		}
		return s
	}
	for _, tc := range []struct{ yaml, want string }{
		{"pci:\n  sriov: [{device: 00:05.0, vfs: 2}]\n", `PCI address "00:05.0": want domain:bus:device.function`},
		{"pci:\n  sriov: [{device: ../../x, vfs: 2}]\n", `want domain:bus:device.function`},
		{"pci:\n  sriov: [{device: 0000:00:05.0}]\n", `sriov 0000:00:05.0: vfs is required`},
		{"pci:\n  sriov: [{vfs: 1}]\n", `sriov: device is required`},
		{"pci:\n  sriov: [{device: 0000:00:05.0, vfs: 0}]\n", `vfs 0: want 1 to 256`},
		{"pci:\n  sriov: [{device: 0000:00:05.0, vfs: 1, namespaces: [1, 2]}]\n", `2 namespaces for 1 virtual functions`},
		{"pci:\n  sriov: [{device: 0000:00:05.0, vfs: 1}, {device: 0000:00:05.0, vfs: 1}]\n", `0000:00:05.0 listed twice`},
		{vms("{vf: {pf: 0000:00:05.0, index: 0}}"), `device VF 0 of 0000:00:05.0: 0000:00:05.0 is not in pci: sriov`},
		{sriov + vms("{vf: {pf: 0000:00:05.0, index: 2}}"), `0000:00:05.0 has 2 virtual functions`},
		{sriov + vms("{pci: 0000:00:05.0}"), `vm va: device 0000:00:05.0: it is a physical function with virtual functions enabled`},
		{sriov + vms("{vf: {pf: 0000:00:05.0, index: 1}}", "{vf: {pf: 0000:00:05.0, index: 1}}"), `vm vb: device VF 1 of 0000:00:05.0: vm va has it`},
		{vms("{pci: 0000:00:07.0}, {pci: 0000:00:07.0}"), `vm va: device 0000:00:07.0: it already has it`},
		{vms("{pci: 0000:00:07.0, vf: {pf: 0000:00:05.0, index: 0}}"), `want either pci: <address> or vf:`},
		{vms("{}"), `want either pci: <address> or vf:`},
		{vms("{vf: {pf: 0000:00:05.0}}"), `vf: pf and index are required`},
		{vms(strings.Repeat("{pci: 0000:00:07.0}, ", MaxDevices+1)), `devices: 5 devices, want at most 4`},
		{"pci: {vfio: 1}\n", `unknown key "vfio"`},
	} {
		if _, err := Parse("c.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
