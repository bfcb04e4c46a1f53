package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hyperroot/hyperroot/internal/hostpci"
	"github.com/hyperroot/hyperroot/internal/nvme"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// The passthrough benchmark (hyperroot-bench passthrough, in an appliance
// that ./build.sh bench boots with an IOMMU and an SR-IOV NVMe controller
// at ptPF with two namespaces): the test guest's disk-bench measures, in
// turn over a few rounds, namespace 1 through a virtual function passed
// through to it (its nvme driver drives the VF; hyperroot's VMM is out of
// the data path but for forwarding register accesses, doorbells among
// them) and namespace 2, the same kind of namespace on the same
// controller, served by hyperroot's virtio-blk from the appliance's own
// nvme driver. Both guests: 1 vCPU, 256 MiB, the same kernel and initrd.
// Under TCG both devices are emulated, so the ratio says what the VMM's
// path costs, not what SR-IOV hardware would give.

// ptPF is the physical function the bench appliance is given.
const ptPF = "0000:00:01.0"

func runPassthroughBench(e *env) error {
	fs := hostpci.Sysfs{}
	pf, err := fs.Device(ptPF)
	if err != nil {
		return fmt.Errorf("%w (the bench appliance needs an SR-IOV NVMe controller: ./build.sh bench boots one)", err)
	}
	name := pf.NVMeName()
	if name == "" {
		return fmt.Errorf("%s: not an NVMe controller the nvme driver has", ptPF)
	}
	ctl, err := nvme.Open("/dev/" + name)
	if err != nil {
		return err
	}
	defer ctl.Close()
	vf, ns2, err := preparePassthrough(pf, ctl, name)
	if err != nil {
		return err
	}
	// The emulator's VFs decode their BARs only with their own memory
	// enable set (docs/TESTING.md, TestPassthrough): kept set here.
	go keepDecoding(vf.Dir())
	group, err := vf.Group()
	if err != nil {
		return err
	}
	kernel, initrd := "/guest/vmlinuz", "/guest/initramfs.cpio"
	cmdline := func(dev string) string {
		return "console=ttyS0 quiet panic=-1 hyperroot.guest=disk-bench hyperroot.diskbench=" + diskBenchOptions + ",dev=" + dev
	}
	passed := vmmcli.Args{Name: "bench", Kernel: kernel, Initrd: initrd, Cmdline: cmdline("/dev/nvme0n1"), CPUs: 1, Memory: benchMemory,
		Devices: []vmmcli.Device{{PCI: vf.Addr, Container: vmmcli.FirstFD, Group: vmmcli.FirstFD + 1}}}
	served := vmmcli.Args{Name: "bench", Kernel: kernel, Initrd: initrd, Cmdline: cmdline("/dev/vda"), CPUs: 1, Memory: benchMemory,
		Disks: []vmmcli.Disk{{FD: -1, Path: ns2, IO: vmmcli.IOUring}}}
	backends := []diskBackend{
		{name: "vf", argv: append([]string{e.hyperroot}, passed.Argv()...), dumps: true, files: func() ([]*os.File, error) { return openVFIO(group) }},
		{name: "virtio", argv: append([]string{e.hyperroot}, served.Argv()...), dumps: true},
	}
	e.logf("bench: passthrough vf=%s (namespace 1) virtio-blk=%s (namespace 2) guest=1 vCPU %s options=%s rounds=%d",
		vf.Addr, ns2, benchMemory, diskBenchOptions, diskBenchRounds)
	runs := map[string][]diskRun{}
	for round := 1; round <= diskBenchRounds; round++ {
		for _, b := range roundOrder(backends, round) {
			run, err := diskAttempts(e, "passthrough", round, b)
			if err != nil {
				return fmt.Errorf("%s: %w", b.name, err)
			}
			runs[b.name] = append(runs[b.name], run)
			e.logf("bench: passthrough round=%d backend=%s %s", round, b.name, formatRun(run))
		}
	}
	for _, line := range diskTable([]string{"vf", "virtio"}, runs) {
		e.logf("bench: passthrough %s", line)
	}
	for _, f := range diskFigures("passthrough", "vf", []string{"virtio"}, runs, nil) {
		e.logf("%s", f.Line())
	}
	return nil
}

// preparePassthrough enables one VF with namespace 1 and attaches
// namespace 2 to the PF itself, binds the VF to vfio-pci, and returns it
// with the appliance's block device of namespace 2.
func preparePassthrough(pf *hostpci.Device, ctl *nvme.Controller, name string) (*hostpci.Device, string, error) {
	secs, err := ctl.Secondaries()
	if err != nil || len(secs) == 0 {
		return nil, "", fmt.Errorf("%s: no secondary controllers (%v)", name, err)
	}
	sc := secs[0]
	for _, step := range []func() error{
		func() error { return ctl.Offline(sc.ID) },
		func() error { return ctl.Assign(sc.ID, nvme.ResourceVQ, 2) },
		func() error { return ctl.Assign(sc.ID, nvme.ResourceVI, 1) },
		func() error { return pf.EnableVFs(1) },
		func() error { return ctl.Online(sc.ID) },
		func() error { return ctl.Attach(1, sc.ID) },
	} {
		if err := step(); err != nil {
			return nil, "", err
		}
	}
	id, err := ctl.ID()
	if err != nil {
		return nil, "", err
	}
	if err := ctl.Attach(2, id); err != nil {
		return nil, "", err
	}
	// The driver learns of the namespace by a rescan.
	if err := os.WriteFile(filepath.Join("/sys/class/nvme", name, "rescan_controller"), []byte("1"), 0); err != nil {
		return nil, "", err
	}
	ns2 := ""
	for deadline := time.Now().Add(time.Minute); ns2 == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("%s: namespace 2 attached, no block device for it after a minute", name)
		}
		ns2 = hostpci.Sysfs{}.NVMeNamespaceNode(name, 2, "/dev")
	}
	addr, err := pf.VF(0)
	if err != nil {
		return nil, "", err
	}
	vf, err := hostpci.Sysfs{}.Device(addr)
	if err != nil {
		return nil, "", err
	}
	if _, err := vf.BindVFIO(); err != nil {
		return nil, "", err
	}
	return vf, ns2, nil
}

// openVFIO opens the VFIO container and the group for one VMM: a group
// belongs to one container at a time, and stays in it while any
// descriptor of it is open, so each run gets its own and the bench closes
// its copies once the VMM has started.
func openVFIO(group int) ([]*os.File, error) {
	c, err := os.OpenFile("/dev/vfio/vfio", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	g, err := os.OpenFile("/dev/vfio/"+strconv.Itoa(group), os.O_RDWR, 0)
	if err != nil {
		c.Close()
		return nil, err
	}
	return []*os.File{c, g}, nil
}

// keepDecoding sets memory space enable in the command register of the VF
// at dir whenever it is clear (the emulator's quirk, above).
func keepDecoding(dir string) {
	for ; ; time.Sleep(20 * time.Millisecond) {
		f, err := os.OpenFile(filepath.Join(dir, "config"), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		cmd := make([]byte, 2)
		if _, err := f.ReadAt(cmd, 4); err == nil && cmd[0]&2 == 0 {
			cmd[0] |= 2
			f.WriteAt(cmd, 4)
		}
		f.Close()
	}
}
