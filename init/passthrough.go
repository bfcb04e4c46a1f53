package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/hostpci"
	"github.com/hyperroot/hyperroot/internal/nvme"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// PCI passthrough, the supervisor's half: SR-IOV virtual functions enabled
// at boot (setupSRIOV), and for each VM start the devices it is given,
// checked, moved to vfio-pci and opened (/dev/vfio/vfio and the device's
// IOMMU group) for its VMM, which does the rest (vmm/vfio). A device goes
// back to its driver when its VM is gone for good, not between restarts.

// vfioDir is where the kernel's VFIO character devices are.
var vfioDir = "/dev/vfio"

// setupSRIOV enables the virtual functions p asks for, one physical
// function after the other; a failure is reported and leaves that one,
// the others go on.
func setupSRIOV(c *console, p *config.PCI) {
	if p == nil {
		return
	}
	for _, s := range p.SRIOV {
		what, err := enableSRIOV(hostpci.Sysfs{}, "/dev", s)
		if err != nil {
			c.Errorf("sriov", err)
			continue
		}
		c.Printf("sriov %s", what)
	}
}

// enableSRIOV enables s.VFs virtual functions of s.Device and says what it
// did. An NVMe physical function's secondary controllers are given queues
// and interrupt vectors and brought online around that, and the
// namespaces s names attached to them: NVMe virtual functions are
// useless without. dev is where the nvme character devices are.
func enableSRIOV(fs hostpci.Sysfs, dev string, s config.SRIOV) (string, error) {
	pf, err := fs.Device(s.Device)
	if err != nil {
		return "", err
	}
	total, err := pf.TotalVFs()
	if err != nil {
		return "", err
	}
	if s.VFs > total {
		return "", fmt.Errorf("%s (%s): %d virtual functions asked, it has at most %d", pf.Addr, pf.ID(), s.VFs, total)
	}
	if pf.Class() != hostpci.ClassNVMe {
		if len(s.Namespaces) > 0 {
			return "", fmt.Errorf("%s (%s): namespaces are for an NVMe controller, and it is not one", pf.Addr, pf.ID())
		}
		if err := pf.EnableVFs(s.VFs); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s (%s): %s", pf.Addr, pf.ID(), listVFs(pf, s.VFs)), nil
	}
	name := pf.NVMeName()
	if name == "" {
		return "", fmt.Errorf("%s (%s): an NVMe controller the nvme driver has not taken: its secondary controllers cannot be managed", pf.Addr, pf.ID())
	}
	ctl, err := nvme.Open(filepath.Join(dev, name))
	if err != nil {
		return "", fmt.Errorf("%s: %w", pf.Addr, err)
	}
	defer ctl.Close()
	secs, vq, vi, err := nvmeShares(ctl, s.VFs)
	if err != nil {
		return "", fmt.Errorf("%s (%s): %w", pf.Addr, name, err)
	}
	// Resources are assigned to offline secondaries; a secondary goes
	// online only once its VF exists.
	for _, sc := range secs {
		for _, step := range []func() error{
			func() error { return ctl.Offline(sc.ID) },
			func() error { return ctl.Assign(sc.ID, nvme.ResourceVQ, vq) },
			func() error { return ctl.Assign(sc.ID, nvme.ResourceVI, vi) },
		} {
			if err := step(); err != nil {
				return "", fmt.Errorf("%s (%s): %w", pf.Addr, name, err)
			}
		}
	}
	if err := pf.EnableVFs(s.VFs); err != nil {
		return "", err
	}
	var attached []string
	for i, sc := range secs {
		if err := ctl.Online(sc.ID); err != nil {
			return "", fmt.Errorf("%s (%s): %w", pf.Addr, name, err)
		}
		if i >= len(s.Namespaces) || s.Namespaces[i] == 0 {
			continue
		}
		ns := s.Namespaces[i]
		if err := ctl.Attach(ns, sc.ID); err != nil && !alreadyAttached(err) {
			return "", fmt.Errorf("%s (%s): VF %d: %w", pf.Addr, name, i, err)
		}
		attached = append(attached, fmt.Sprintf("%d to VF %d", ns, i))
	}
	what := fmt.Sprintf("%s (%s, %s): %s; secondary controllers online with %d queues and %d interrupt vectors each",
		pf.Addr, pf.ID(), name, listVFs(pf, s.VFs), vq, vi)
	if len(attached) > 0 {
		what += "; namespace " + strings.Join(attached, ", ")
	}
	return what, nil
}

// alreadyAttached says whether err is NVMe's "namespace already attached"
// (status code type 1, code 0x18): a namespace a previous boot attached,
// on a controller that keeps it, is where it should be.
func alreadyAttached(err error) bool {
	var se *nvme.StatusError
	return errors.As(err, &se) && se.Status&0x7ff == 0x118
}

// nvmeShares picks the secondary controllers of the first n virtual
// functions and the queues and vectors each gets: an even share of the
// flexible resources, at most what one secondary may have, at least the
// admin queue and one I/O queue (2) and one vector.
func nvmeShares(ctl *nvme.Controller, n int) ([]nvme.Secondary, uint16, uint16, error) {
	caps, err := ctl.PrimaryCapabilities()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("not an SR-IOV primary controller: %w", err)
	}
	all, err := ctl.Secondaries()
	if err != nil {
		return nil, 0, 0, err
	}
	var secs []nvme.Secondary
	for _, sc := range all {
		if sc.VF >= 1 && int(sc.VF) <= n {
			secs = append(secs, sc)
		}
	}
	slices.SortFunc(secs, func(a, b nvme.Secondary) int { return int(a.VF) - int(b.VF) })
	if len(secs) != n {
		return nil, 0, 0, fmt.Errorf("%d virtual functions asked, the controller lists secondary controllers for %d of them", n, len(secs))
	}
	share := func(total uint32, most uint16, least uint16) uint16 {
		s := total / uint32(n)
		if most != 0 && s > uint32(most) {
			s = uint32(most)
		}
		if s > 0xffff {
			s = 0xffff
		}
		return max(uint16(s), least)
	}
	vq, vi := share(caps.FlexibleVQ, caps.MaxVQPerSecondary, 2), share(caps.FlexibleVI, caps.MaxVIPerSecondary, 1)
	if uint32(vq)*uint32(n) > caps.FlexibleVQ || uint32(vi)*uint32(n) > caps.FlexibleVI {
		return nil, 0, 0, fmt.Errorf("%d virtual functions need %d queues and %d vectors, the controller has %d and %d to give",
			n, 2*n, n, caps.FlexibleVQ, caps.FlexibleVI)
	}
	return secs, vq, vi, nil
}

// listVFs names the first n virtual functions of pf by address.
func listVFs(pf *hostpci.Device, n int) string {
	var as []string
	for i := range n {
		a, err := pf.VF(i)
		if err != nil {
			a = "?"
		}
		as = append(as, a)
	}
	return fmt.Sprintf("%d virtual functions: %s", n, strings.Join(as, ", "))
}

// deviceOwners records which VM has which passed-through device, and the
// driver each had before, to give it back.
type deviceOwners struct {
	fs hostpci.Sysfs
	mu sync.Mutex
	m  map[string]deviceOwner // by PCI address
}

type deviceOwner struct {
	vm     string
	driver string // before vfio-pci; "" for none
	group  int
}

// vmDevices are a VM's devices opened for its VMM.
type vmDevices struct {
	addrs []string
	files []*os.File // per device: the container, then the group
	said  []string   // per device: what the console says of it
}

func (v *vmDevices) Close() { closeFiles(v.files) }

// groups are the devices' IOMMU group files, to label as the VM's.
func (v *vmDevices) groups() []*os.File {
	var out []*os.File
	for i := 1; i < len(v.files); i += 2 {
		out = append(out, v.files[i])
	}
	return out
}

// args are the VMM's --device flags, the files being inherited from
// descriptor first on.
func (v *vmDevices) args(first int) []vmmcli.Device {
	var out []vmmcli.Device
	for i, a := range v.addrs {
		out = append(out, vmmcli.Device{PCI: a, Container: first + 2*i, Group: first + 2*i + 1})
	}
	return out
}

// claim resolves, checks, binds to vfio-pci and opens vm's devices; an
// error names the device and why, and leaves nothing claimed.
func (o *deviceOwners) claim(vm string, devs []config.Device) (*vmDevices, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]deviceOwner{}
	}
	out := &vmDevices{}
	var claimed []string
	fail := func(err error) (*vmDevices, error) {
		out.Close()
		for _, a := range claimed {
			o.giveBack(a)
		}
		return nil, err
	}
	for _, dev := range devs {
		d, err := o.resolve(dev)
		if err != nil {
			return fail(fmt.Errorf("device %s: %w", dev, err))
		}
		if own, ok := o.m[d.Addr]; ok && own.vm != vm {
			return fail(fmt.Errorf("device %s: vm %s has it", dev, own.vm))
		}
		group, err := o.check(vm, d)
		if err != nil {
			return fail(fmt.Errorf("device %s: %w", dev, err))
		}
		if _, ok := o.m[d.Addr]; !ok {
			prev, err := d.BindVFIO()
			if err != nil {
				return fail(fmt.Errorf("device %s: %w", dev, err))
			}
			o.m[d.Addr] = deviceOwner{vm: vm, driver: prev, group: group}
			claimed = append(claimed, d.Addr)
		}
		from := o.m[d.Addr].driver
		if from == "" {
			from = "no driver"
		}
		name := d.Addr
		if dev.VF != nil {
			name += ", " + dev.String()
		}
		out.said = append(out.said, fmt.Sprintf("device %s (%s) passed through: IOMMU group %d, vfio-pci (was %s)", name, d.ID(), group, from))
		container, err := os.OpenFile(filepath.Join(vfioDir, "vfio"), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("device %s: %w", dev, err))
		}
		out.files = append(out.files, container)
		g, err := os.OpenFile(filepath.Join(vfioDir, strconv.Itoa(group)), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("device %s: its IOMMU group: %w", dev, err))
		}
		out.files = append(out.files, g)
		out.addrs = append(out.addrs, d.Addr)
	}
	return out, nil
}

// status is how vm's device dev stands, for the API.
func (o *deviceOwners) status(vm string, dev config.Device) api.Device {
	s := api.Device{Device: dev.String(), State: api.DeviceFree}
	o.mu.Lock()
	defer o.mu.Unlock()
	d, err := o.resolve(dev)
	if err != nil {
		return s
	}
	s.Address, s.Driver = d.Addr, d.Driver()
	if own, ok := o.m[d.Addr]; ok && own.vm == vm {
		s.State = api.DeviceAssigned
	}
	return s
}

// resolve finds the host device dev names.
func (o *deviceOwners) resolve(dev config.Device) (*hostpci.Device, error) {
	if dev.VF == nil {
		return o.fs.Device(dev.PCI)
	}
	pf, err := o.fs.Device(dev.VF.PF)
	if err != nil {
		return nil, err
	}
	n, err := pf.NumVFs()
	if err != nil {
		return nil, err // no SR-IOV
	}
	a, err := pf.VF(dev.VF.Index)
	if err != nil {
		return nil, fmt.Errorf("%s has %d virtual functions enabled", pf.Addr, n)
	}
	return o.fs.Device(a)
}

// check refuses a device that cannot be given to vm safely: one without
// an IOMMU group, one the appliance uses (a mounted disk, an interface
// that is up), a physical function with virtual functions enabled, and
// one whose group holds a device the appliance or another VM has (a group
// goes to one VM as a whole). It returns the device's group.
func (o *deviceOwners) check(vm string, d *hostpci.Device) (int, error) {
	group, err := d.Group()
	if err != nil {
		return 0, err
	}
	if n, err := d.NumVFs(); err == nil && n > 0 {
		return 0, fmt.Errorf("it is a physical function with %d virtual functions enabled: give a VM one of those", n)
	}
	members, err := d.GroupMembers()
	if err != nil {
		return 0, err
	}
	for _, m := range members {
		if own, ok := o.m[m]; ok && m != d.Addr {
			if own.vm == vm {
				return 0, fmt.Errorf("it shares IOMMU group %d with %s, also given to vm %s: give a VM one device of a group", group, m, vm)
			}
			return 0, fmt.Errorf("it shares IOMMU group %d with %s, which vm %s has", group, m, own.vm)
		}
		md, err := o.fs.Device(m)
		if err != nil {
			return 0, err
		}
		if use := inUse(md); use != "" {
			if m == d.Addr {
				return 0, fmt.Errorf("the appliance uses it: %s", use)
			}
			return 0, fmt.Errorf("it shares IOMMU group %d with %s, which the appliance uses: %s", group, m, use)
		}
		if m == d.Addr {
			continue
		}
		switch drv := md.Driver(); drv {
		case "", hostpci.VFIODriver, "pcieport":
		default:
			return 0, fmt.Errorf("it shares IOMMU group %d with %s (driver %s): a group is passed through whole, so that device must have no driver or vfio-pci", group, m, drv)
		}
	}
	return group, nil
}

// release gives vm's devices back to their drivers: the VM is gone for
// good (no restart will follow). Failures are reported.
func (o *deviceOwners) release(c *console, vm string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for a, own := range o.m {
		if own.vm != vm {
			continue
		}
		if err := o.giveBack(a); err != nil {
			c.Errorf("vm "+vm, err)
		} else {
			back := own.driver
			if back == "" {
				back = "no driver"
			}
			c.Printf("vm %s: device %s given back (%s)", vm, a, back)
		}
	}
}

// giveBack restores a's driver and forgets its owner; o.mu is held.
func (o *deviceOwners) giveBack(a string) error {
	own := o.m[a]
	delete(o.m, a)
	d, err := o.fs.Device(a)
	if err != nil {
		return err
	}
	return d.Restore(own.driver)
}

// inUse says how the appliance uses d ("" when it does not): a block
// device of it that is mounted (or a partition of it), or a network
// interface of it that is up. A device the appliance's drivers merely
// hold (an NVMe controller nothing is mounted from) may go to a VM.
func inUse(d *hostpci.Device) string {
	dir, err := filepath.EvalSymlinks(d.Dir())
	if err != nil {
		return ""
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var found string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || found != "" {
			return filepath.SkipDir
		}
		if !e.IsDir() {
			return nil // links (driver, subsystem, virtfn) lead elsewhere
		}
		name := e.Name()
		if _, err := hostpci.ParseAddr(name); err == nil && p != dir {
			return filepath.SkipDir // a device behind a bridge: judged on its own
		}
		switch parent := filepath.Base(filepath.Dir(p)); {
		case parent == "block":
			if mountedBlock(mounts, p) {
				found = "/dev/" + name + " (or a partition of it) is mounted"
			}
		case parent == "net":
			if st, _ := os.ReadFile(filepath.Join(p, "operstate")); strings.TrimSpace(string(st)) == "up" {
				found = "network interface " + name + " is up"
			}
		default:
			// An NVMe namespace reached through a subsystem is a hidden
			// path device here (nvme0c0n1) and a block device elsewhere
			// (nvme0n1: hostpci.NVMeBlockName).
			if head := hostpci.NVMeBlockName(name); head != name {
				if hd, err := filepath.EvalSymlinks(filepath.Join(d.SysRoot(), "class/block", head)); err == nil && mountedBlock(mounts, hd) {
					found = "/dev/" + head + " (or a partition of it) is mounted"
				}
			}
		}
		return nil
	})
	return found
}

// mountedBlock says whether the block device whose sysfs directory is
// dir, or a partition of it (a subdirectory with a dev file), is mounted:
// mountinfo's third field is a mounted device's major:minor.
func mountedBlock(mountinfo []byte, dir string) bool {
	var devs []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if e.Name() == "dev" && e.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil {
				devs = append(devs, strings.TrimSpace(string(b)))
			}
		}
		return nil
	})
	for _, l := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && slices.Contains(devs, f[2]) {
			return true
		}
	}
	return false
}
