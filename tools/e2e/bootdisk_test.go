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
// disk itself read-only (the second entry, named in the config). Beside
// them, VMs whose images are bad each fail with an error naming the VM,
// the disk and what is wrong, and the others run: a disk with no boot
// loader configuration, one whose grub.cfg names no kernel, one whose
// /boot is XFS, a qcow2 image cut short as by a download that stopped, and
// a qcow2 whose backing chain loops. On the host afterwards: qemu-img
// finds the clone clean, and the bad images are as they were.
func TestBootFromDisk(t *testing.T) {
	parallel(t)
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	testenv.NeedTool(t, "debugfs", "e2fsprogs")
	testenv.NeedTool(t, "mkfs.xfs", "xfsprogs")
	testenv.NeedTool(t, "qemu-img", "qemu-utils")
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
	os.MkdirAll(filepath.Join(tree, "vms"), 0o755)
	boot := filepath.Join(tree, "bases", "boot.raw")
	disktest.GPTExt4(t, boot, 128<<20, root)

	// The bad images.
	put("boot/grub/grub.cfg", []byte("set default=0\nmenuentry 'Windows Boot Manager' --id 'osprober-efi' {\n\tinsmod part_gpt\n\tchainloader /EFI/Microsoft/Boot/bootmgfw.efi\n}\n"))
	disktest.GPTExt4(t, filepath.Join(tree, "bases", "chain.raw"), 64<<20, root)
	xfs := filepath.Join(tree, "bases", "xfs.raw")
	run(t, "truncate", "-s", "300M", xfs)
	run(t, "mkfs.xfs", "-q", xfs)
	trunc := filepath.Join(tree, "bases", "trunc.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", boot, trunc)
	st, err := os.Stat(trunc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(trunc, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	// vms/loop-a.qcow2 reads from loop-b.qcow2, which reads from loop-a.
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "loop-b.qcow2", "-F", "qcow2", filepath.Join(tree, "vms", "loop-a.qcow2"), "64M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "loop-a.qcow2", "-F", "qcow2", filepath.Join(tree, "vms", "loop-b.qcow2"), "64M")
	bad := []string{"bases/trunc.qcow2", "vms/loop-a.qcow2", "vms/loop-b.qcow2", "bases/chain.raw", "bases/xfs.raw"}
	sums := map[string]string{}
	for _, name := range bad {
		sums[name] = fileSHA(t, filepath.Join(tree, name))
	}
	data := filepath.Join(dir, "data.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", "-d", tree, data, "1G")

	vm := func(name, boot, disk string) string {
		return fmt.Sprintf("  - {name: %s, cpus: 1, memory: 160M, restart: never, boot: %s, disks: [%s]}\n", name, boot, disk)
	}
	cfg := "vms:\n" +
		vm("clone", "disk", "{path: vms/clone.qcow2, base: bases/boot.raw}") +
		vm("named", "{entry: gnulinux-echo}", "{path: bases/boot.raw, readonly: true}") +
		vm("blank", "disk", "{path: vms/blank.img, size: 16M}") +
		vm("chain", "disk", "{path: bases/chain.raw, readonly: true}") +
		vm("xfs", "disk", "{path: bases/xfs.raw, readonly: true}") +
		vm("trunc", "disk", "{path: bases/trunc.qcow2, readonly: true}") +
		vm("loop", "disk", "{path: vms/loop-a.qcow2}")
	const dd = `/var/lib/hyperroot/`
	testbed(t, func(t testing.TB) {
		m := start(t, qemu.Options{Drives: []string{data}, Config: configFile(t, cfg), Memory: "2G"})
		seen(t, m, `^clone\| hyperroot vmm: clone: booting disk `+dd+`vms/clone\.qcow2: partition 2 \(ext4\) /boot/grub/grub\.cfg: Debian GNU/Linux \(kernel \d+ bytes, initrd \d+ bytes\)$`)
		seen(t, m, `^clone\| guest: action poweroff$`)
		seen(t, m, `hyperroot: vm clone exited code=0 reason=poweroff`)
		seen(t, m, `^named\| hyperroot vmm: named: booting disk `+dd+`bases/boot\.raw: partition 2 \(ext4\) /boot/grub/grub\.cfg: Debian GNU/Linux \(echo\) `)
		seen(t, m, `^named\| guest: action echo$`)
		seen(t, m, `^blank\| hyperroot vmm: blank: disk `+dd+`vms/blank\.img: no bootable entry: looked for /loader/entries, .* on the whole disk \(no ext4 or FAT filesystem\)$`)
		seen(t, m, `^chain\| hyperroot vmm: chain: disk `+dd+`bases/chain\.raw: no bootable entry: partition 2 \(ext4\) /boot/grub/grub\.cfg names no kernel; looked for /loader/entries, .* on partition 1 \(BIOS boot partition\), partition 2 \(ext4\)$`)
		seen(t, m, `^xfs\| hyperroot vmm: xfs: disk `+dd+`bases/xfs\.raw: unsupported filesystem: the whole disk \(xfs, unsupported\); the kernel and its boot loader configuration are read from ext4 or FAT only`)
		seen(t, m, `^trunc\| hyperroot vmm: trunc: disk `+dd+`bases/trunc\.qcow2: qcow2: image truncated: (a data cluster|an L2 table|a refcount block) at 0x[0-9a-f]+ does not lie within the file \(\d+ bytes\)`)
		seen(t, m, `hyperroot: error: vm loop: disk `+dd+`vms/loop-a\.qcow2: backing chain loops: `+dd+`vms/loop-a\.qcow2 is `+dd+`vms/loop-a\.qcow2 again$`)
		for _, name := range []string{"blank", "chain", "xfs", "trunc"} {
			seen(t, m, `hyperroot: vm `+name+` exited code=1 `)
		}
		powerButton(t, m)
	})
	// On the host: the clone clean, the bad images untouched.
	out := filepath.Join(dir, "out")
	os.MkdirAll(filepath.Join(out, "vms"), 0o755)
	os.MkdirAll(filepath.Join(out, "bases"), 0o755)
	for _, name := range append(bad, "vms/clone.qcow2") {
		if err := os.WriteFile(filepath.Join(out, name), debugfsCat(t, data, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(boot, filepath.Join(out, "bases", "boot.raw"))
	t.Log(run(t, "qemu-img", "check", filepath.Join(out, "vms", "clone.qcow2")))
	for _, name := range bad {
		if got := fileSHA(t, filepath.Join(out, name)); got != sums[name] {
			t.Errorf("%s changed: sha256 %s, was %s", name, got, sums[name])
		}
	}
}
