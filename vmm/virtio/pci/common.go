package virtiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Common configuration structure fields (struct virtio_pci_common_cfg,
// virtio 1.2 §4.1.4.3): offset in the structure.
const (
	regDeviceFeatureSelect = 0x00 // le32 RW
	regDeviceFeature       = 0x04 // le32 RO
	regDriverFeatureSelect = 0x08 // le32 RW
	regDriverFeature       = 0x0C // le32 RW
	regConfigMSIXVector    = 0x10 // le16 RW
	regNumQueues           = 0x12 // le16 RO
	regDeviceStatus        = 0x14 // u8 RW
	regConfigGeneration    = 0x15 // u8 RO
	regQueueSelect         = 0x16 // le16 RW
	regQueueSize           = 0x18 // le16 RW
	regQueueMSIXVector     = 0x1A // le16 RW
	regQueueEnable         = 0x1C // le16 RW
	regQueueNotifyOff      = 0x1E // le16 RO
	regQueueDesc           = 0x20 // le64 RW
	regQueueDriver         = 0x28 // le64 RW
	regQueueDevice         = 0x30 // le64 RW
	regQueueNotifConfData  = 0x38 // le16 RO (VIRTIO_F_NOTIF_CONFIG_DATA, not offered: 0)
	regQueueReset          = 0x3A // le16 RW (VIRTIO_F_RING_RESET, not offered: 0)
)

// readCommon serves a read of the common configuration at off. The
// structure is rendered whole and the requested bytes copied out, so any
// width and alignment reads consistent bytes.
func (t *Transport) readCommon(off int, data []byte) {
	var c [commonLen]byte
	le := binary.LittleEndian
	t.mu.Lock()
	if t.devFeatSel < 2 {
		le.PutUint32(c[regDeviceFeature:], uint32(t.offered>>(32*t.devFeatSel)))
	}
	le.PutUint32(c[regDeviceFeatureSelect:], t.devFeatSel)
	le.PutUint32(c[regDriverFeatureSelect:], t.drvFeatSel)
	if t.drvFeatSel < 2 {
		le.PutUint32(c[regDriverFeature:], uint32(t.drvFeatures>>(32*t.drvFeatSel)))
	}
	le.PutUint16(c[regConfigMSIXVector:], uint16(t.configVector.Load()))
	le.PutUint16(c[regNumQueues:], uint16(len(t.queues)))
	c[regDeviceStatus] = t.statusLocked()
	c[regConfigGeneration] = uint8(t.generation.Load())
	le.PutUint16(c[regQueueSelect:], t.queueSel)
	if qi := int(t.queueSel); qi < len(t.queues) {
		q := t.queues[qi]
		le.PutUint16(c[regQueueSize:], q.Size)
		le.PutUint16(c[regQueueMSIXVector:], uint16(t.queueVectors[qi].Load()))
		if q.Ready {
			le.PutUint16(c[regQueueEnable:], 1)
		}
		le.PutUint16(c[regQueueNotifyOff:], uint16(qi))
		le.PutUint64(c[regQueueDesc:], q.DescAddr)
		le.PutUint64(c[regQueueDriver:], q.AvailAddr)
		le.PutUint64(c[regQueueDevice:], q.UsedAddr)
	}
	t.mu.Unlock()
	copy(data, c[off:])
}

// statusLocked is device_status as the driver reads it. The caller holds
// t.mu.
func (t *Transport) statusLocked() uint8 {
	s := t.status
	if t.needsReset.Load() || (t.broken != nil && t.broken.NeedsReset()) {
		s |= virtio.StatusDeviceNeedsReset
	}
	return s
}

// writeCommon serves a write of the common configuration. The driver must
// use each field's natural width (virtio 1.2 §4.1.3.1); 64-bit fields may
// also be written as two 32-bit halves. Other writes are ignored.
func (t *Transport) writeCommon(off int, data []byte) {
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(data)
	switch {
	case off == regDeviceFeatureSelect && n == 4:
		t.devFeatSel = uint32(v)
	case off == regDriverFeatureSelect && n == 4:
		t.drvFeatSel = uint32(v)
	case off == regDriverFeature && n == 4:
		if t.status&virtio.StatusFeaturesOK == 0 && t.drvFeatSel < 2 {
			shift := 32 * t.drvFeatSel
			t.drvFeatures = t.drvFeatures&^(0xFFFF_FFFF<<shift) | v<<shift
		}
	case off == regConfigMSIXVector && n == 2:
		t.configVector.Store(t.vector(v))
	case off == regDeviceStatus && n == 1:
		t.writeStatus(uint8(v))
	case off == regQueueSelect && n == 2:
		t.queueSel = uint16(v)
	default:
		t.writeQueue(off, n, v)
	}
}

// vector is the value queue_msix_vector or config_msix_vector takes when
// the driver writes v: vectors the function does not have read back as
// NoVector, which is how the driver learns the mapping failed.
func (t *Transport) vector(v uint64) uint32 {
	if v >= uint64(len(t.queues)+1) {
		return NoVector
	}
	return uint32(v)
}

// writeQueue writes a field of the selected queue. Queue configuration is
// frozen once the device runs (DRIVER_OK): changing it needs a reset.
func (t *Transport) writeQueue(off, n int, v uint64) {
	qi := int(t.queueSel)
	if qi >= len(t.queues) {
		return
	}
	if off == regQueueMSIXVector && n == 2 {
		t.queueVectors[qi].Store(t.vector(v))
		return
	}
	if t.status&virtio.StatusDriverOK != 0 {
		return
	}
	q := t.queues[qi]
	addr := func(field *uint64, base int) bool {
		switch {
		case off == base && n == 8:
			*field = v
		case off == base && n == 4:
			*field = *field&^0xFFFF_FFFF | v
		case off == base+4 && n == 4:
			*field = *field&0xFFFF_FFFF | v<<32
		default:
			return false
		}
		return true
	}
	switch {
	case off == regQueueSize && n == 2:
		if v >= 1 && v <= uint64(q.MaxSize()) {
			q.Size = uint16(v)
		}
	case off == regQueueEnable && n == 2:
		if v == 1 {
			q.Ready = true
		}
	case addr(&q.DescAddr, regQueueDesc), addr(&q.AvailAddr, regQueueDriver), addr(&q.UsedAddr, regQueueDevice):
	}
}

// writeStatus runs the device status state machine (virtio 1.2 §2.1,
// §3.1). The caller holds t.mu.
func (t *Transport) writeStatus(s uint8) {
	if s == 0 {
		t.reset()
		return
	}
	old := t.status
	// The driver never clears bits but by a reset (virtio 1.2 §2.1.2).
	s |= old
	if s&virtio.StatusFeaturesOK != 0 && old&virtio.StatusFeaturesOK == 0 {
		// FEATURES_OK sticks only if the device accepts the set; the
		// driver reads it back to find out.
		err := virtio.CheckFeatures(t.offered, t.drvFeatures)
		if err == nil {
			err = t.dev.Ack(t.drvFeatures)
		}
		if err != nil {
			t.fail(fmt.Errorf("virtio-pci: device type %d: %w", t.dev.Type(), err))
			s &^= virtio.StatusFeaturesOK
		} else {
			t.features = t.drvFeatures
		}
	}
	t.status = s
	if s&virtio.StatusDriverOK != 0 && old&virtio.StatusDriverOK == 0 {
		t.activate()
	}
}

// activate starts the device at DRIVER_OK: the enabled queues are mapped,
// the device gets them, and the notification goroutine starts. Any failure
// sets DEVICE_NEEDS_RESET. The caller holds t.mu.
func (t *Transport) activate() {
	if t.status&virtio.StatusFeaturesOK == 0 {
		t.fail(fmt.Errorf("virtio-pci: device type %d: DRIVER_OK without FEATURES_OK", t.dev.Type()))
		t.setNeedsReset()
		return
	}
	for i, q := range t.queues {
		if !q.Ready {
			continue
		}
		if err := q.Activate(t.opts.Memory, t.features); err != nil {
			t.fail(fmt.Errorf("virtio-pci: device type %d queue %d: %w", t.dev.Type(), i, err))
			t.setNeedsReset()
			return
		}
	}
	if err := t.dev.Activate(t.queues, &t.interruptImpl); err != nil {
		t.fail(fmt.Errorf("virtio-pci: device type %d: activate: %w", t.dev.Type(), err))
		t.dev.Reset()
		t.setNeedsReset()
		return
	}
	if off, ok := t.dev.(Offloader); ok {
		if err := off.Offload(append([]int(nil), t.notifyFDs...), t.callFDs()); err != nil {
			t.fail(fmt.Errorf("virtio-pci: device type %d: offload queues: %w", t.dev.Type(), err))
			t.dev.Reset()
			t.setNeedsReset()
			return
		}
	}
	if t.kicker != nil {
		l, err := startKickLoop(t.notifyFDs, t.kick, t.holdP.Load())
		if err != nil {
			t.fail(fmt.Errorf("virtio-pci: device type %d: %w", t.dev.Type(), err))
			t.dev.Reset()
			t.setNeedsReset()
			return
		}
		t.running = l
	}
}

// callFDs gives, per queue, the irqfd of the queue's MSI-X vector, or -1
// where there is none (MSI-X off, no vector, a router without irqfds).
func (t *Transport) callFDs() []int {
	fds := make([]int, len(t.queues))
	irqfds, ok := t.opts.Router.(IRQFDs)
	for q := range fds {
		fds[q] = -1
		v := t.queueVectors[q].Load()
		if !ok || !t.msix.Enabled() || v == NoVector {
			continue
		}
		if fd, err := irqfds.EventFD(int(v)); err == nil {
			fds[q] = fd
		}
	}
	return fds
}

// kick runs on the notification goroutine: it hands queue q's kick to the
// device and checks whether the queue broke. It returns when the device
// wants to poll q again (Poller), or 0.
func (t *Transport) kick(q int) (again time.Duration) {
	if !t.queues[q].Active() {
		return 0
	}
	if t.poller != nil {
		again = t.poller.Poll(q)
	} else {
		t.kicker.Kick(q)
	}
	if err := t.queues[q].Err(); err != nil && errors.Is(err, virtio.ErrRing) && !t.needsReset.Load() {
		t.fail(fmt.Errorf("virtio-pci: device type %d queue %d: %w", t.dev.Type(), q, err))
		t.setNeedsReset()
	}
	return again
}

// setNeedsReset sets DEVICE_NEEDS_RESET and tells the driver with a
// configuration change interrupt (virtio 1.2 §2.1.2). It does not take
// t.mu, so the notification goroutine may call it.
func (t *Transport) setNeedsReset() {
	t.needsReset.Store(true)
	if err := t.interruptImpl.ConfigChanged(); err != nil {
		t.fail(fmt.Errorf("virtio-pci: config interrupt: %w", err))
	}
}

// reset returns the device and the transport to their initial state
// (virtio 1.2 §4.1.4.3.1: a write of 0 to device_status). When it returns
// the device no longer touches guest memory. The caller holds t.mu.
func (t *Transport) reset() {
	if t.running != nil {
		t.running.stop()
		t.running = nil
	}
	t.dev.Reset()
	for _, q := range t.queues {
		q.Reset()
	}
	drainEventFDs(t.notifyFDs)
	t.status, t.devFeatSel, t.drvFeatSel, t.drvFeatures, t.features, t.queueSel = 0, 0, 0, 0, 0, 0
	t.needsReset.Store(false)
	t.resetVectors()
	t.intxMu.Lock()
	t.isr = 0
	t.setINTxLocked()
	t.intxMu.Unlock()
}

func (t *Transport) resetVectors() {
	t.configVector.Store(NoVector)
	for i := range t.queueVectors {
		t.queueVectors[i].Store(NoVector)
	}
}
