package testenv

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(0xAE, 0); KVM's stable API is 12.
const kvmGetAPIVersion = 0xAE00

// KVMUsable reports whether /dev/kvm is a KVM device this process can
// use: a character device that opens read-write and answers
// KVM_GET_API_VERSION with 12. A stray regular file of that name, or a
// device without the permission, is not.
func KVMUsable() error {
	fi, err := os.Stat("/dev/kvm")
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("/dev/kvm is not a character device (%s)", fi.Mode())
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("/dev/kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != 12 {
		return fmt.Errorf("/dev/kvm: KVM API version %d, want 12", v)
	}
	return nil
}

// PVM reports whether the host's KVM is PVM's (the kvm_pvm module), which
// runs guests without hardware virtualisation: the whole KVM API works,
// but a guest is emulated far too slowly to boot Linux, and some of KVM's
// counts differ (port instructions are not counted as io_exits).
func PVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}
