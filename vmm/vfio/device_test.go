package vfio

import (
	"testing"
	"unsafe"
)

// The requests and structures as linux/vfio.h has them: _IO(';', 100+n),
// and the sizes the kernel checks argsz against.
func TestABI(t *testing.T) {
	for name, c := range map[string]struct{ got, want uintptr }{
		"VFIO_GET_API_VERSION":            {ioGetAPIVersion, 0x3b64},
		"VFIO_CHECK_EXTENSION":            {ioCheckExtension, 0x3b65},
		"VFIO_SET_IOMMU":                  {ioSetIOMMU, 0x3b66},
		"VFIO_GROUP_GET_STATUS":           {ioGroupGetStatus, 0x3b67},
		"VFIO_GROUP_SET_CONTAINER":        {ioGroupSetContainer, 0x3b68},
		"VFIO_GROUP_GET_DEVICE_FD":        {ioGroupGetDeviceFD, 0x3b6a},
		"VFIO_DEVICE_GET_INFO":            {ioDeviceGetInfo, 0x3b6b},
		"VFIO_DEVICE_GET_REGION_INFO":     {ioDeviceRegionInfo, 0x3b6c},
		"VFIO_DEVICE_GET_IRQ_INFO":        {ioDeviceIRQInfo, 0x3b6d},
		"VFIO_DEVICE_SET_IRQS":            {IoctlSetIRQs, 0x3b6e},
		"VFIO_DEVICE_RESET":               {IoctlReset, 0x3b6f},
		"VFIO_IOMMU_MAP_DMA":              {ioMapDMA, 0x3b71},
		"struct vfio_group_status":        {unsafe.Sizeof(groupStatus{}), 8},
		"struct vfio_device_info (min)":   {unsafe.Sizeof(deviceInfo{}), 16},
		"struct vfio_region_info":         {unsafe.Sizeof(regionInfo{}), 32},
		"struct vfio_irq_info":            {unsafe.Sizeof(irqInfo{}), 16},
		"struct vfio_iommu_type1_dma_map": {unsafe.Sizeof(dmaMap{}), 32},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", name, c.got, c.want)
		}
	}
}
