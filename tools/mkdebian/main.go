// Command mkdebian makes the Debian 12 system image the end-to-end tests
// boot as a stock distribution's disk: built from Debian's own packages
// with mmdebstrap (the cloud kernel, systemd, cloud-init, ifupdown and
// DHCP, OpenSSH, D-Bus so that logind answers the ACPI power button), its
// boot menu written by Debian's own u-boot-update
// (/boot/extlinux/extlinux.conf), laid out as a cloud image is (GPT, an
// ext4 root labelled debian-root) and converted to qcow2 to serve as the
// base of thin clones.
//
// The image is cached: it is made again only when its recipe (this
// program's packages and set-up) changed. It prints the image's path.
//
//	go run ./tools/mkdebian [-out dir]   (default: disktest.DebianDir, ~/.cache/hyperroot/debian)
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hyperroot/hyperroot/internal/disktest"
)

// packages are what the image holds beyond Debian's minbase variant.
var packages = []string{
	"linux-image-cloud-amd64", "systemd", "systemd-sysv", "udev", "cloud-init",
	"ifupdown", "isc-dhcp-client", "iproute2", "iputils-ping", "openssh-server",
	"grub2-common", "dbus",
}

// rootUUID is the root filesystem's UUID: fixed, so that the grub.cfg
// written before the filesystem is made can name it (root=UUID=...), as
// the one on an installed Debian system does.
const rootUUID = "3b0c7a52-9d1e-4f6a-8c2d-5e4f1a6b7c80"

// setup runs in the unpacked root ($1) once the packages are in: mounts by
// label, the boot menu from Debian's own update-grub, cloud-init looking
// for its NoCloud seed only (no waiting for cloud metadata services that
// are not there), setting the C.UTF-8 locale glibc always has (minbase
// has no en_US to generate) and running only the modules that configure a
// VM from its seed (host name, users and SSH keys, files, boot and run
// commands, scripts, power state): not Debian's default list's package,
// locale, apt, grub-dpkg, NTP, disk-growing and other clouds' agents,
// which under nested TCG cost each first boot time (their imports and
// the programs they run), no host name of the build machine, and the
// virtio console's driver in the initramfs, so that a guest booted with
// console=hvc0 has its console from its first process on (under TCG a
// serial console costs an exit per byte; see docs/PERFORMANCE.md).
//
// update-grub asks grub-probe which device holds / and what is on it,
// which a directory being unpacked cannot answer: for that one run
// probeStandIn ($2) answers for the disk build lays out, and
// /dev/disk/by-uuid names rootUUID, so that grub's 10_linux writes
// root=UUID= as on an installed system. The rest of grub.cfg is Debian's
// scripts' own, /etc/default/grub as Debian ships it.
const setup = `set -e
r=${1:?the root being made}
printf 'LABEL=debian-root / ext4 errors=remount-ro 0 1\n' >"$r/etc/fstab"
cp "$r/usr/share/grub/default/grub" "$r/etc/default/grub"
mkdir -p "$r/boot/grub"
mv "$r/usr/sbin/grub-probe" "$r/usr/sbin/grub-probe.real"
install -m 755 "$2" "$r/usr/sbin/grub-probe"
mkdir -p "$r/dev/disk/by-uuid"
touch "$r/dev/disk/by-uuid/` + rootUUID + `"
chroot "$r" update-grub
rm -r "$r/dev/disk"
mv "$r/usr/sbin/grub-probe.real" "$r/usr/sbin/grub-probe"
printf 'virtio_console\n' >>"$r/etc/initramfs-tools/modules"
chroot "$r" update-initramfs -u
cat >"$r/etc/cloud/cloud.cfg.d/90_hyperroot.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
cloud_init_modules: [seed_random, bootcmd, write-files, set_hostname, update_hostname, update_etc_hosts, users-groups, ssh]
cloud_config_modules: [set-passwords, runcmd]
cloud_final_modules: [write-files-deferred, scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message, power-state-change]
EOF
rm -f "$r/etc/hostname"
`

// probeStandIn answers grub-probe's questions (-t T or --target=T) for
// the root of the disk build lays out: partition 2 of the first virtio
// disk, GPT, ext4 (GRUB's ext2 driver reads it) with rootUUID. A question
// it has no answer for fails, as grub-probe does.
const probeStandIn = `#!/bin/sh
while [ $# -gt 0 ]; do
	case $1 in -t) t=$2; shift ;; --target=*) t=${1#--target=} ;; esac
	shift
done
case $t in
device) echo /dev/vda2 ;;
fs) echo ext2 ;;
fs_uuid) echo ` + rootUUID + ` ;;
partmap) echo gpt ;;
drive) echo '(hd0,gpt2)' ;;
compatibility_hint) echo hd0,gpt2 ;;
abstraction | cryptodisk_uuid | hints_string) ;;
*) exit 1 ;;
esac
`

const (
	suite = "bookworm"
	size  = 2 << 30 // the disk, as Debian's own cloud images have it
	name  = "debian-12.qcow2"
)

func main() {
	out := flag.String("out", disktest.DebianDir(), "directory of the image (and its cache)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("mkdebian: ")
	img, err := build(*out)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(img)
}

// recipe identifies what the image is made of.
func recipe() string {
	sum := sha256.Sum256([]byte(fmt.Sprint(suite, size, packages, setup, probeStandIn)))
	return fmt.Sprintf("%x\n", sum[:8])
}

func build(dir string) (string, error) {
	img := filepath.Join(dir, name)
	stamp := img + ".recipe"
	if have, err := os.ReadFile(stamp); err == nil && string(have) == recipe() {
		if _, err := os.Stat(img); err == nil {
			return img, nil
		}
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("making %s needs root (mmdebstrap unpacks packages as their owners)", img)
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%s not found (./build.sh deps installs it)", tool)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Not under out/: go list ./... would walk the root (and its /proc,
	// which mmdebstrap mounts) while it is made.
	work, err := os.MkdirTemp("", "mkdebian-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	hook := filepath.Join(work, "setup.sh")
	if err := os.WriteFile(hook, []byte(setup), 0o755); err != nil {
		return "", err
	}
	probe := filepath.Join(work, "grub-probe")
	if err := os.WriteFile(probe, []byte(probeStandIn), 0o755); err != nil {
		return "", err
	}
	log.Printf("mmdebstrap %s with %s", suite, strings.Join(packages, ","))
	if err := run("mmdebstrap", "--quiet", "--variant=minbase", "--include="+strings.Join(packages, ","),
		"--customize-hook="+hook+` "$1" `+probe, suite, root); err != nil {
		return "", err
	}
	raw := filepath.Join(work, "disk.raw")
	if err := disktest.WriteGPTExt4(raw, size, disktest.Part{Tree: root, Label: "debian-root", UUID: rootUUID}); err != nil {
		return "", err
	}
	tmp := filepath.Join(work, name)
	if err := run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, img); err != nil {
		return "", err
	}
	return img, os.WriteFile(stamp, []byte(recipe()), 0o644)
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
