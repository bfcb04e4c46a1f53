// Package console is the virtio console device (virtio 1.2 §5.3) with one
// port and no multiport feature: Linux's hvc0.
//
// Why a second console beside the UART: every byte a guest writes to a
// 16550A is a port access, and each access an exit from the guest, which
// nested under an emulator costs about a millisecond. A write() to hvc0
// is one buffer on the transmit queue and at most one notification,
// whatever its length.
//
// Output: each buffer the driver puts on transmitq goes to Options.Out,
// straight from guest memory, in one Write. Input: bytes given to Input
// go into the buffers the driver offers on receiveq; while it offers none
// they wait in a backlog of Options.Backlog bytes, and what does not fit
// there is dropped and counted (Dropped): the caller (the VMM's input
// goroutine) never blocks on a guest that does not read.
package console

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Defaults for Options.
const (
	DefaultQueueSize  = 128
	DefaultBacklog    = 4096
	DefaultMaxBuffers = 16
)

// Queue numbers: port 0's receive and transmit queues.
const (
	receiveQ  = 0
	transmitQ = 1
)

// Options configure a Device.
type Options struct {
	// Out receives the guest's output; it must not block for long (the
	// VMM gives a serial.Buffer).
	Out io.Writer
	// Backlog bounds the input held while the driver offers no receive
	// buffer (DefaultBacklog when 0).
	Backlog int
	// MaxBuffers bounds the descriptors of one chain (DefaultMaxBuffers
	// when 0): Linux's hvc driver offers and sends one buffer at a time,
	// and a chain of hundreds of one-byte buffers would cost as many
	// writes.
	MaxBuffers int
}

// Device is a virtio console. Kick runs on the transport's notification
// goroutine; Input on any other.
type Device struct {
	out io.Writer

	// mu guards the receive side, which Input and Kick both drive, and
	// the queues against a Reset while Input runs.
	mu      sync.Mutex
	rxq     *virtio.Queue
	txq     *virtio.Queue
	irq     virtio.Interrupt
	backlog []byte // input waiting for a receive buffer, at most cap
	rxChain virtio.Chain
	txChain virtio.Chain

	dropped atomic.Uint64
}

// New returns a device ready to be wrapped by a transport.
func New(opts Options) *Device {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Backlog <= 0 {
		opts.Backlog = DefaultBacklog
	}
	if opts.MaxBuffers <= 0 {
		opts.MaxBuffers = DefaultMaxBuffers
	}
	d := &Device{out: opts.Out, backlog: make([]byte, 0, opts.Backlog)}
	n := uint32(min(opts.MaxBuffers, 2*virtio.MaxQueueSize))
	d.rxChain.SetMaxDescriptors(n)
	d.txChain.SetMaxDescriptors(n)
	return d
}

func (d *Device) Type() virtio.DeviceType { return virtio.TypeConsole }
func (d *Device) QueueSizes() []uint16    { return []uint16{DefaultQueueSize, DefaultQueueSize} }

// Features offers VERSION_1 and the queue features: no console size, no
// multiport, no emergency write.
func (d *Device) Features() uint64 { return virtio.FeatureVersion1 | virtio.FeaturesQueue }

func (d *Device) Ack(features uint64) error { return virtio.CheckFeatures(d.Features(), features) }

// ReadConfig reads zeros: cols, rows, max_nr_ports and emerg_wr mean
// nothing without the features that give them a meaning.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }
func (d *Device) WriteConfig(uint64, []byte)       {}

// Activate takes the two queues of port 0.
func (d *Device) Activate(queues []*virtio.Queue, irq virtio.Interrupt) error {
	if len(queues) != 2 {
		return fmt.Errorf("virtio-console: %d queues, want 2", len(queues))
	}
	if !queues[receiveQ].Active() || !queues[transmitQ].Active() {
		return fmt.Errorf("virtio-console: receive or transmit queue not enabled")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rxq, d.txq, d.irq = queues[receiveQ], queues[transmitQ], irq
	d.deliverLocked() // what was typed before the driver came up
	return nil
}

// Reset forgets the queues; input typed meanwhile waits in the backlog.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rxq, d.txq, d.irq = nil, nil, nil
}

// Dropped is how many input bytes found the backlog full.
func (d *Device) Dropped() uint64 { return d.dropped.Load() }

// Input queues p for the guest and returns how many bytes it took; the
// rest is dropped (counted) when the backlog is full.
func (d *Device) Input(p []byte) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(len(p), cap(d.backlog)-len(d.backlog))
	d.backlog = append(d.backlog, p[:n]...)
	if n < len(p) {
		d.dropped.Add(uint64(len(p) - n))
	}
	d.deliverLocked()
	return n
}

// Kick serves queue q: new receive buffers take waiting input, transmit
// buffers go out.
func (d *Device) Kick(q int) {
	switch q {
	case receiveQ:
		d.mu.Lock()
		d.deliverLocked()
		d.mu.Unlock()
	case transmitQ:
		d.mu.Lock()
		vq, irq := d.txq, d.irq
		d.mu.Unlock()
		if vq != nil {
			d.transmit(vq, irq)
		}
	}
}

// transmit writes every buffer on the transmit queue to Out and gives it
// back. A broken ring stops the device (the transport sees the queue's
// error and asks for a reset).
func (d *Device) transmit(vq *virtio.Queue, irq virtio.Interrupt) {
	for {
		vq.DisableNotifications()
		for {
			head, ok, err := vq.Pop()
			if err != nil {
				return
			}
			if !ok {
				break
			}
			// A malformed chain is given back unread: the guest loses
			// what it held, nothing else.
			if err := vq.Walk(head, &d.txChain); err == nil {
				for _, b := range d.txChain.Readable() {
					d.out.Write(b)
				}
			}
			if err := vq.Push(head, 0); err != nil {
				return
			}
		}
		if vq.NeedInterrupt() {
			irq.Used(transmitQ)
		}
		if !vq.EnableNotifications() {
			return
		}
	}
}

// deliverLocked fills the driver's receive buffers with the backlog, one
// chain at a time, for as long as both last. Called with mu held.
func (d *Device) deliverLocked() {
	vq := d.rxq
	if vq == nil || len(d.backlog) == 0 {
		return
	}
	filled := false
	for len(d.backlog) > 0 {
		head, ok, err := vq.Pop()
		if err != nil || !ok {
			break
		}
		var n uint32
		if err := vq.Walk(head, &d.rxChain); err == nil {
			for _, b := range d.rxChain.Writable() {
				c := copy(b, d.backlog)
				d.backlog = d.backlog[:copy(d.backlog, d.backlog[c:])]
				n += uint32(c)
				if len(d.backlog) == 0 {
					break
				}
			}
		}
		if err := vq.Push(head, n); err != nil {
			break
		}
		filled = true
	}
	if filled && vq.NeedInterrupt() {
		d.irq.Used(receiveQ)
	}
}
