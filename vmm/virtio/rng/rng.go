// Package rng is the virtio entropy device (virtio 1.2 §5.4): it fills the
// buffers the driver offers on its one queue with bytes from the host's
// random number generator.
package rng

import (
	"crypto/rand"
	"fmt"
	"io"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// Defaults for Options.
const (
	DefaultQueueSize  = 256
	DefaultMaxRequest = 64 << 10
	DefaultMaxBuffers = 16
)

// Options configure a Device. The zero value reads crypto/rand (getrandom)
// and serves at most DefaultMaxRequest bytes per request.
type Options struct {
	// Source supplies the bytes; nil means crypto/rand.Reader.
	Source io.Reader
	// MaxRequest bounds the bytes written per request, so that one huge
	// buffer cannot keep the device busy; the driver sees a shorter used
	// length and asks again.
	MaxRequest int
	// MaxBuffers bounds the descriptors of one request (DefaultMaxBuffers
	// when 0). Each buffer costs a read of Source (a getrandom call), so
	// MaxRequest alone would let a chain of 511 one-byte buffers cost 511
	// system calls; Linux offers one buffer per request. A longer chain
	// is given back empty.
	MaxBuffers int
}

// Device is a virtio-rng device. Its one queue is served by Kick, which
// the transport calls on its notification goroutine.
type Device struct {
	src    io.Reader
	max    int
	queue  *virtio.Queue
	irq    virtio.Interrupt
	chain  virtio.Chain
	errors int // requests that could not be filled, for tests and debugging
}

// New returns a device ready to be wrapped by a transport.
func New(opts Options) *Device {
	d := &Device{src: opts.Source, max: opts.MaxRequest}
	if d.src == nil {
		d.src = rand.Reader
	}
	if d.max <= 0 {
		d.max = DefaultMaxRequest
	}
	if opts.MaxBuffers <= 0 {
		opts.MaxBuffers = DefaultMaxBuffers
	}
	d.chain.SetMaxDescriptors(uint32(min(opts.MaxBuffers, 2*virtio.MaxQueueSize)))
	return d
}

func (d *Device) Type() virtio.DeviceType { return virtio.TypeEntropy }
func (d *Device) QueueSizes() []uint16    { return []uint16{DefaultQueueSize} }

// Features offers VERSION_1 and the queue features; virtio-rng has no
// feature bits of its own.
func (d *Device) Features() uint64 { return virtio.FeatureVersion1 | virtio.FeaturesQueue }

func (d *Device) Ack(features uint64) error { return virtio.CheckFeatures(d.Features(), features) }

// ReadConfig reads zeros: virtio-rng has no configuration space.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }
func (d *Device) WriteConfig(uint64, []byte)       {}

// Activate takes the queue; requests are served when the driver kicks.
func (d *Device) Activate(queues []*virtio.Queue, irq virtio.Interrupt) error {
	if len(queues) != 1 {
		return fmt.Errorf("virtio-rng: %d queues, want 1", len(queues))
	}
	if !queues[0].Active() {
		return fmt.Errorf("virtio-rng: request queue not enabled")
	}
	d.queue, d.irq = queues[0], irq
	return nil
}

// Reset forgets the queue. The transport calls it only when no Kick runs.
func (d *Device) Reset() { d.queue, d.irq = nil, nil }

// Kick serves every request available on queue q, then interrupts the
// driver if it asked. A broken ring stops the device (the transport sees
// the queue's error and asks for a reset).
func (d *Device) Kick(q int) {
	if q != 0 || d.queue == nil {
		return
	}
	vq := d.queue
	for {
		vq.DisableNotifications()
		for {
			head, ok, err := vq.Pop()
			if err != nil || !ok {
				if err != nil {
					return
				}
				break
			}
			if err := vq.Push(head, d.fill(vq, head)); err != nil {
				return
			}
		}
		if vq.NeedInterrupt() {
			d.irq.Used(0)
		}
		if !vq.EnableNotifications() {
			return
		}
	}
}

// fill writes random bytes into the request's writable buffers, at most
// d.max of them, and returns how many. A malformed chain or a failing
// source yields 0: the driver gets its buffers back empty.
func (d *Device) fill(vq *virtio.Queue, head uint16) uint32 {
	if err := vq.Walk(head, &d.chain); err != nil {
		d.errors++
		return 0
	}
	left := d.max
	var n uint32
	for _, b := range d.chain.Writable() {
		if left == 0 {
			break
		}
		b = b[:min(len(b), left)]
		// Straight into guest memory: no intermediate copy.
		if _, err := io.ReadFull(d.src, b); err != nil {
			d.errors++
			return n
		}
		n += uint32(len(b))
		left -= len(b)
	}
	return n
}
