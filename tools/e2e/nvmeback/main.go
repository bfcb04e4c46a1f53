// Command nvmeback is the hyperroot.run job of the e2e test TestPassthrough:
// it waits until the NVMe controller at the PCI address given as its first
// argument is the appliance's again (the nvme driver has it back from
// vfio-pci, once the VM it was passed through to is gone), then mounts the
// filesystem the VM made on its first namespace with the appliance's own
// driver and kernel and prints the checksum of the file the VM wrote.
// Before and after, it prints what the management API says of the VM's
// device (the VM is its third argument).
//
// Meanwhile it stands in for what the emulator gets wrong: QEMU (10.0)
// decodes an emulated virtual function's BARs only while the VF's own
// command register has memory space enabled, a bit that the SR-IOV
// specification makes read-only zero in a VF (the physical function's VF
// MSE governs all of them), so that no driver sets it and vfio-pci keeps
// it virtual. Each VF of the physical function given as the second
// argument gets it set here whenever it is clear (a function-level reset
// clears it), so that its registers are not all zeros.
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/hostpci"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Println("nvmeback: usage: nvmeback PCI-ADDRESS PF-ADDRESS VM")
		os.Exit(2)
	}
	go keepVFsDecoding(filepath.Join("/sys/bus/pci/devices", os.Args[2]))
	// While the VM has it.
	for d := device(os.Args[3]); ; d = device(os.Args[3]) {
		if d.State == api.DeviceAssigned {
			fmt.Printf("nvmeback: api: vm %s device %s at %s %s (driver %s)\n", os.Args[3], d.Device, d.Address, d.State, d.Driver)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	dir := filepath.Join("/sys/bus/pci/devices", os.Args[1])
	// Until the driver is back and its namespace is a block device: the
	// test's silence watchdog bounds the wait.
	dev := ""
	for ; dev == ""; time.Sleep(100 * time.Millisecond) {
		if l, _ := os.Readlink(filepath.Join(dir, "driver")); filepath.Base(l) != "nvme" {
			continue
		}
		dev = namespace(os.Args[1])
	}
	fmt.Printf("nvmeback: %s has its driver back: nvme, namespace %s\n", os.Args[1], dev)
	d := device(os.Args[3])
	fmt.Printf("nvmeback: api: vm %s device %s at %s %s (driver %s)\n", os.Args[3], d.Device, d.Address, d.State, d.Driver)
	b, err := readPattern(dev + "p1")
	if err != nil {
		fmt.Printf("nvmeback: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("nvmeback: %sp1 pattern sha256 %x\n", dev, sha256.Sum256(b))
}

// readPattern mounts part, the filesystem the guest made, read-only with
// the appliance's kernel and reads the file the guest wrote there.
func readPattern(part string) ([]byte, error) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(part); err == nil {
			break
		} else if time.Now().After(deadline) {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "nvmeback-")
	if err != nil {
		return nil, err
	}
	if err := unix.Mount(part, dir, "ext4", unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mount %s: %w", part, err)
	}
	defer unix.Unmount(dir, 0)
	return os.ReadFile(filepath.Join(dir, "pattern"))
}

// namespace is the block device of namespace 1 (by its NSID) of the
// controller at PCI address addr, "" until there is one.
func namespace(addr string) string {
	d, err := hostpci.Sysfs{}.Device(addr)
	if err != nil {
		return ""
	}
	name := d.NVMeName()
	if name == "" {
		return ""
	}
	return hostpci.Sysfs{}.NVMeNamespaceNode(name, 1, "/dev")
}

// keepVFsDecoding sets memory space enable in the command register of each
// virtual function of the physical function at dir, whenever it is clear.
func keepVFsDecoding(dir string) {
	for ; ; time.Sleep(20 * time.Millisecond) {
		vfs, _ := filepath.Glob(filepath.Join(dir, "virtfn*"))
		for _, vf := range vfs {
			f, err := os.OpenFile(filepath.Join(vf, "config"), os.O_RDWR, 0)
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
}

// device is what the API says of vm's first device (zero on an error).
func device(vm string) api.Device {
	var v api.VM
	c := api.NewUnixClient(api.SocketPath)
	if err := c.Do(context.Background(), "GET", "/v1/vms/"+vm, nil, &v); err != nil || len(v.Devices) == 0 {
		return api.Device{}
	}
	return v.Devices[0]
}
