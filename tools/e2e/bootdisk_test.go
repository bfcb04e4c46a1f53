package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/internal/disktest"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestBootFromDisk: VMs with no kernel of their own boot what their disk's
// grub.cfg names, as a distribution's image has it: a GPT disk whose ext4
// root holds /boot/vmlinuz-*, /boot/initrd.img-* and /boot/grub/grub.cfg
// (the test guest's kernel and initramfs, put there on the host). One VM
// boots a thin qcow2 clone of the disk (its default entry), another the
// disk itself read-only (the second entry, named in the config); a third,
// whose disk has no boot loader configuration, fails with an error naming
// what was looked for.
func TestBootFromDisk(t *testing.T) {
	parallel(t)
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	img := imageDir(t)
	kernel, err := os.ReadFile(filepath.Join(img, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.ReadFile(filepath.Join(img, "guest-initramfs.cpio"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	put := func(p string, data []byte) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const v = "6.1.0-99-cloud-amd64"
	put("boot/vmlinuz-"+v, kernel)
	put("boot/initrd.img-"+v, initrd)
	put("boot/grub/grub.cfg", []byte(fmt.Sprintf(`set default="0"
menuentry 'Debian GNU/Linux' --class debian --id 'gnulinux-simple' {
	insmod ext2
	search --no-floppy --fs-uuid --set=root 0000
	linux	/boot/vmlinuz-%[1]s ro console=ttyS0 panic=-1 quiet hyperroot.guest=poweroff
	initrd	/boot/initrd.img-%[1]s
}
submenu 'Advanced options for Debian GNU/Linux' {
	menuentry 'Debian GNU/Linux (echo)' --id 'gnulinux-echo' {
		linux	/boot/vmlinuz-%[1]s ro console=ttyS0 panic=-1 quiet hyperroot.guest=echo
		initrd	/boot/initrd.img-%[1]s
	}
}
`, v)))
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "bases"), 0o755)
	disktest.GPTExt4(t, filepath.Join(tree, "bases", "boot.raw"), 128<<20, root)
	data := filepath.Join(dir, "data.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", "-d", tree, data, "512M")

	vm := func(name, boot, disk string) string {
		return fmt.Sprintf("  - {name: %s, cpus: 1, memory: 160M, restart: never, boot: %s, disks: [%s]}\n", name, boot, disk)
	}
	cfg := "vms:\n" +
		vm("clone", "disk", "{path: vms/clone.qcow2, base: bases/boot.raw}") +
		vm("named", "{entry: gnulinux-echo}", "{path: bases/boot.raw, readonly: true}") +
		vm("blank", "disk", "{path: vms/blank.img, size: 16M}")
	testbed(t, func(t testing.TB) {
		m := start(t, qemu.Options{Drives: []string{data}, Config: configFile(t, cfg), Memory: "2G"})
		seen(t, m, `^clone\| hyperroot vmm: clone: booting disk 0: partition 2 \(ext4\) /boot/grub/grub\.cfg: Debian GNU/Linux \(kernel \d+ bytes, initrd \d+ bytes\)$`)
		seen(t, m, `^clone\| guest: action poweroff$`)
		seen(t, m, `hyperroot: vm clone exited code=0 reason=poweroff`)
		seen(t, m, `^named\| hyperroot vmm: named: booting disk 0: partition 2 \(ext4\) /boot/grub/grub\.cfg: Debian GNU/Linux \(echo\) `)
		seen(t, m, `^named\| guest: action echo$`)
		seen(t, m, `^blank\| hyperroot vmm: blank: disk 0: no bootable entry: looked for /loader/entries, .* on the whole disk \(no ext4 or FAT filesystem\)$`)
		seen(t, m, `hyperroot: vm blank exited code=1 `)
		powerButton(t, m)
	})
}
