// Package blk is the virtio-blk device model (virtio 1.2 §5.2): it turns
// requests the guest places on its virtqueues into asynchronous operations
// on a vmm/block Backend, many in flight per queue, completed out of order.
//
// Threading: each queue has a worker whose mutex guards the queue and its
// request slots. Whoever holds it serves the queue: the transport's Kick
// (on its notification goroutine) pops, validates and submits, and
// performs page-cached reads and writes right there through
// Backend.Inline; the Backend's own goroutine, delivering a completion to
// the queue's worker (block.Completer), pushes it, serves what the driver
// made available meanwhile and interrupts. A kick that finds the mutex
// held leaves a flag that the holder honours before it lets go, so Kick
// never waits. Every hop between goroutines costs a thread wake-up, which
// dominates small I/O when the VMM runs nested under an emulator: a cached
// 4 KiB read costs no hop at all, an asynchronous one a single hop back.
// One goroutine per queue remains for what has no other thread to run on:
// the rate limiter's timer and retries after the Backend was full. Reset
// stops the queues only after every request the Backend accepted has
// completed, so no guest memory is written after Reset returns.
//
// Flush: a FLUSH request is passed to the Backend as block.Flush without
// waiting for other requests in flight. The Backend guarantees that it
// covers every write whose completion was delivered before the flush was
// submitted; a worker pushes a write's used element only after its
// completion was delivered, so every write the driver has seen complete
// before it sends FLUSH is durable when the FLUSH completes. That is the
// contract virtio-blk gives drivers (§5.2.6.4: the driver flushes what it
// has seen complete), and what Linux's block layer relies on.
package blk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/ratelimit"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Device-specific feature bits (virtio 1.2 §5.2.3).
const (
	FeatureSizeMax     uint64 = 1 << 1  // VIRTIO_BLK_F_SIZE_MAX: size_max limits one segment
	FeatureSegMax      uint64 = 1 << 2  // VIRTIO_BLK_F_SEG_MAX: seg_max limits segments per request
	FeatureGeometry    uint64 = 1 << 4  // VIRTIO_BLK_F_GEOMETRY
	FeatureRO          uint64 = 1 << 5  // VIRTIO_BLK_F_RO: the disk is read-only
	FeatureBlkSize     uint64 = 1 << 6  // VIRTIO_BLK_F_BLK_SIZE: blk_size is the logical block size
	FeatureFlush       uint64 = 1 << 9  // VIRTIO_BLK_F_FLUSH: FLUSH requests are supported
	FeatureTopology    uint64 = 1 << 10 // VIRTIO_BLK_F_TOPOLOGY
	FeatureConfigWCE   uint64 = 1 << 11 // VIRTIO_BLK_F_CONFIG_WCE: writeback is writable
	FeatureMQ          uint64 = 1 << 12 // VIRTIO_BLK_F_MQ: num_queues request queues
	FeatureDiscard     uint64 = 1 << 13 // VIRTIO_BLK_F_DISCARD
	FeatureWriteZeroes uint64 = 1 << 14 // VIRTIO_BLK_F_WRITE_ZEROES
)

// Limits of Options.
const (
	MaxQueues        = 64   // request queues one device serves
	MaxIDLen         = 20   // VIRTIO_BLK_ID_BYTES: the GET_ID answer
	DefaultQueueSize = 256  // Options.QueueSize when zero
	maxSegments      = 1024 // the Backend's iovec limit (IOV_MAX)
)

// Options configure a device; the zero value of each field but Backend
// picks a default.
type Options struct {
	// Backend serves the disk; it is opened (and eventually closed) by the
	// caller. Its depth (block.Options.Depth) should be at least
	// Queues*QueueSize, or requests wait for one another in the device.
	Backend block.Backend
	// ReadOnly offers VIRTIO_BLK_F_RO and fails writes with IOERR. A
	// read-only Backend makes the device read-only too.
	ReadOnly bool
	// ID is the serial returned by GET_ID, at most 20 bytes.
	ID string
	// Queues is the number of request queues (VIRTIO_BLK_F_MQ), typically
	// one per vCPU; 1 by default, at most MaxQueues.
	Queues int
	// QueueSize is the largest size of each queue, a power of two; 256
	// by default.
	QueueSize uint16
	// Limiter, when non-nil, bounds the disk's IOPS and bytes/s across
	// all its queues.
	Limiter *ratelimit.Limiter
	// Errors, when non-nil, is told why a request failed with IOERR (the
	// guest only learns that it failed): the Backend's error, or why the
	// device refused it, or that the driver broke a queue. The operator's
	// one clue to a full disk or a broken image. It is called on the
	// queue's goroutine and should rate-limit.
	Errors func(error)
	// Holdoff, when positive, lets a queue the driver keeps adding
	// requests to hold the driver's notifications and its interrupts,
	// polling the ring instead at intervals that follow the driver's
	// pace, at most Holdoff apart (Poll, which the transport's
	// notification goroutine calls; see worker.poll). Kick never holds.
	Holdoff time.Duration
}

// Device is a virtio-blk device; it implements virtio.Device.
type Device struct {
	backend  block.Backend
	readOnly bool
	id       [MaxIDLen]byte
	limiter  *ratelimit.Limiter
	errors   func(error)
	holdoff  time.Duration
	features uint64
	config   [configSize]byte
	sectors  uint64 // capacity in 512-byte sectors
	blkSize  uint32 // logical block size offered to the driver
	segMax   uint32

	acked      uint64
	workers    []*worker // one per queue, allocated by New
	counters   counters  // requests by class, for Stats
	needsReset atomic.Bool

	// Set by Activate, cleared by Reset.
	running bool
	wg      sync.WaitGroup // the workers' goroutines
}

// New makes a device serving o.Backend; request slots for every queue are
// allocated here so that the data path never allocates.
func New(o Options) (*Device, error) {
	if o.Backend == nil {
		return nil, errors.New("virtio-blk: no backend")
	}
	if len(o.ID) > MaxIDLen {
		return nil, fmt.Errorf("virtio-blk: serial %q is longer than %d bytes", o.ID, MaxIDLen)
	}
	if o.Queues == 0 {
		o.Queues = 1
	}
	if o.Queues < 1 || o.Queues > MaxQueues {
		return nil, fmt.Errorf("virtio-blk: %d queues, want 1 to %d", o.Queues, MaxQueues)
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.QueueSize < 4 || o.QueueSize&(o.QueueSize-1) != 0 || o.QueueSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-blk: queue size %d is not a power of two in [4, %d]", o.QueueSize, virtio.MaxQueueSize)
	}
	size := o.Backend.Size()
	if size < 0 {
		return nil, fmt.Errorf("virtio-blk: backend reports a negative size %d", size)
	}
	d := &Device{
		backend:  o.Backend,
		readOnly: o.ReadOnly || o.Backend.ReadOnly(),
		limiter:  o.Limiter,
		errors:   o.Errors,
		holdoff:  o.Holdoff,
		sectors:  uint64(size) / sectorSize,
		blkSize:  sectorSize,
		// Header and status take a descriptor each, so a chain of
		// seg_max data segments still fits a queue without indirect
		// descriptors.
		segMax: min(uint32(o.QueueSize)-2, maxSegments),
	}
	if d.limiter != nil && d.limiter.Unlimited() {
		d.limiter = nil
	}
	copy(d.id[:], o.ID)
	if a := o.Backend.Alignment().Offset; a > sectorSize {
		// O_DIRECT: make the guest's logical block the alignment the
		// descriptor needs, so its requests never fail ErrMisaligned
		// for their offset or length.
		d.blkSize = uint32(a)
	}
	d.features = virtio.FeatureVersion1 | virtio.FeatureRingIndirectDesc | virtio.FeatureRingEventIdx |
		FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureDiscard | FeatureWriteZeroes
	if o.Queues > 1 {
		d.features |= FeatureMQ
	}
	if d.readOnly {
		d.features |= FeatureRO
	}
	d.fillConfig(uint16(o.Queues))
	d.workers = make([]*worker, o.Queues)
	for i := range d.workers {
		d.workers[i] = newWorker(d, i, o.QueueSize)
	}
	return d, nil
}

// Type implements virtio.Device.
func (d *Device) Type() virtio.DeviceType { return virtio.TypeBlock }

// QueueSizes implements virtio.Device: Options.Queues queues of
// Options.QueueSize.
func (d *Device) QueueSizes() []uint16 {
	s := make([]uint16, len(d.workers))
	for i, w := range d.workers {
		s[i] = uint16(len(w.slots))
	}
	return s
}

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// Ack implements virtio.Device.
func (d *Device) Ack(features uint64) error {
	if err := virtio.CheckFeatures(d.features, features); err != nil {
		return fmt.Errorf("virtio-blk: %w", err)
	}
	d.acked = features
	return nil
}

// ReadConfig implements virtio.Device over struct virtio_blk_config.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= uint64(len(d.config)) {
		return
	}
	copy(data, d.config[offset:])
}

// WriteConfig implements virtio.Device. Every field this device offers is
// read-only (writeback is only writable with VIRTIO_BLK_F_CONFIG_WCE, which
// is not offered: the cache is always writeback and FLUSH makes it
// durable), so writes are ignored.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Kick tells the device that the driver notified queue q (an available
// buffer notification). The transport calls it from whatever receives the
// notification (an ioeventfd's goroutine, or the MMIO handler on a vCPU
// thread). It serves the queue on the caller's goroutine, including reads
// and writes the Backend can do inline (page cache, tmpfs), unless
// another goroutine is serving it, which then does so on Kick's behalf:
// Kick never waits for a lock. It may be called at any time, also before
// Activate or after Reset, and with any q (out of range is ignored).
func (d *Device) Kick(q int) {
	if q < 0 || q >= len(d.workers) {
		return
	}
	d.workers[q].kick()
}

// Holdoff is Options.Holdoff: the longest interval between polls of a
// held queue, 0 if queues are never held.
func (d *Device) Holdoff() time.Duration { return d.holdoff }

// Poll implements virtiopci.Poller: Kick, which may hold queue q (see
// Options.Holdoff) and ask to be called again.
func (d *Device) Poll(q int) time.Duration {
	if q < 0 || q >= len(d.workers) {
		return 0
	}
	return d.workers[q].poll()
}

// NeedsReset reports whether a queue broke (the driver corrupted its
// available ring, virtio.ErrRing) since the last Activate. The transport
// ORs virtio.StatusDeviceNeedsReset into device_status while it is true;
// the device has already sent a configuration change notification through
// Interrupt.ConfigChanged, as virtio 1.2 §2.1.2 requires.
func (d *Device) NeedsReset() bool { return d.needsReset.Load() }

// Activate implements virtio.Device: it starts a worker for every active
// queue.
func (d *Device) Activate(queues []*virtio.Queue, irq virtio.Interrupt) error {
	if d.running {
		return errors.New("virtio-blk: activated twice without a reset")
	}
	if len(queues) != len(d.workers) {
		return fmt.Errorf("virtio-blk: %d queues given, the device has %d", len(queues), len(d.workers))
	}
	if irq == nil {
		return errors.New("virtio-blk: no interrupt")
	}
	for i, q := range queues {
		if q != nil && q.Active() && int(q.Size) > len(d.workers[i].slots) {
			return fmt.Errorf("virtio-blk: queue %d has size %d, above the maximum %d", i, q.Size, len(d.workers[i].slots))
		}
	}
	d.needsReset.Store(false)
	for i, q := range queues {
		if q == nil || !q.Active() {
			continue
		}
		w := d.workers[i]
		w.start(q, irq)
		d.wg.Add(1)
		go w.run(w.stop)
	}
	d.running = true
	return nil
}

// Reset implements virtio.Device. It stops popping requests, waits until
// the Backend has completed every request it accepted (those still write
// guest memory), drops their results without touching guest memory, and
// returns the device to its state after New.
func (d *Device) Reset() {
	if d.running {
		for _, w := range d.workers {
			w.quiesce()
		}
		for _, w := range d.workers {
			w.drain()
		}
		d.wg.Wait()
		d.running = false
	}
	for _, w := range d.workers {
		w.clear()
	}
	d.acked = 0
	d.needsReset.Store(false)
}

// wakeBusy wakes the workers waiting for a Backend slot (ErrBusy): a
// completion has just freed one.
func (d *Device) wakeBusy() {
	for _, w := range d.workers {
		if w.busy.Load() && w.busy.CompareAndSwap(true, false) {
			select {
			case w.wake <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
	}
}

// Describe implements virtio.Describer: a line per queue (worker.describe),
// then the Backend's, if it can say.
func (d *Device) Describe() []string {
	var out []string
	for _, w := range d.workers {
		out = append(out, w.describe())
	}
	if b, ok := d.backend.(block.Describer); ok {
		out = append(out, "backend "+b.Describe())
	}
	return out
}
