package vfio

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"unsafe"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// The requests and structures as linux/vfio.h has them: _IO(';', 100+n),
// and the sizes the kernel checks argsz against.
func TestABI(t *testing.T) {
	for name, c := range map[string]struct{ got, want uintptr }{
		"VFIO_GET_API_VERSION":              {ioGetAPIVersion, 0x3b64},
		"VFIO_CHECK_EXTENSION":              {ioCheckExtension, 0x3b65},
		"VFIO_SET_IOMMU":                    {ioSetIOMMU, 0x3b66},
		"VFIO_GROUP_GET_STATUS":             {ioGroupGetStatus, 0x3b67},
		"VFIO_GROUP_SET_CONTAINER":          {ioGroupSetContainer, 0x3b68},
		"VFIO_GROUP_GET_DEVICE_FD":          {ioGroupGetDeviceFD, 0x3b6a},
		"VFIO_DEVICE_GET_INFO":              {ioDeviceGetInfo, 0x3b6b},
		"VFIO_DEVICE_GET_REGION_INFO":       {ioDeviceRegionInfo, 0x3b6c},
		"VFIO_DEVICE_GET_IRQ_INFO":          {ioDeviceIRQInfo, 0x3b6d},
		"VFIO_DEVICE_SET_IRQS":              {IoctlSetIRQs, 0x3b6e},
		"VFIO_DEVICE_RESET":                 {IoctlReset, 0x3b6f},
		"VFIO_IOMMU_MAP_DMA":                {ioMapDMA, 0x3b71},
		"VFIO_IOMMU_UNMAP_DMA":              {ioUnmapDMA, 0x3b72},
		"VFIO_PCI_CONFIG_REGION_INDEX":      {configRegion, 7},
		"VFIO_PCI_MSIX_IRQ_INDEX":           {msixIRQ, 2},
		"struct vfio_group_status":          {unsafe.Sizeof(groupStatus{}), 8},
		"struct vfio_device_info (min)":     {unsafe.Sizeof(deviceInfo{}), 16},
		"struct vfio_region_info":           {unsafe.Sizeof(regionInfo{}), 32},
		"struct vfio_irq_info":              {unsafe.Sizeof(irqInfo{}), 16},
		"struct vfio_iommu_type1_dma_map":   {unsafe.Sizeof(dmaMap{}), 32},
		"struct vfio_iommu_type1_dma_unmap": {unsafe.Sizeof(dmaUnmap{}), 24},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", name, c.got, c.want)
		}
	}
}

// TestABIHeader checks the constants against the kernel's own header where
// one is installed, so that the numbers above are not only checked against
// themselves.
func TestABIHeader(t *testing.T) {
	h, err := os.ReadFile("/usr/include/linux/vfio.h")
	testenv.Need(t, err == nil, fmt.Sprintf("the kernel's uapi header (Debian's linux-libc-dev): %v", err))
	ours := map[string]uint64{
		"VFIO_GET_API_VERSION": ioGetAPIVersion, "VFIO_CHECK_EXTENSION": ioCheckExtension,
		"VFIO_SET_IOMMU": ioSetIOMMU, "VFIO_GROUP_GET_STATUS": ioGroupGetStatus,
		"VFIO_GROUP_SET_CONTAINER": ioGroupSetContainer, "VFIO_GROUP_GET_DEVICE_FD": ioGroupGetDeviceFD,
		"VFIO_DEVICE_GET_INFO": ioDeviceGetInfo, "VFIO_DEVICE_GET_REGION_INFO": ioDeviceRegionInfo,
		"VFIO_DEVICE_GET_IRQ_INFO": ioDeviceIRQInfo, "VFIO_DEVICE_SET_IRQS": IoctlSetIRQs,
		"VFIO_DEVICE_RESET": IoctlReset, "VFIO_IOMMU_MAP_DMA": ioMapDMA, "VFIO_IOMMU_UNMAP_DMA": ioUnmapDMA,
		"VFIO_API_VERSION": apiVersion, "VFIO_TYPE1_IOMMU": type1IOMMU, "VFIO_TYPE1v2_IOMMU": type1v2IOMMU,
		"VFIO_GROUP_FLAGS_VIABLE": groupViable, "VFIO_DEVICE_FLAGS_RESET": deviceReset,
		"VFIO_DEVICE_FLAGS_PCI": devicePCI, "VFIO_REGION_INFO_FLAG_READ": regionRead,
		"VFIO_REGION_INFO_FLAG_WRITE": regionWrite, "VFIO_DMA_MAP_FLAG_READ": dmaRead,
		"VFIO_DMA_MAP_FLAG_WRITE": dmaWrite, "VFIO_IRQ_SET_DATA_NONE": irqDataNone,
		"VFIO_IRQ_SET_DATA_EVENTFD": irqDataEventFD, "VFIO_IRQ_SET_ACTION_TRIGGER": irqTrigger,
	}
	define := regexp.MustCompile(`(?m)^#define\s+(VFIO_\w+)\s+(.*?)\s*(?:/\*.*)?$`)
	ioc := regexp.MustCompile(`^_IO\(VFIO_TYPE,\s*VFIO_BASE\s*\+\s*(\d+)\)$`)
	shift := regexp.MustCompile(`^\(1\s*<<\s*(\d+)\)$`)
	found := map[string]bool{}
	for _, m := range define.FindAllStringSubmatch(string(h), -1) {
		want, ok := ours[m[1]]
		if !ok || found[m[1]] {
			continue
		}
		var v uint64
		if n := ioc.FindStringSubmatch(m[2]); n != nil {
			k, _ := strconv.ParseUint(n[1], 10, 8)
			v = ';'<<8 | (100 + k)
		} else if n := shift.FindStringSubmatch(m[2]); n != nil {
			k, _ := strconv.ParseUint(n[1], 10, 8)
			v = 1 << k
		} else if v, err = strconv.ParseUint(m[2], 0, 32); err != nil {
			t.Errorf("%s: cannot read %q", m[1], m[2])
			continue
		}
		found[m[1]] = true
		if v != want {
			t.Errorf("%s = %#x in the header, %#x here", m[1], v, want)
		}
	}
	for name := range ours {
		if !found[name] {
			t.Errorf("%s is not in the header", name)
		}
	}
}
