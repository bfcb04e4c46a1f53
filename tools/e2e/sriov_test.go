package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// The appliance's PCI devices in the passthrough tests: QEMU puts the
// NVMe controllers in the first slots, in order.
const (
	pfAddr    = "0000:00:01.0" // SR-IOV physical function, two VFs
	wholeAddr = "0000:00:02.0" // an NVMe controller passed through whole
	plainAddr = "0000:00:03.0" // an NVMe controller without SR-IOV
	// The data disk and a spare drive behind a PCI bridge (BridgeDrives),
	// on the bus the appliance's kernel numbers 1.
	bridgedData  = "0000:01:01.0"
	bridgedSpare = "0000:01:02.0"
)

// deviceVM is a test guest with one passed-through device, running action.
func deviceVM(name, action string, seed int, device string) string {
	return fmt.Sprintf(`  - name: %s
    memory: 128M
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 panic=-1 quiet hyperroot.guest=%s hyperroot.seed=%d
    restart: never
    devices: [%s]
`, name, action, seed, device)
}

// TestPassthrough: an appliance with an emulated IOMMU and NVMe
// controllers, one of them an SR-IOV physical function. The appliance
// enables two virtual functions, brings their secondary controllers online
// and attaches one namespace to each; two VMs get a VF each and a third a
// whole controller, and each guest writes its own pattern through the
// nvme driver with O_DIRECT and fsync. Bad inputs fail their VM only,
// with an error that names it, the device and why. After the VMs, the
// whole controller is the appliance's again (its driver reads the
// pattern back), and on the host each namespace file holds its VM's
// pattern and nothing of the others'. A second appliance, without an
// IOMMU, cannot give a device at all.
func TestPassthrough(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	file := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ns1, ns2, whole, plain := file("ns1", 16<<20), file("ns2", 16<<20), file("whole", 16<<20), file("plain", 1<<20)
	// The data disk and a second drive behind one PCI bridge: one
	// IOMMU group, of which the appliance uses the data disk.
	data := file("data.img", 64<<20)
	spare := file("spare.img", 1<<20)
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", data)
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "nvmeback", "nvmeback"), "./nvmeback")
	vf := func(i int) string { return fmt.Sprintf("{vf: {pf: %s, index: %d}}", pfAddr, i) }
	cfg := "pci:\n  sriov:\n    - {device: " + pfAddr + ", vfs: 2, namespaces: [1, 2]}\n" +
		"    - {device: " + plainAddr + ", vfs: 1}\n" +
		"vms:\n" +
		deviceVM("vfa", "nvme-raw-write", 41, vf(0)) +
		deviceVM("vfb", "nvme-raw-write", 42, vf(1)) +
		deviceVM("whole", "nvme-raw-write", 43, "{pci: "+wholeAddr+"}") +
		deviceVM("missing", "nvme-raw-write", 1, "{pci: 0000:00:19.0}") +
		deviceVM("taken", "nvme-raw-write", 1, "{pci: 0000:00:01.1}") +
		deviceVM("nosriov", "nvme-raw-write", 1, "{vf: {pf: "+plainAddr+", index: 0}}") +
		deviceVM("bridged", "nvme-raw-write", 1, "{pci: "+bridgedSpare+"}")
	testbed(t, func(t testing.TB) {
		m := start(t, qemu.Options{Config: configFile(t, cfg), Overlay: overlay, IOMMU: true, Oneshot: true,
			Append: "hyperroot.run=/nvmeback/nvmeback," + wholeAddr + "," + pfAddr + ",whole",
			Drives: []string{data, spare}, BridgeDrives: true,
			NVMe: []qemu.NVMe{
				{Serial: "pf", Namespaces: []string{ns1, ns2}, VFs: 2},
				{Serial: "whole", Namespaces: []string{whole}},
				{Serial: "plain", Namespaces: []string{plain}},
			}})
		r := m.Wait()
		for _, want := range []string{
			`hyperroot: sriov ` + pfAddr + ` \(1b36:0010, nvme0\): 2 virtual functions: 0000:00:01\.1, 0000:00:01\.2; secondary controllers online with 2 queues and 1 interrupt vectors each; namespace 1 to VF 0, 2 to VF 1$`,
			`hyperroot: error: sriov: ` + plainAddr + `: no SR-IOV capability$`,
			`hyperroot: error: vm missing: device 0000:00:19.0: 0000:00:19.0: no such PCI device$`,
			`hyperroot: error: vm taken: device 0000:00:01.1: vm vfa has it$`,
			`hyperroot: error: vm nosriov: device VF 0 of ` + plainAddr + `: ` + plainAddr + `: no SR-IOV capability$`,
			`hyperroot: error: vm bridged: device ` + bridgedSpare + `: it shares IOMMU group \d+ with ` + bridgedData + `, which the appliance uses: /dev/vda \(or a partition of it\) is mounted$`,
			`^vfa\| guest: raw sha256 ` + sha(fileContent(41, "raw", 1<<20)) + `$`,
			`^vfb\| guest: raw sha256 ` + sha(fileContent(42, "raw", 1<<20)) + `$`,
			`^whole\| guest: raw sha256 ` + sha(fileContent(43, "raw", 1<<20)) + `$`,
			`hyperroot: vm whole: device ` + wholeAddr + ` given back \(nvme\)$`,
			`^run\| nvmeback: /dev/nvme\d+n1 sha256 ` + sha(fileContent(43, "raw", 1<<20)) + `$`,
			// The management API's view of the device, while the VM has
			// it and once it is back.
			`^run\| nvmeback: api: vm whole device ` + wholeAddr + ` at ` + wholeAddr + ` assigned \(driver vfio-pci\)$`,
			`^run\| nvmeback: api: vm whole device ` + wholeAddr + ` at ` + wholeAddr + ` free \(driver nvme\)$`,
		} {
			if !hasLine(r.Lines, want) {
				t.Errorf("console lacks a line matching %q", want)
			}
		}
		for _, vm := range []string{"vfa", "vfb", "whole"} {
			if !hasLine(r.Lines, `hyperroot: vm `+vm+` exited code=0 reason=poweroff`) {
				t.Errorf("vm %s did not power off", vm)
			}
		}
	})
	// Without an IOMMU no device has a group, and none can be given.
	testbed(t, func(t testing.TB) {
		cfg := "vms:\n" + deviceVM("lone", "nvme-raw-write", 1, "{pci: "+pfAddr+"}")
		r := start(t, qemu.Options{Config: configFile(t, cfg), Oneshot: true,
			NVMe: []qemu.NVMe{{Serial: "lone", Namespaces: []string{plain}}}}).Wait()
		if want := `hyperroot: error: vm lone: device ` + pfAddr + `: ` + pfAddr + `: not behind an IOMMU \(no IOMMU group\)$`; !hasLine(r.Lines, want) {
			t.Errorf("console lacks a line matching %q", want)
		}
	})
	// On the host: each namespace holds its own VM's pattern.
	for _, c := range []struct {
		file string
		seed uint64
	}{{ns1, 41}, {ns2, 42}, {whole, 43}} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		if sha(b[:1<<20]) != sha(fileContent(c.seed, "raw", 1<<20)) {
			t.Errorf("%s: its first MiB is not what the VM with seed %d wrote", filepath.Base(c.file), c.seed)
		}
	}
	if b, _ := os.ReadFile(plain); sha(b) != sha(make([]byte, 1<<20)) {
		t.Error("the controller no VM had was written")
	}
}
