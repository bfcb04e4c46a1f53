// Package virtio is the transport-independent core of hyperroot's virtio 1.x
// devices: feature and status bits, the Device interface a transport drives,
// and split virtqueues read from hostile guest memory.
//
// Layering: a transport (virtio-pci) owns the registers the driver programs,
// creates one Queue per virtqueue, and at DRIVER_OK activates the queues and
// then the Device. A device (blk, net, rng, vsock) only sees activated
// queues: it pops descriptor chains, walks them into a Chain, copies data
// with Chain's io.Reader/io.Writer, pushes the chain back as used, and asks
// NeedInterrupt whether to signal the driver.
//
// Everything the driver writes into a ring is untrusted: a malformed ring or
// chain is reported as an error, never a panic, and no access leaves the
// guest RAM the Memory interface hands out.
package virtio

import (
	"errors"
	"fmt"
)

// Feature bits shared by every device type (virtio 1.2 §6, "Reserved Feature
// Bits"), as masks of the 64-bit feature word; the bit number is in the
// comment. Device-specific features use bits 0-23 and are defined by each
// device's package.
const (
	FeatureRingIndirectDesc uint64 = 1 << 28 // VIRTIO_F_RING_INDIRECT_DESC: descriptors may point to tables of descriptors
	FeatureRingEventIdx     uint64 = 1 << 29 // VIRTIO_F_RING_EVENT_IDX: used_event/avail_event notification suppression
	FeatureVersion1         uint64 = 1 << 32 // VIRTIO_F_VERSION_1: modern (non-legacy) device; required by this package
	FeatureAccessPlatform   uint64 = 1 << 33 // VIRTIO_F_ACCESS_PLATFORM: device accesses go through an IOMMU
	FeatureRingPacked       uint64 = 1 << 34 // VIRTIO_F_RING_PACKED: packed virtqueues (not supported here)
	FeatureInOrder          uint64 = 1 << 35 // VIRTIO_F_IN_ORDER: buffers are used in the order they were made available
	FeatureOrderPlatform    uint64 = 1 << 36 // VIRTIO_F_ORDER_PLATFORM: platform memory ordering is required
	FeatureSRIOV            uint64 = 1 << 37 // VIRTIO_F_SR_IOV: the device supports single root I/O virtualization
	FeatureNotificationData uint64 = 1 << 38 // VIRTIO_F_NOTIFICATION_DATA: driver notifications carry ring positions
	FeatureNotifConfigData  uint64 = 1 << 39 // VIRTIO_F_NOTIF_CONFIG_DATA: driver notifications use a device-provided value
	FeatureRingReset        uint64 = 1 << 40 // VIRTIO_F_RING_RESET: individual queues may be reset

	// FeaturesQueue are the features this package's Queue implements; a
	// device may offer any subset of them in addition to FeatureVersion1
	// and its own bits.
	FeaturesQueue = FeatureRingIndirectDesc | FeatureRingEventIdx
)

// Device status bits (virtio 1.2 §2.1), written by the driver to the
// transport's device_status field.
const (
	StatusAcknowledge      uint8 = 1   // the guest found the device
	StatusDriver           uint8 = 2   // the guest has a driver for it
	StatusDriverOK         uint8 = 4   // the driver is set up: the device may run
	StatusFeaturesOK       uint8 = 8   // feature negotiation is complete (set by the driver, kept only if Ack accepted)
	StatusDeviceNeedsReset uint8 = 64  // set by the device after an unrecoverable error (such as a malformed ring)
	StatusFailed           uint8 = 128 // the driver gave up on the device
)

// DeviceType is a virtio device ID (virtio 1.2 §5); the PCI transport
// derives the PCI device ID from it (0x1040 + type).
type DeviceType uint16

// Device types hyperroot implements or plans to.
const (
	TypeNet     DeviceType = 1
	TypeBlock   DeviceType = 2
	TypeConsole DeviceType = 3
	TypeEntropy DeviceType = 4
	TypeBalloon DeviceType = 5
	TypeVsock   DeviceType = 19
)

// Interrupt is how a device notifies the driver. The transport implements it
// (an MSI-X vector through an irqfd, or INTx plus the ISR status bit), so
// devices never know which.
type Interrupt interface {
	// Used sends a used buffer notification for queue index q. Devices
	// call it only when Queue.NeedInterrupt says so.
	Used(q int) error
	// ConfigChanged sends a configuration change notification, after the
	// device changed its configuration space (a resized disk, a link
	// going down).
	ConfigChanged() error
}

// Device is a virtio device as a transport sees it, modelled on Cloud
// Hypervisor's VirtioDevice trait. The transport serialises calls to it:
// none of these methods run concurrently with each other. What the device
// does with its queues after Activate (its own goroutines) is its business
// until Reset returns.
type Device interface {
	// Type is the virtio device ID.
	Type() DeviceType
	// QueueSizes gives, for each virtqueue the device has, the largest
	// size it accepts (a power of two, at most MaxQueueSize). The driver
	// may choose smaller sizes.
	QueueSizes() []uint16
	// Features is the set of feature bits the device offers. It must
	// include FeatureVersion1 and may include bits of FeaturesQueue.
	Features() uint64
	// Ack gives the device the features the driver accepted. An error
	// means the set is unacceptable (the transport then leaves
	// FEATURES_OK clear, as the spec requires); CheckFeatures does the
	// generic checks.
	Ack(features uint64) error
	// ReadConfig fills data from the device-specific configuration space
	// at offset. Offsets and lengths come from the guest: out of range
	// bytes read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig writes the device-specific configuration space. Writes
	// to read-only or out-of-range bytes are ignored.
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device after DRIVER_OK. queues holds every
	// queue in index order, already activated when the driver enabled
	// it (Queue.Active reports which). irq signals the driver. An error
	// makes the transport set DEVICE_NEEDS_RESET.
	Activate(queues []*Queue, irq Interrupt) error
	// Reset stops the device and returns it to its initial state: when
	// Reset returns, the device no longer touches its queues or guest
	// memory. The transport resets the queues itself.
	Reset()
}

// Describer is a Device that can say what it holds, for a dump of a
// stalled machine: per queue, its rings (Queue.Describe) and the requests
// it has taken from them and not returned, and where those are. Describe
// may take the device's locks: the dump calls it from its own goroutine
// and gives up on it after a while.
type Describer interface {
	Describe() []string
}

// ErrFeatures is wrapped by CheckFeatures' errors.
var ErrFeatures = errors.New("virtio: unacceptable feature set")

// CheckFeatures does the checks every device makes on the driver's accepted
// feature set: nothing the device did not offer, and VERSION_1, since
// hyperroot's devices are modern-only (virtio 1.2 §6.1 lets a device refuse
// to operate without it). Devices add their own dependency checks.
func CheckFeatures(offered, acked uint64) error {
	if extra := acked &^ offered; extra != 0 {
		return fmt.Errorf("%w: driver accepted features %#x that were not offered (offered %#x)", ErrFeatures, extra, offered)
	}
	if acked&FeatureVersion1 == 0 {
		return fmt.Errorf("%w: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)", ErrFeatures)
	}
	return nil
}
