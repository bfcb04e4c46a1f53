package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
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

// deviceVM is a test guest with one passed-through device, running action,
// its kernel command line ending with extra. Its kernel's warnings are on
// the console (loglevel=5 after quiet): a driver's I/O timeout and what it
// found then ("completion polled": an interrupt that never came) say where
// a guest that stalls on its device lost its way.
func deviceVM(name, action string, seed int, device string, extra ...string) string {
	return fmt.Sprintf(`  - name: %s
    memory: 128M
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 panic=-1 quiet loglevel=5 hyperroot.guest=%s hyperroot.seed=%d%s
    restart: never
    devices: [%s]
`, name, action, seed, strings.Join(append([]string{""}, extra...), " "), device)
}

// TestPassthrough: an appliance with an emulated IOMMU and NVMe
// controllers, one of them an SR-IOV physical function. The appliance
// enables two virtual functions, brings their secondary controllers online
// and attaches one namespace to each; two VMs get a VF each (MSI-X) and a
// third a whole controller, whose guest uses no MSI (INTx) and formats it;
// the VF guests write their own pattern with O_DIRECT and fsync. Bad
// inputs fail their VM only, with an error that names it, the device and
// why. After the VMs, the whole controller is the appliance's again (it
// mounts the guest's filesystem and reads its file), and on the host each
// disk holds its VM's data and nothing of the others'. A second
// appliance, without an IOMMU, cannot give a device at all.
func TestPassthrough(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	file := func(t testing.TB, name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The namespaces start empty in every attempt (the guest formats only
	// an empty disk).
	var ns1, ns2, whole, plain string
	zero := func(t testing.TB) {
		ns1, ns2, whole, plain = file(t, "ns1", 16<<20), file(t, "ns2", 16<<20), file(t, "whole", 64<<20), file(t, "plain", 1<<20)
	}
	zero(t)
	// The data disk and a second drive behind one PCI bridge: one
	// IOMMU group, of which the appliance uses the data disk.
	data := file(t, "data.img", 64<<20)
	spare := file(t, "spare.img", 1<<20)
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", data)
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "nvmeback", "nvmeback"), "./nvmeback")
	vf := func(i int) string { return fmt.Sprintf("{vf: {pf: %s, index: %d}}", pfAddr, i) }
	cfg := "pci:\n  sriov:\n    - {device: " + pfAddr + ", vfs: 2, namespaces: [1, 2]}\n" +
		"    - {device: " + plainAddr + ", vfs: 1}\n" +
		"vms:\n" +
		deviceVM("vfa", "nvme-raw-write", 41, vf(0)) +
		deviceVM("vfb", "nvme-raw-write", 42, vf(1)) +
		// This guest formats the whole controller, and uses no MSI: the
		// controller's INTx it gets.
		deviceVM("whole", "nvme-fs-write", 43, "{pci: "+wholeAddr+"}", "pci=nomsi") +
		deviceVM("missing", "nvme-raw-write", 1, "{pci: 0000:00:19.0}") +
		deviceVM("taken", "nvme-raw-write", 1, "{pci: 0000:00:01.1}") +
		deviceVM("nosriov", "nvme-raw-write", 1, "{vf: {pf: "+plainAddr+", index: 0}}") +
		deviceVM("bridged", "nvme-raw-write", 1, "{pci: "+bridgedSpare+"}")
	testbed(t, func(t testing.TB) {
		zero(t)
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
			`^whole\| guest: fs /dev/nvme0n1p1 sha256 ` + sha(fileContent(43, "fs", 1<<20)) + `$`,
			// Its INTx: connected by the VMM, raised (and served) in the guest
			// through the IOAPIC; the VFs' interrupts are MSI-X.
			`^whole\| hyperroot vmm: device ` + wholeAddr + ` \(1b36:0010\) passed through: slot \d+, BAR0=16K \(8K mapped\), MSI-X 65 vectors, INTx GSI \d+, reset=true$`,
			`^whole\| guest: interrupts \d+: [1-9]\d* IO-APIC \d+-fasteoi nvme0q0`,
			`^vfa\| guest: interrupts \d+: [1-9]\d* PCI-MSI \d+-edge nvme0q0`,
			`hyperroot: vm whole: device ` + wholeAddr + ` given back \(nvme\)$`,
			`^run\| nvmeback: /dev/nvme\d+n1p1 pattern sha256 ` + sha(fileContent(43, "fs", 1<<20)) + `$`,
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
	// On the host: each VF's namespace holds its own VM's pattern, and the
	// whole controller's the filesystem its VM made, clean, with its file.
	for _, c := range []struct {
		file string
		seed uint64
	}{{ns1, 41}, {ns2, 42}} {
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
	if got := guestFile(t, whole, "/pattern"); sha(got) != sha(fileContent(43, "fs", 1<<20)) {
		t.Errorf("the whole controller's filesystem has a /pattern of %d bytes, not what its VM wrote", len(got))
	}
}

// guestFile checks the ext4 filesystem a guest made in the first partition
// (from 1 MiB on) of the disk image img with the host's e2fsck, read-only,
// and returns the content of its file name (debugfs).
func guestFile(t *testing.T, img, name string) []byte {
	t.Helper()
	e2fsck := testenv.NeedTool(t, "e2fsck", "e2fsprogs")
	debugfs := testenv.NeedTool(t, "debugfs", "e2fsprogs")
	part := filepath.Join(t.TempDir(), "part.img")
	run(t, "dd", "if="+img, "of="+part, "bs=1M", "skip=1", "conv=sparse", "status=none")
	if out, err := exec.Command(e2fsck, "-fn", part).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of %s's filesystem: %v\n%s", filepath.Base(img), err, out)
	}
	out, err := exec.Command(debugfs, "-R", "cat "+name, part).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", name, err)
	}
	return out
}
