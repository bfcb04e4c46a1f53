// Package vfio passes a host PCI device through to a guest with Linux's
// VFIO (the type1 IOMMU, container and group interface): the device's DMA
// goes through the host IOMMU to guest RAM, which the VMM maps at guest
// physical addresses; its registers are reached through the device's VFIO
// regions; its MSI-X interrupts are eventfds VFIO signals and KVM injects
// (irqfds), without the VMM in their path.
//
// The VMM opens no file for it: the supervisor opens /dev/vfio/vfio and the
// device's group (/dev/vfio/N) and passes both (the jailed VMM cannot open
// anything). See PCI for what the guest sees of the device.
package vfio

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VFIO ioctls (linux/vfio.h): _IO(VFIO_TYPE, VFIO_BASE + n), with no
// size or direction bits (the structures carry their own argsz).
const (
	vfioType = ';'
	vfioBase = 100

	ioGetAPIVersion     = vfioType<<8 | (vfioBase + 0)
	ioCheckExtension    = vfioType<<8 | (vfioBase + 1)
	ioSetIOMMU          = vfioType<<8 | (vfioBase + 2)
	ioGroupGetStatus    = vfioType<<8 | (vfioBase + 3)
	ioGroupSetContainer = vfioType<<8 | (vfioBase + 4)
	ioGroupGetDeviceFD  = vfioType<<8 | (vfioBase + 6)
	ioDeviceGetInfo     = vfioType<<8 | (vfioBase + 7)
	ioDeviceRegionInfo  = vfioType<<8 | (vfioBase + 8)
	ioDeviceIRQInfo     = vfioType<<8 | (vfioBase + 9)
	// IoctlSetIRQs (VFIO_DEVICE_SET_IRQS) and IoctlReset
	// (VFIO_DEVICE_RESET) are the requests a running VMM makes, for its
	// seccomp filters: the guest enabling MSI-X, the machine closing.
	IoctlSetIRQs = vfioType<<8 | (vfioBase + 10)
	IoctlReset   = vfioType<<8 | (vfioBase + 11)
	ioMapDMA     = vfioType<<8 | (vfioBase + 13)
	ioUnmapDMA   = vfioType<<8 | (vfioBase + 14)
)

const (
	apiVersion     = 0
	type1IOMMU     = 1
	type1v2IOMMU   = 3
	groupViable    = 1 << 0
	deviceReset    = 1 << 0
	devicePCI      = 1 << 1
	regionRead     = 1 << 0
	regionWrite    = 1 << 1
	dmaRead        = 1 << 0
	dmaWrite       = 1 << 1
	irqDataNone    = 1 << 0
	irqDataEventFD = 1 << 2
	irqTrigger     = 1 << 5
	irqActUnmask   = 1 << 4
	irqInfoEventFD = 1 << 0
	// Region and interrupt indices of a PCI device.
	configRegion = 7
	intxIRQ      = 0
	msiIRQ       = 1
	msixIRQ      = 2
)

type groupStatus struct{ argsz, flags uint32 }

type deviceInfo struct{ argsz, flags, numRegions, numIRQs uint32 }

type regionInfo struct {
	argsz, flags, index, capOffset uint32
	size, offset                   uint64
}

type irqInfo struct{ argsz, flags, index, count uint32 }

type dmaMap struct {
	argsz, flags      uint32
	vaddr, iova, size uint64
}

type dmaUnmap struct {
	argsz, flags uint32
	iova, size   uint64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// ioctlValue is ioctl for a request whose argument is a value.
func ioctlValue(fd int, req, arg uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// Region is one of the device's VFIO regions: where its bytes are in the
// device descriptor, and how many there are.
type Region struct {
	Offset, Size uint64
	Readable     bool
	Writable     bool
}

// Device is a PCI device opened through VFIO.
type Device struct {
	Addr      string
	fd        int
	container int
	reset     bool
	regions   [configRegion + 1]Region // BAR0-5, ROM, config
	msix      uint32                   // MSI-X vectors VFIO offers
	intx      bool                     // VFIO can route its INTx (it has a pin)
	msi       uint32                   // MSI vectors VFIO offers
}

// Open attaches group (a descriptor of /dev/vfio/N) to container (one of
// /dev/vfio/vfio) with the type1 IOMMU and opens the device addr of the
// group. Both descriptors stay the caller's.
func Open(container, group int, addr string) (*Device, error) {
	fail := func(format string, args ...any) (*Device, error) {
		return nil, fmt.Errorf("vfio: %s: "+format, append([]any{addr}, args...)...)
	}
	v, err := ioctl(container, ioGetAPIVersion, nil)
	if err != nil {
		return fail("VFIO API version of the container (not /dev/vfio/vfio?): %v", err)
	}
	if v != apiVersion {
		return fail("the container speaks VFIO API %d, want %d", v, apiVersion)
	}
	iommu := uintptr(type1v2IOMMU)
	if n, _ := ioctlValue(container, ioCheckExtension, iommu); n == 0 {
		iommu = type1IOMMU
		if n, _ := ioctlValue(container, ioCheckExtension, iommu); n == 0 {
			return fail("the kernel offers no type1 IOMMU (vfio_iommu_type1 not loaded?)")
		}
	}
	st := groupStatus{argsz: uint32(unsafe.Sizeof(groupStatus{}))}
	if _, err := ioctl(group, ioGroupGetStatus, unsafe.Pointer(&st)); err != nil {
		return fail("group status: %v", err)
	}
	if st.flags&groupViable == 0 {
		return fail("its IOMMU group is not viable: every device of the group must be bound to vfio-pci or to no driver")
	}
	c := int32(container)
	if _, err := ioctl(group, ioGroupSetContainer, unsafe.Pointer(&c)); err != nil {
		return fail("set container: %v", err)
	}
	if _, err := ioctlValue(container, ioSetIOMMU, iommu); err != nil {
		return fail("set IOMMU: %v", err)
	}
	name := append([]byte(addr), 0)
	fd, err := ioctl(group, ioGroupGetDeviceFD, unsafe.Pointer(&name[0]))
	if err != nil {
		return fail("open the device in its group: %v", err)
	}
	d := &Device{Addr: addr, fd: fd, container: container}
	info := deviceInfo{argsz: uint32(unsafe.Sizeof(deviceInfo{}))}
	if _, err := ioctl(fd, ioDeviceGetInfo, unsafe.Pointer(&info)); err != nil {
		d.Close()
		return fail("device info: %v", err)
	}
	if info.flags&devicePCI == 0 {
		d.Close()
		return fail("not a PCI device")
	}
	d.reset = info.flags&deviceReset != 0
	for i := range min(int(info.numRegions), len(d.regions)) {
		ri := regionInfo{argsz: uint32(unsafe.Sizeof(regionInfo{})), index: uint32(i)}
		if _, err := ioctl(fd, ioDeviceRegionInfo, unsafe.Pointer(&ri)); err != nil {
			d.Close()
			return fail("region %d: %v", i, err)
		}
		d.regions[i] = Region{Offset: ri.offset, Size: ri.size, Readable: ri.flags&regionRead != 0, Writable: ri.flags&regionWrite != 0}
	}
	if d.regions[configRegion].Size < 256 {
		d.Close()
		return fail("its configuration space region has %d bytes", d.regions[configRegion].Size)
	}
	if info.numIRQs > msixIRQ {
		ii := irqInfo{argsz: uint32(unsafe.Sizeof(irqInfo{})), index: msixIRQ}
		if _, err := ioctl(fd, ioDeviceIRQInfo, unsafe.Pointer(&ii)); err == nil {
			d.msix = ii.count
		}
	}
	if info.numIRQs > msiIRQ {
		ii := irqInfo{argsz: uint32(unsafe.Sizeof(irqInfo{})), index: msiIRQ}
		if _, err := ioctl(fd, ioDeviceIRQInfo, unsafe.Pointer(&ii)); err == nil {
			d.msi = ii.count
		}
	}
	if info.numIRQs > intxIRQ {
		ii := irqInfo{argsz: uint32(unsafe.Sizeof(irqInfo{})), index: intxIRQ}
		if _, err := ioctl(fd, ioDeviceIRQInfo, unsafe.Pointer(&ii)); err == nil {
			d.intx = ii.count == 1 && ii.flags&irqInfoEventFD != 0
		}
	}
	return d, nil
}

// MapDMA lets the device reach size bytes of this process's memory at
// vaddr as I/O virtual addresses from iova (guest physical addresses: the
// guest programs the device with those), reading and writing. The pages
// are pinned.
func (d *Device) MapDMA(iova uint64, vaddr uintptr, size uint64) error {
	m := dmaMap{argsz: uint32(unsafe.Sizeof(dmaMap{})), flags: dmaRead | dmaWrite, vaddr: uint64(vaddr), iova: iova, size: size}
	if _, err := ioctl(d.container, ioMapDMA, unsafe.Pointer(&m)); err != nil {
		return fmt.Errorf("vfio: %s: map %#x bytes of guest RAM at %#x for DMA: %w", d.Addr, size, iova, err)
	}
	return nil
}

// UnmapDMA takes back the mapping of size bytes at iova that MapDMA made
// (the kernel unmaps whole mappings only). Closing the container unmaps
// everything, so the machine need not call it; a running VMM's seccomp
// filter does not allow it.
func (d *Device) UnmapDMA(iova, size uint64) error {
	u := dmaUnmap{argsz: uint32(unsafe.Sizeof(dmaUnmap{})), iova: iova, size: size}
	if _, err := ioctl(d.container, ioUnmapDMA, unsafe.Pointer(&u)); err != nil {
		return fmt.Errorf("vfio: %s: unmap %#x bytes at %#x from DMA: %w", d.Addr, size, iova, err)
	}
	if u.size != size {
		return fmt.Errorf("vfio: %s: unmap %#x bytes at %#x from DMA: the kernel unmapped %#x", d.Addr, size, iova, u.size)
	}
	return nil
}

// Reset resets the device (a function-level reset, or what VFIO offers for
// it); a device VFIO cannot reset is left as it is.
func (d *Device) Reset() error {
	if !d.reset {
		return nil
	}
	if _, err := ioctl(d.fd, IoctlReset, nil); err != nil {
		return fmt.Errorf("vfio: %s: reset: %w", d.Addr, err)
	}
	return nil
}

// Resettable says whether VFIO can reset the device.
func (d *Device) Resettable() bool { return d.reset }

// Close resets the device and closes it.
func (d *Device) Close() error {
	err := d.Reset()
	if cerr := unix.Close(d.fd); err == nil && cerr != nil {
		err = fmt.Errorf("vfio: %s: close: %w", d.Addr, cerr)
	}
	return err
}

// Region returns region i (0-5 the BARs, 7 the configuration space).
func (d *Device) Region(i int) Region {
	if i < 0 || i >= len(d.regions) {
		return Region{}
	}
	return d.regions[i]
}

// ReadRegion reads len(p) bytes at off of region i. An access outside the
// region fails without reaching the kernel.
func (d *Device) ReadRegion(i int, p []byte, off uint64) error {
	r := d.Region(i)
	if !r.Readable || off > r.Size || uint64(len(p)) > r.Size-off {
		return fmt.Errorf("vfio: %s: read of %d bytes at %#x of region %d (%d bytes)", d.Addr, len(p), off, i, r.Size)
	}
	if _, err := unix.Pread(d.fd, p, int64(r.Offset+off)); err != nil {
		return fmt.Errorf("vfio: %s: read region %d at %#x: %w", d.Addr, i, off, err)
	}
	return nil
}

// WriteRegion writes p at off of region i.
func (d *Device) WriteRegion(i int, p []byte, off uint64) error {
	r := d.Region(i)
	if !r.Writable || off > r.Size || uint64(len(p)) > r.Size-off {
		return fmt.Errorf("vfio: %s: write of %d bytes at %#x of region %d (%d bytes)", d.Addr, len(p), off, i, r.Size)
	}
	if _, err := unix.Pwrite(d.fd, p, int64(r.Offset+off)); err != nil {
		return fmt.Errorf("vfio: %s: write region %d at %#x: %w", d.Addr, i, off, err)
	}
	return nil
}

// MSIXVectors is how many MSI-X vectors VFIO can route for the device.
func (d *Device) MSIXVectors() int { return int(d.msix) }

// SetMSIX makes vector i of the device's MSI-X signal fds[i], all of them
// at once (enabling MSI-X on the device), or with no fds disables it.
func (d *Device) SetMSIX(fds []int) error { return d.setVectors(msixIRQ, "MSI-X", fds) }

// MSIVectors is how many MSI vectors VFIO can route for the device.
func (d *Device) MSIVectors() int { return int(d.msi) }

// SetMSI makes vector i of the device's MSI signal fds[i] (enabling MSI
// with len(fds) vectors), or with no fds disables it. The vector count of
// an enabled MSI cannot change: disable it first.
func (d *Device) SetMSI(fds []int) error { return d.setVectors(msiIRQ, "MSI", fds) }

// setVectors is SetMSIX and SetMSI for interrupt index, named name.
func (d *Device) setVectors(index uint32, name string, fds []int) error {
	if err := d.setIRQs(index, irqTrigger, fds); err != nil {
		what := "enable"
		if len(fds) == 0 {
			what = "disable"
		}
		return fmt.Errorf("vfio: %s: %s %s (%d vectors): %w", d.Addr, what, name, len(fds), err)
	}
	return nil
}

// HasINTx says whether VFIO can route the device's INTx: it has an
// interrupt pin (and VFIO was not told to ignore it).
func (d *Device) HasINTx() bool { return d.intx }

// SetINTx makes the device's INTx signal trigger when the device raises
// it (VFIO masks it then, as a level-triggered line must be until served)
// and unmask it when unmask is signalled: KVM's resample eventfd, at the
// guest's end of interrupt. trigger < 0 disables it, which VFIO requires
// before MSI-X is enabled.
func (d *Device) SetINTx(trigger, unmask int) error {
	if trigger < 0 {
		if err := d.setIRQs(intxIRQ, irqTrigger, nil); err != nil {
			return fmt.Errorf("vfio: %s: disable INTx: %w", d.Addr, err)
		}
		return nil
	}
	if err := d.setIRQs(intxIRQ, irqTrigger, []int{trigger}); err != nil {
		return fmt.Errorf("vfio: %s: enable INTx: %w", d.Addr, err)
	}
	if err := d.setIRQs(intxIRQ, irqActUnmask, []int{unmask}); err != nil {
		return fmt.Errorf("vfio: %s: INTx unmask eventfd: %w", d.Addr, err)
	}
	return nil
}

// setIRQs is VFIO_DEVICE_SET_IRQS for interrupt index with action: the
// eventfds fds from the index's first interrupt on, or with none, no data
// (for the trigger action: disabling the index).
func (d *Device) setIRQs(index, action uint32, fds []int) error {
	const hdr = 20 // argsz, flags, index, start, count
	buf := make([]byte, hdr+4*len(fds))
	le := func(off int, v uint32) { binary.LittleEndian.PutUint32(buf[off:], v) }
	flags := uint32(irqDataEventFD) | action
	if len(fds) == 0 {
		flags = irqDataNone | action
	}
	le(0, uint32(len(buf)))
	le(4, flags)
	le(8, index)
	le(12, 0)
	le(16, uint32(len(fds)))
	for i, fd := range fds {
		le(hdr+4*i, uint32(int32(fd)))
	}
	_, err := ioctl(d.fd, IoctlSetIRQs, unsafe.Pointer(&buf[0]))
	return err
}
