// Package hostpci manages the appliance's own PCI devices through sysfs,
// for passthrough: which driver holds a device, which IOMMU group it is
// in and who shares it, SR-IOV virtual functions, and moving a device to
// vfio-pci and back. Every path is built from a validated PCI address, so
// a name from the configuration cannot reach outside the device tree.
package hostpci

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Errors a caller tells apart.
var (
	ErrNoDevice = errors.New("no such PCI device")
	ErrNoIOMMU  = errors.New("not behind an IOMMU (no IOMMU group)")
	ErrNoSRIOV  = errors.New("no SR-IOV capability")
)

// Sysfs is where the kernel lists PCI devices and drivers; tests use a
// tree of their own.
type Sysfs struct {
	Root string // "" is /sys
}

func (s Sysfs) root() string {
	if s.Root == "" {
		return "/sys"
	}
	return s.Root
}

var addrRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// ParseAddr checks a PCI address in the kernel's form, domain included
// (0000:00:05.0); upper-case hex digits are accepted and lowered.
func ParseAddr(s string) (string, error) {
	a := strings.ToLower(s)
	if !addrRE.MatchString(a) {
		return "", fmt.Errorf("PCI address %q: want domain:bus:device.function such as 0000:00:05.0", s)
	}
	return a, nil
}

// Device is one PCI device of the host.
type Device struct {
	Addr string
	dir  string // its directory in sysfs
	fs   Sysfs
}

// Device finds the device at addr (see ParseAddr).
func (s Sysfs) Device(addr string) (*Device, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.root(), "bus/pci/devices", a)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", a, ErrNoDevice)
	}
	return &Device{Addr: a, dir: dir, fs: s}, nil
}

func (d *Device) read(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, name))
	return strings.TrimSpace(string(b)), err
}

func (d *Device) write(name, value string) error {
	f, err := os.OpenFile(filepath.Join(d.dir, name), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", d.Addr, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: write %q to %s: %w", d.Addr, value, name, err)
	}
	return nil
}

// Dir is the device's directory in sysfs (a link to where the kernel
// keeps it in its device tree).
func (d *Device) Dir() string { return d.dir }

// SysRoot is the sysfs the device was found in.
func (d *Device) SysRoot() string { return d.fs.root() }

// ID is the device's vendor and device ID, as "8086:5845".
func (d *Device) ID() string {
	v, _ := d.read("vendor")
	p, _ := d.read("device")
	return strings.TrimPrefix(v, "0x") + ":" + strings.TrimPrefix(p, "0x")
}

// Class is the device's class code (0x010802 is an NVMe controller).
func (d *Device) Class() uint32 {
	c, _ := d.read("class")
	n, _ := strconv.ParseUint(strings.TrimPrefix(c, "0x"), 16, 32)
	return uint32(n)
}

// ClassNVMe is the PCI class code of an NVM Express controller.
const ClassNVMe = 0x010802

// Driver names the driver bound to the device, "" for none.
func (d *Device) Driver() string {
	l, err := os.Readlink(filepath.Join(d.dir, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// Group is the device's IOMMU group, ErrNoIOMMU without one.
func (d *Device) Group() (int, error) {
	l, err := os.Readlink(filepath.Join(d.dir, "iommu_group"))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.Addr, ErrNoIOMMU)
	}
	n, err := strconv.Atoi(filepath.Base(l))
	if err != nil {
		return 0, fmt.Errorf("%s: IOMMU group %q: %w", d.Addr, l, err)
	}
	return n, nil
}

// GroupMembers lists the devices of the device's IOMMU group, itself
// included, sorted.
func (d *Device) GroupMembers() ([]string, error) {
	g, err := d.Group()
	if err != nil {
		return nil, err
	}
	es, err := os.ReadDir(filepath.Join(d.fs.root(), "kernel/iommu_groups", strconv.Itoa(g), "devices"))
	if err != nil {
		return nil, fmt.Errorf("%s: IOMMU group %d: %w", d.Addr, g, err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out, nil
}

// TotalVFs is how many virtual functions the device can have,
// ErrNoSRIOV for a device without SR-IOV.
func (d *Device) TotalVFs() (int, error) {
	s, err := d.read("sriov_totalvfs")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.Addr, ErrNoSRIOV)
	}
	return strconv.Atoi(s)
}

// NumVFs is how many virtual functions are enabled.
func (d *Device) NumVFs() (int, error) {
	s, err := d.read("sriov_numvfs")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.Addr, ErrNoSRIOV)
	}
	return strconv.Atoi(s)
}

// EnableVFs enables n virtual functions (disabling those enabled first, as
// the kernel requires to change their number), without letting drivers
// bind to them: they are for VMs, not for the appliance.
func (d *Device) EnableVFs(n int) error {
	total, err := d.TotalVFs()
	if err != nil {
		return err
	}
	if n < 1 || n > total {
		return fmt.Errorf("%s: %d virtual functions: it has at most %d", d.Addr, n, total)
	}
	if cur, err := d.NumVFs(); err != nil {
		return err
	} else if cur == n {
		return nil
	} else if cur != 0 {
		if err := d.write("sriov_numvfs", "0"); err != nil {
			return err
		}
	}
	if err := d.write("sriov_drivers_autoprobe", "0"); err != nil {
		return err
	}
	return d.write("sriov_numvfs", strconv.Itoa(n))
}

// VF is the address of virtual function i (from 0) of the device.
func (d *Device) VF(i int) (string, error) {
	l, err := os.Readlink(filepath.Join(d.dir, "virtfn"+strconv.Itoa(i)))
	if err != nil {
		return "", fmt.Errorf("%s: virtual function %d: %w", d.Addr, i, err)
	}
	return ParseAddr(filepath.Base(l))
}

// NVMeName is the name of the NVMe controller the kernel's nvme driver
// made of the device (nvme0: /dev/nvme0), "" when it made none.
func (d *Device) NVMeName() string {
	es, err := os.ReadDir(filepath.Join(d.dir, "nvme"))
	if err != nil || len(es) != 1 {
		return ""
	}
	return es[0].Name()
}

// nvmePathRE is an NVMe namespace's path device: nvme<subsystem>c<controller>n<namespace>.
var nvmePathRE = regexp.MustCompile(`^nvme([0-9]+)c[0-9]+n([0-9]+)$`)

// NVMeBlockName is the block device name of the NVMe namespace sysfs lists
// as name under a controller: a namespace reached through a subsystem is a
// hidden path device there (nvme0c1n2) and the block device nvme0n2
// elsewhere (subsystem 0, its second namespace head: the kernel numbers
// heads in the order it found them, which is not the namespace's NSID);
// any other name is its own.
func NVMeBlockName(name string) string {
	if m := nvmePathRE.FindStringSubmatch(name); m != nil {
		return "nvme" + m[1] + "n" + m[2]
	}
	return name
}

// NVMeNamespace is the block device name of namespace nsid of the NVMe
// controller ctrl (nvme0), found by the nsid sysfs gives each namespace
// under it; "" when the controller has no such namespace (yet: a
// namespace attached to a running controller appears once the driver
// rescanned).
func (s Sysfs) NVMeNamespace(ctrl string, nsid uint32) string {
	dir := filepath.Join(s.root(), "class", "nvme", ctrl)
	es, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	want := strconv.FormatUint(uint64(nsid), 10)
	for _, e := range es {
		if !strings.HasPrefix(e.Name(), "nvme") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "nsid"))
		if err == nil && strings.TrimSpace(string(b)) == want {
			return NVMeBlockName(e.Name())
		}
	}
	return ""
}

// NVMeNamespaceNode is the device node under devDir (/dev) of
// NVMeNamespace's block device, "" until both exist: the kernel names the
// block device first and devtmpfs makes the node after.
func (s Sysfs) NVMeNamespaceNode(ctrl string, nsid uint32, devDir string) string {
	name := s.NVMeNamespace(ctrl, nsid)
	if name == "" {
		return ""
	}
	node := filepath.Join(devDir, name)
	if _, err := os.Stat(node); err != nil {
		return ""
	}
	return node
}

// VFIODriver is the driver a device must have to be passed through.
const VFIODriver = "vfio-pci"

// BindVFIO moves the device to vfio-pci and returns the driver it had
// ("" for none), for Restore. It is a no-op for a device vfio-pci has.
func (d *Device) BindVFIO() (string, error) {
	prev := d.Driver()
	if prev == VFIODriver {
		return prev, nil
	}
	// driver_override first, so that nothing else can take the device
	// between the unbind and the probe.
	if err := d.write("driver_override", VFIODriver); err != nil {
		return prev, err
	}
	if prev != "" {
		if err := d.write("driver/unbind", d.Addr); err != nil {
			return prev, err
		}
	}
	if err := d.probe(); err != nil {
		return prev, err
	}
	if got := d.Driver(); got != VFIODriver {
		return prev, fmt.Errorf("%s: bound to %q after probing for vfio-pci (is the vfio_pci module loaded?)", d.Addr, got)
	}
	return prev, nil
}

// Restore gives the device back to driver (as BindVFIO returned it): no
// override, unbound from vfio-pci, probed again; "" leaves it unbound.
func (d *Device) Restore(driver string) error {
	if err := d.write("driver_override", "\n"); err != nil {
		return err
	}
	if d.Driver() == VFIODriver {
		if err := d.write("driver/unbind", d.Addr); err != nil {
			return err
		}
	}
	if driver == "" {
		return nil
	}
	if err := d.probe(); err != nil {
		return err
	}
	if got := d.Driver(); got != driver {
		return fmt.Errorf("%s: bound to %q after probing, want %s", d.Addr, got, driver)
	}
	return nil
}

// probe asks the kernel to bind a driver to the device.
func (d *Device) probe() error {
	f, err := os.OpenFile(filepath.Join(d.fs.root(), "bus/pci/drivers_probe"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%s: probe: %w", d.Addr, err)
	}
	_, err = f.WriteString(d.Addr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: probe: %w", d.Addr, err)
	}
	return nil
}
