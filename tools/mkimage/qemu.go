package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/u-root/u-root/pkg/ldd"
)

// QEMU as a peer VMM in the bench image: the disk benchmark runs the same
// guest under `hyperroot vmm` and under qemu-system-x86_64 -enable-kvm in
// one appliance run. QEMU is a dynamically linked program, so the image
// gets the binary, every library the dynamic loader resolves for it (and
// the loader itself, at the path the binary names), and the firmware that
// `-M pc -kernel` loads. The firmware list is what QEMU 7.2 opens for that
// machine (found with strace on the host and by running it in the
// appliance): SeaBIOS, the option ROM that boots a -kernel (linuxboot_dma)
// and the TPR-patching ROM that the pc machine loads under KVM (kvmvapic);
// and the microvm machine's own firmware and the PVH option ROM, for the
// boot benchmark.
const qemuBinary = "/usr/bin/qemu-system-x86_64"

// benchModules are the appliance kernel modules a bench image carries
// besides the board's: the network benchmark puts its QEMU guests on a
// Linux bridge (bridge pulls in stp and llc). PID 1 loads them only when
// that benchmark runs; a product image has no use for a kernel bridge.
var benchModules = []string{"bridge"}

var qemuFirmware = []string{
	"/usr/share/seabios/bios-256k.bin",
	"/usr/share/qemu/linuxboot_dma.bin",
	"/usr/share/qemu/kvmvapic.bin",
	// -M microvm's firmware (qboot, which Debian links it to).
	"/usr/share/qemu/bios-microvm.bin",
	// The option ROM that boots an ELF vmlinux through its PVH entry
	// (-kernel vmlinux, the boot benchmark's qemu-pc-vmlinux).
	"/usr/share/qemu/pvh.bin",
}

// qemuFiles returns the "host:image" pairs that install QEMU at the paths
// it has on this host. Library symlinks are kept as symlinks (with their
// targets); a firmware file that is a symlink (Debian links some into
// other packages' directories) is installed as its target's content.
func qemuFiles() ([]string, error) {
	if _, err := os.Stat(qemuBinary); err != nil {
		return nil, fmt.Errorf("%w (install qemu-system-x86: build.sh deps)", err)
	}
	libs, err := ldd.FList(qemuBinary)
	if err != nil {
		return nil, fmt.Errorf("libraries of %s: %w", qemuBinary, err)
	}
	sort.Strings(libs)
	files := []string{pair(qemuBinary, qemuBinary)}
	for _, l := range libs {
		files = append(files, pair(l, l))
	}
	for _, fw := range qemuFirmware {
		real, err := filepath.EvalSymlinks(fw)
		if err != nil {
			return nil, fmt.Errorf("qemu firmware: %w", err)
		}
		files = append(files, pair(real, fw))
	}
	return files, nil
}

// pair is the Initramfs.Files entry putting host file src at absolute
// image path dst.
func pair(src, dst string) string { return src + ":" + dst[1:] }
