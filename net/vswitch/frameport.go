package vswitch

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Frames moves whole frames. Every buffer is a 12-byte virtio_net_hdr_v1
// followed by the Ethernet frame (the header carries checksum/GSO offload
// metadata both ways; tap with IFF_VNET_HDR and AF_PACKET with
// PACKET_VNET_HDR speak it natively, so the kernel segments).
type Frames interface {
	ReadBatch(bufs [][]byte, lens []int) (n int, err error) // blocks until at least one frame
	WriteBatch(frames [][]byte) (n int, err error)
	Close() error // unblocks ReadBatch with an error
}

// DefaultBatch is how many frames a frame port reads at once.
const DefaultBatch = 16

// FrameConfig describes a frame port.
type FrameConfig struct {
	// Networks are the networks the port carries: exactly one for an
	// access port (frames untagged), any number for a trunk.
	Networks []*Network
	// Trunk makes frames of networks with a VLAN id carry an 802.1Q tag;
	// untagged frames belong to the network whose VLAN is 0 (the native
	// one), if the trunk carries it.
	Trunk bool
	// Offload says the far side completes partial checksums and segments
	// GSO frames itself (tap with IFF_VNET_HDR, AF_PACKET with
	// PACKET_VNET_HDR), so the switch passes the metadata through instead
	// of doing the work in software.
	Offload bool
	Limits  Limits
	// Batch is the number of frames per ReadBatch; zero means
	// DefaultBatch. Each takes a 64 KiB buffer.
	Batch int
}

// FramePort is a port backed by a Frames: a tap device, an uplink, a test.
type FramePort struct {
	*Port
	frames  Frames
	offload bool
	wmu     sync.Mutex // one WriteBatch at a time: many goroutines forward to the port
	done    chan struct{}
	err     atomic.Pointer[error]
}

// AddFramePort attaches f to the switch and starts reading from it.
func (s *Switch) AddFramePort(name string, f Frames, cfg FrameConfig) (*FramePort, error) {
	if f == nil {
		return nil, fmt.Errorf("vswitch: port %s: nil Frames", name)
	}
	p, err := newPort(s, name, cfg.Networks, cfg.Trunk, cfg.Limits)
	if err != nil {
		return nil, err
	}
	fp := &FramePort{Port: p, frames: f, offload: cfg.Offload, done: make(chan struct{})}
	p.f = fp
	batch := cfg.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, HeaderLen+maxFrame)
	}
	if err := s.attach(p); err != nil {
		return nil, err
	}
	go fp.read(bufs, make([]int, batch))
	return fp, nil
}

// errStopped is the reader's exit reason after Remove.
var errStopped = errors.New("vswitch: port removed")

// Err is why the port stopped reading (its Frames failed), or nil while it
// runs.
func (fp *FramePort) Err() error {
	if e := fp.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (fp *FramePort) read(bufs [][]byte, lens []int) {
	defer close(fp.done)
	s := newSender(fp.sw)
	for {
		n, err := fp.frames.ReadBatch(bufs, lens)
		now := fp.sw.now()
		for i := 0; i < min(n, len(bufs)); i++ {
			l := lens[i]
			if l < 0 || l > len(bufs[i]) {
				fp.drop(DropMalformed)
				continue
			}
			s.oneSeg[0] = bufs[i][:l]
			s.ingress(fp.Port, s.oneSeg[:], l, now, false)
		}
		s.oneSeg[0] = nil
		s.flush()
		if err != nil {
			if fp.removed.Load() {
				err = errStopped
			}
			fp.err.Store(&err)
			return
		}
	}
}

func (fp *FramePort) stop() error {
	err := fp.frames.Close()
	<-fp.done
	if err != nil {
		return fmt.Errorf("vswitch: close port %s: %w", fp.name, err)
	}
	return nil
}

// write hands frames to the Frames, one writer at a time. The lock and the
// liveness mark are released even if WriteBatch panics (a bug in a Frames
// implementation, recovered on the sending port's goroutine): otherwise
// every later sender to this port would block on the lock for good.
func (fp *FramePort) write(frames [][]byte) (int, error) {
	fp.busy.enter()
	defer fp.busy.exit()
	fp.wmu.Lock()
	defer fp.wmu.Unlock()
	return fp.frames.WriteBatch(frames)
}

// send writes e to the Frames. Frames go one by one: the receivers are
// kernel queues where a write per frame is the cost anyway.
func (fp *FramePort) send(s *sender, e *emit) bool {
	if s.out == nil {
		s.out = make([]byte, HeaderLen+maxFrame+vlanTagLen)
	}
	s.outv[0] = s.out[:e.total]
	e.writeFlat(s.outv[0])
	n, err := fp.write(s.outv[:])
	s.outv[0] = nil
	if err != nil || n != 1 {
		fp.drop(DropNoBuffer)
		return false
	}
	return true
}
