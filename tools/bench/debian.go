package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/bench/result"
	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
	"github.com/hyperroot/hyperroot/vmm/boot/diskboot"
)

// The Debian boot benchmark (hyperroot-bench debian): a stock Debian 12
// system (tools/mkdebian's image, the base on the appliance's data disk)
// booted from its disk to systemd's multi-user target, by hyperroot and by
// QEMU, each from a fresh thin qcow2 clone of the base, as a VM's first
// boot is. hyperroot finds the kernel, initramfs and command line in the
// image's grub.cfg itself (boot: disk); QEMU gets the same three with
// -kernel, -initrd and -append, read from the image by the same code, since
// its firmware would need a boot loader installed in the image, which has
// only the menu (update-grub's grub.cfg, no grub-install). Both
// serve the clone with io_uring through the appliance's page cache. The
// time is from starting the VMM to systemd's "Reached target ... Multi-User
// System" on the serial console, which systemd writes although the entry
// boots quiet (systemd.show_status=1); cloud-init is off in both
// (cloud-init=disabled), so the figure is the VMM's and the guest's boot,
// not first-boot configuration.

const (
	debianBase    = "/var/lib/hyperroot/bases/debian-12.qcow2"
	debianClone   = "/var/lib/hyperroot/bench/debian.qcow2"
	debianMemory  = "512M"
	debianCmdline = "console=ttyS0 systemd.show_status=1 cloud-init=disabled"
	// debianTimeout bounds one boot: 1.5-2 minutes in the TCG appliance.
	debianTimeout = 8 * time.Minute
)

var multiUserRE = regexp.MustCompile(`Reached target.*(Multi-User System|multi-user\.target)`)

// debianPeers are the contenders, hyperroot first.
func debianPeers(hyperroot, kernel, initrd, cmdline string) []benchPeer {
	ours := vmmcli.Args{Name: "bench", BootDisk: true, Cmdline: debianCmdline, CPUs: 1, Memory: debianMemory,
		Disks: []vmmcli.Disk{{FD: -1, Path: debianClone, IO: vmmcli.IOUring, Format: "qcow2"}}}
	ready := func(line string) bool { return multiUserRE.MatchString(line) }
	return []benchPeer{
		{name: "hyperroot", argv: append([]string{hyperroot}, ours.Argv()...), ready: ready, timeout: debianTimeout},
		{name: "qemu-pc", ready: ready, timeout: debianTimeout, argv: []string{qemuPath,
			"-enable-kvm", "-cpu", qemuCPU(), "-M", "pc", "-smp", "1", "-m", "512",
			"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
			"-kernel", kernel, "-initrd", initrd, "-append", cmdline + " " + debianCmdline,
			"-drive", "file=" + debianClone + ",if=none,id=d,format=qcow2,aio=io_uring,cache=writeback",
			"-device", "virtio-blk-pci,drive=d",
			// hyperroot gives every guest a virtio-rng; without one,
			// QEMU's guest stopped short of multi-user in half its boots
			// (consoles ending after "Starting ssh.service").
			"-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng"}},
	}
}

func runDebianBench(e *env) error {
	if _, err := os.Stat(qemuPath); err != nil {
		return fmt.Errorf("no QEMU in this image (%v): build it with mkimage -bench", err)
	}
	f, err := os.Open(debianBase)
	if err != nil {
		return fmt.Errorf("%v (./build.sh bench gives the appliance a data disk with the Debian image)", err)
	}
	defer f.Close()
	im, err := qcow2.Open(f, qcow2.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	b, err := diskboot.Find(im, im.Size(), "")
	if err != nil {
		return err
	}
	e.logf("bench: debian %s", b.Source)
	dir := filepath.Dir(debianClone)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(kernel, b.Kernel, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(initrd, b.Initrd, 0o644); err != nil {
		return err
	}
	peers := debianPeers(e.hyperroot, kernel, initrd, b.Cmdline)
	times := map[string][]time.Duration{}
	for round := 1; round <= benchRounds; round++ {
		for _, p := range roundOrder(peers, round) {
			if err := makeClone(debianClone, debianBase); err != nil {
				return err
			}
			settle(e, "debian", round, p.name)
			d, _, err := bootOnce(e.starter, p, false)
			if err != nil && p.name == "hyperroot" {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if err != nil {
				// A peer's failure is its figure's: the medians count
				// the boots that came through.
				e.logf("bench: debian round=%d vmm=%s failed: %v", round, p.name, err)
				continue
			}
			times[p.name] = append(times[p.name], d)
			e.logf("bench: debian round=%d vmm=%s time-to-multi-user=%.3fs", round, p.name, d.Seconds())
		}
	}
	if len(times["qemu-pc"]) == 0 {
		return fmt.Errorf("qemu-pc booted in none of %d rounds: no ratio", benchRounds)
	}
	h, q := median(times["hyperroot"]), median(times["qemu-pc"])
	e.logf("bench: debian median hyperroot=%.3fs (%d boots) qemu-pc=%.3fs (%d boots) ratio=%.2f (lower is better)",
		h.Seconds(), len(times["hyperroot"]), q.Seconds(), len(times["qemu-pc"]), h.Seconds()/q.Seconds())
	fig := result.Figure{Bench: "debian", Name: "Debian 12 qcow2 clone to multi-user", Unit: "s", Lower: true, Ours: "hyperroot",
		Values: map[string][]float64{}}
	for name, ds := range times {
		for _, d := range ds {
			fig.Values[name] = append(fig.Values[name], d.Seconds())
		}
	}
	e.logf("%s", fig.Line())
	return nil
}
