// Package virtiopci is the virtio 1.x modern PCI transport (virtio 1.2
// §4.1): it turns any virtio.Device into a pci.Device whose one memory BAR
// holds the common configuration, the notification area, the ISR byte,
// the device-specific configuration and the MSI-X table.
//
// The package is named virtiopci rather than pci because it sits on top of
// vmm/pci and both are used side by side at the machine's call site.
//
// Threads: register accesses arrive on vCPU threads. Driver notifications
// ("kicks") never run device code there: each queue has an eventfd, which
// the machine binds to the queue's notify address as a KVM ioeventfd (see
// Notifier) and which a plain MMIO write to the notify area also signals,
// and one goroutine per transport waits on those eventfds and hands the
// kicks to the device (Kicker).
package virtiopci

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"github.com/hyperroot/hyperroot/vmm/irq"
	"github.com/hyperroot/hyperroot/vmm/pci"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// PCI identity of modern virtio functions (virtio 1.2 §4.1.2).
const (
	Vendor          = 0x1AF4
	DeviceIDBase    = 0x1040 // + virtio device type
	Revision        = 1      // non-transitional devices have revision 1 or higher
	Subsystem       = 0x0040 // non-transitional devices should use 0x40 or higher
	SubsystemVendor = Vendor
)

// NoVector is VIRTIO_MSI_NO_VECTOR: no MSI-X vector for this event.
const NoVector = 0xFFFF

// BAR layout. Every structure starts on its own 4 KiB page so a guest can
// map them with different attributes; the BAR is the next power of two
// that holds them all.
const (
	barIndex     = 0
	commonOffset = 0x0000
	commonLen    = 0x3C // virtio_pci_common_cfg up to and including queue_reset (1.2)
	isrOffset    = 0x1000
	isrLen       = 1
	deviceOffset = 0x2000
	deviceLen    = 0x1000
	notifyOffset = 0x3000
	notifyMult   = 4 // notify_off_multiplier: one 4-byte slot per queue
	msixOffset   = 0x4000
	pageSize     = 0x1000
)

// breaker is implemented by devices that serve their queues on their own
// goroutines (virtio-blk's workers) and so find a corrupted ring after Kick
// has returned, where the transport's own check cannot see it. While
// NeedsReset reports true the transport ORs DEVICE_NEEDS_RESET into
// device_status; the device itself sends the configuration change
// notification, and its Reset clears the condition.
type breaker interface {
	NeedsReset() bool
}

// Notifier binds notify addresses to eventfds outside the VMM: the machine
// implements it with KVM ioeventfds, so that a guest's kick signals the
// eventfd inside the kernel instead of exiting to a vCPU thread. Watch and
// Unwatch are called when the BAR starts or stops decoding at an address
// (pci.Device.MoveBAR), once per queue.
type Notifier interface {
	Watch(gpa uint64, fd int) error
	Unwatch(gpa uint64, fd int) error
}

// Kicker is implemented by devices that serve their queues when the driver
// notifies them. Kick runs on the transport's notification goroutine, one
// call at a time, only between Device.Activate and Device.Reset; it may
// run concurrently with ReadConfig and WriteConfig. It is also called once
// per enabled queue right after activation, for buffers the driver made
// available before DRIVER_OK. After Kick returns, a queue whose Err wraps
// virtio.ErrRing makes the transport set DEVICE_NEEDS_RESET.
//
// This interface belongs to the transport rather than to virtio.Device so
// that devices whose queues are served elsewhere (a vhost-user backend
// reading the eventfds itself) need not implement it.
type Kicker interface {
	Kick(q int)
}

// Poller is a Kicker that may hold the driver's notifications off and poll
// its ring instead: Poll serves queue q as Kick does and returns how long
// the notification goroutine should wait before calling Poll again for q,
// kicked or not, or 0 to wait for the next kick only. The transport calls
// Poll instead of Kick on devices that have it. (Kick stays for callers
// that will not call back: a device must never leave a queue held after
// Kick.)
type Poller interface {
	Kicker
	Poll(q int) time.Duration
}

// Offloader is implemented by devices whose queues are served outside the
// VMM, by a vhost-user backend. Right after Activate the transport calls
// Offload with each queue's two eventfds: kick, which the driver's
// notifications signal (through a KVM ioeventfd, so no VMM thread runs),
// and call, which interrupts the driver: the irqfd of the queue's MSI-X
// vector when the Router has one (IRQFDs), or -1 when it has not or MSI-X
// is off, in which case the device must relay the backend's calls to
// Interrupt.Used itself. The descriptors stay the transport's. An error
// makes the transport reset the device and set DEVICE_NEEDS_RESET.
type Offloader interface {
	Offload(kick, call []int) error
}

// IRQFDs is implemented by routers whose MSI-X vectors are eventfds bound
// to KVM irqfds: writing to a vector's eventfd interrupts the guest with no
// VMM code on the way, which is what a vhost-user backend needs as its
// call descriptor.
type IRQFDs interface {
	EventFD(vector int) (int, error)
}

// Options configure a Transport.
type Options struct {
	// Memory is guest RAM, for the queues.
	Memory virtio.Memory
	// Router receives the MSI-X vectors (one per queue plus one for
	// configuration changes).
	Router pci.MSIRouter
	// Notifier, if set, binds the notify addresses to the queue eventfds.
	// Without it kicks reach the device through MMIO exits only.
	Notifier Notifier
	// INTx is the interrupt line used while MSI-X is disabled. nil leaves
	// it unconnected until SetINTx.
	INTx irq.Line
	// Errors is told of errors that happen during guest accesses or on
	// the notification goroutine, which have no caller to return them
	// to. nil drops them.
	Errors func(error)
}

// Transport is a virtio device behind the modern PCI transport. It
// implements pci.Device.
type Transport struct {
	*pci.ConfigSpace
	dev     virtio.Device
	kicker  Kicker  // dev, if it serves kicks
	poller  Poller  // dev, if it polls
	broken  breaker // dev, if it finds broken queues on its own goroutines
	opts    Options
	holdP   atomic.Bool // SetHoldP
	msix    *pci.MSIX
	barSize uint64
	offered uint64 // dev.Features(), fixed

	// mu serialises the driver's register accesses and the calls into
	// dev. The notification goroutine and the interrupt path never take
	// it, so a reset may wait for that goroutine while holding mu.
	mu            sync.Mutex
	status        uint8
	devFeatSel    uint32
	drvFeatSel    uint32
	drvFeatures   uint64
	features      uint64 // negotiated, valid from FEATURES_OK
	queueSel      uint16
	queues        []*virtio.Queue
	running       *kickLoop // notification goroutine while DRIVER_OK
	needsReset    atomic.Bool
	generation    atomic.Uint32
	configVector  atomic.Uint32
	queueVectors  []atomic.Uint32
	notifyFDs     []int // one eventfd per queue, owned
	interruptImpl interrupt

	// barMu guards where the BAR decodes and which notify addresses are
	// watched. MoveBAR runs with the PCI bus's lock held, so it must not
	// take mu (a PCI_CFG access holds the bus lock and then takes mu).
	barMu   sync.Mutex
	barBase uint64

	// intxMu guards the ISR byte and the INTx level.
	intxMu    sync.Mutex
	isr       uint8
	intx      irq.Line
	intxLevel bool // what intx was last set to
}

// ISR status bits (virtio 1.2 §4.1.4.5).
const (
	isrQueue  = 1 << 0
	isrConfig = 1 << 1
)

// New wraps dev in the PCI transport. Close releases the eventfds.
func New(dev virtio.Device, opts Options) (*Transport, error) {
	if opts.Memory == nil || opts.Router == nil {
		return nil, fmt.Errorf("virtio-pci: memory and an MSI router are required")
	}
	sizes := dev.QueueSizes()
	nq := len(sizes)
	if nq == 0 || nq > 1024 {
		return nil, fmt.Errorf("virtio-pci: device type %d has %d queues: want 1-1024", dev.Type(), nq)
	}
	t := &Transport{dev: dev, opts: opts, offered: dev.Features(), intx: opts.INTx}
	t.kicker, _ = dev.(Kicker)
	t.poller, _ = dev.(Poller)
	t.broken, _ = dev.(breaker)
	t.interruptImpl = interrupt{t}
	for i, s := range sizes {
		q, err := virtio.NewQueue(s)
		if err != nil {
			return nil, fmt.Errorf("virtio-pci: device type %d queue %d: %w", dev.Type(), i, err)
		}
		t.queues = append(t.queues, q)
	}
	t.queueVectors = make([]atomic.Uint32, nq)
	t.resetVectors()

	// The BAR: fixed pages, then the notify area, then the MSI-X table
	// and PBA, each page-aligned.
	vectors := nq + 1
	notifyLen := roundUp(uint64(nq*notifyMult), pageSize)
	tableOff := notifyOffset + notifyLen
	msix, err := pci.NewMSIX(pci.MSIXOptions{
		Vectors: vectors, TableBAR: barIndex, TableOffset: uint32(tableOff),
		PBABAR: barIndex, PBAOffset: uint32(tableOff + roundUp(uint64(vectors*16), pageSize)),
		Router: opts.Router, Errors: opts.Errors,
	})
	if err != nil {
		return nil, fmt.Errorf("virtio-pci: %w", err)
	}
	t.msix = msix
	end := tableOff + roundUp(msix.TableSize(), pageSize) + roundUp(msix.PBASize(), pageSize)
	t.barSize = 16 << 10
	for t.barSize < end {
		t.barSize <<= 1
	}

	cs, err := pci.NewConfigSpace(pci.Identity{
		Vendor: Vendor, Device: DeviceIDBase + uint16(dev.Type()), Class: classOf(dev.Type()), Revision: Revision,
		SubsystemVendor: SubsystemVendor, Subsystem: Subsystem, InterruptPin: 1,
	}, pci.BAR{Index: barIndex, Size: t.barSize, Is64: true})
	if err != nil {
		return nil, fmt.Errorf("virtio-pci: %w", err)
	}
	t.ConfigSpace = cs
	for _, c := range []pci.Capability{
		vendorCap(capCommon, commonOffset, commonLen),
		vendorCap(capNotify, notifyOffset, uint32(nq*notifyMult)),
		vendorCap(capISR, isrOffset, isrLen),
		vendorCap(capDevice, deviceOffset, deviceLen),
		&pciCfgCap{t: t},
		msix,
	} {
		if _, err := cs.AddCapability(c); err != nil {
			return nil, fmt.Errorf("virtio-pci: %w", err)
		}
	}
	if t.notifyFDs, err = newEventFDs(nq); err != nil {
		return nil, fmt.Errorf("virtio-pci: %w", err)
	}
	return t, nil
}

// classOf is the PCI class code the device type is announced with, as
// other VMMs choose them: Linux binds virtio by vendor and device id, but
// firmware and lspci look at the class.
func classOf(t virtio.DeviceType) uint32 {
	switch t {
	case virtio.TypeNet:
		return 0x020000 // network controller, Ethernet
	case virtio.TypeBlock:
		return 0x010000 // mass storage controller, SCSI
	case virtio.TypeConsole:
		return 0x078000 // communication controller, other
	default:
		return 0xFF0000 // device does not fit any defined class
	}
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) &^ (to - 1) }

// SetINTx connects the INTx line once the machine knows which GSI the
// function's slot is wired to (pci.INTxGSI of the slot Bus.Add returned).
func (t *Transport) SetINTx(l irq.Line) {
	t.intxMu.Lock()
	defer t.intxMu.Unlock()
	t.intx = l
}

// SetHoldP lets the device's notification goroutine keep its P while it
// waits after a wait that found kicks (see kickLoop), from the next time
// the driver starts the device. The process needs a P to spare for it.
func (t *Transport) SetHoldP(on bool) { t.holdP.Store(on) }

// Kicks reports whether the transport serves its device's kicks on a
// notification goroutine of its own (the device is a Kicker), the one
// that SetHoldP lets keep a P. A device whose queues a vhost-user backend
// serves has none.
func (t *Transport) Kicks() bool { return t.kicker != nil }

// NotifyAddrs returns the guest-physical notify address of every queue
// while the BAR decodes, or nil.
func (t *Transport) NotifyAddrs() []uint64 {
	t.barMu.Lock()
	defer t.barMu.Unlock()
	if t.barBase == 0 {
		return nil
	}
	addrs := make([]uint64, len(t.queues))
	for q := range addrs {
		addrs[q] = t.barBase + notifyOffset + uint64(q*notifyMult)
	}
	return addrs
}

// MoveBAR re-binds the notify addresses when the guest (or the bus at
// Add) places the BAR or turns memory decoding on or off.
func (t *Transport) MoveBAR(index int, from, to uint64) error {
	if index != barIndex {
		return nil
	}
	t.barMu.Lock()
	defer t.barMu.Unlock()
	var errs []error
	if n := t.opts.Notifier; n != nil {
		if t.barBase != 0 {
			for q, fd := range t.notifyFDs {
				if err := n.Unwatch(t.barBase+notifyOffset+uint64(q*notifyMult), fd); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if to != 0 {
			for q, fd := range t.notifyFDs {
				if err := n.Watch(to+notifyOffset+uint64(q*notifyMult), fd); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	t.barBase = to
	if len(errs) > 0 {
		return fmt.Errorf("virtio-pci: notify addresses: %w", errs[0])
	}
	return nil
}

// ReadBAR serves the driver's reads of the BAR.
func (t *Transport) ReadBAR(index int, off uint64, data []byte) {
	clear(data)
	if index != barIndex || len(data) == 0 || off >= t.barSize || uint64(len(data)) > t.barSize-off {
		return
	}
	if t.msix.ReadBAR(index, off, data) {
		return
	}
	switch {
	case within(off, len(data), commonOffset, commonLen):
		t.readCommon(int(off-commonOffset), data)
	case within(off, len(data), isrOffset, isrLen):
		data[0] = t.readISR()
	case within(off, len(data), deviceOffset, deviceLen):
		t.mu.Lock()
		t.dev.ReadConfig(off-deviceOffset, data)
		t.mu.Unlock()
	}
}

// WriteBAR serves the driver's writes of the BAR.
func (t *Transport) WriteBAR(index int, off uint64, data []byte) {
	if index != barIndex || len(data) == 0 || off >= t.barSize || uint64(len(data)) > t.barSize-off {
		return
	}
	if t.msix.WriteBAR(index, off, data) {
		return
	}
	switch {
	case within(off, len(data), commonOffset, commonLen):
		t.writeCommon(int(off-commonOffset), data)
	case within(off, len(data), deviceOffset, deviceLen):
		t.mu.Lock()
		t.dev.WriteConfig(off-deviceOffset, data)
		t.mu.Unlock()
	case off >= notifyOffset && off < notifyOffset+uint64(len(t.queues)*notifyMult):
		// The fallback when no ioeventfd catches the write: signal the
		// same eventfd, so the kick is served on the notification
		// goroutine all the same.
		if err := eventfd.Signal(t.notifyFDs[(off-notifyOffset)/notifyMult]); err != nil {
			t.fail(fmt.Errorf("virtio-pci: notify: %w", err))
		}
	}
}

// within reports whether n bytes at off lie inside [start, start+size).
func within(off uint64, n int, start, size uint64) bool {
	return off >= start && off-start < size && uint64(n) <= size-(off-start)
}

// Describe says where the device stands, for a dump of a stalled machine:
// the driver's status, each queue's MSI-X vector and what holds it back
// (pci.MSIX.Describe), and the counter of its notify eventfd (a kick not
// taken yet by whoever serves the queue: the kick goroutine or the
// process the queues were offloaded to); then the device's own lines
// (virtio.Describer), which say where its requests are.
func (t *Transport) Describe() []string {
	t.mu.Lock()
	status := t.statusLocked()
	var out []string
	for q := range t.queues {
		l := fmt.Sprintf("queue %d: no vector", q)
		if v := t.queueVectors[q].Load(); v != NoVector {
			l = fmt.Sprintf("queue %d: vector %d", q, v)
			if s := t.msix.Describe(int(v)); s != "" {
				l += " (" + s + ")"
			}
		}
		if n, err := eventfd.Peek(t.notifyFDs[q]); err == nil {
			l += fmt.Sprintf(", notify eventfd=%d", n)
		}
		out = append(out, l)
	}
	t.mu.Unlock()
	out = append([]string{fmt.Sprintf("status=%#x isr=%#x", status, t.peekISR())}, out...)
	if d, ok := t.dev.(virtio.Describer); ok {
		out = append(out, d.Describe()...)
	}
	return out
}

// Close stops the device and releases the eventfds. The transport must not
// be used afterwards.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reset()
	return closeFDs(t.notifyFDs)
}

func (t *Transport) fail(err error) {
	if t.opts.Errors != nil {
		t.opts.Errors(err)
	}
}
