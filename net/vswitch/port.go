package vswitch

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/vmm/ratelimit"
)

// Network is one broadcast domain: frames are forwarded between its ports
// only, with its own forwarding database.
type Network struct {
	name  string
	vlan  uint16
	sw    *Switch
	fdb   *fdb
	ports atomic.Pointer[[]*Port] // copy on write, read lock-free by forwarding
	v6    v6Owners                // IPv6 addresses claimed by locked VM ports
}

// Name is the network's name.
func (n *Network) Name() string { return n.name }

// VLAN is the network's 802.1Q VLAN id on trunks, 0 for untagged only.
func (n *Network) VLAN() uint16 { return n.vlan }

// Learned is the number of live entries in the network's forwarding
// database. It walks the whole table: not for the data path.
func (n *Network) Learned() int { return n.fdb.count(n.sw.now(), n.sw.age) }

// Lookup returns the port a MAC address was learned on, or nil.
func (n *Network) Lookup(mac net.HardwareAddr) *Port {
	if len(mac) != 6 {
		return nil
	}
	return n.fdb.lookup(macKey(mac), n.sw.now(), n.sw.age)
}

// DropReason says why a port dropped a frame.
type DropReason int

// Drop reasons, indexes of Counters.Drops.
const (
	DropNoBuffer   DropReason = iota // the receiver had no (large enough) receive buffer
	DropSpoofedMAC                   // a VM sent with a source MAC other than its NIC's, or named another MAC in ARP, ND or a DHCP request
	DropSpoofedIP                    // a locked VM sent from an IPv4 address it was not given, or an IPv6 address it may not use
	DropRogueDHCP                    // a VM sent a DHCP server message (UDP from port 67; DHCPv6 from 547 on a locked port)
	DropRateLimit                    // the port's token bucket was empty
	DropMalformed                    // a frame or descriptor chain the switch cannot parse
	DropEtherType                    // a VM sent an EtherType its port does not carry (stacked VLAN tags; on a locked port, anything but IPv4, ARP, IPv6)
	DropRogueRA                      // a VM on a locked port sent an IPv6 router advertisement or redirect
	NumDropReasons
)

var dropNames = [NumDropReasons]string{"no_buffer", "spoofed_mac", "spoofed_ip", "rogue_dhcp", "rate_limit", "malformed", "bad_ethertype", "rogue_ra"}

func (r DropReason) String() string {
	if r < 0 || r >= NumDropReasons {
		return fmt.Sprintf("DropReason(%d)", int(r))
	}
	return dropNames[r]
}

// Counters are a port's statistics, from the port's side: Tx is what the
// VM (or the host behind a frame port) sent into the switch, Rx what the
// switch delivered to it. Bytes count Ethernet frames without the
// virtio-net header.
type Counters struct {
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	Drops              [NumDropReasons]uint64
	// CutOffs counts the connections of a virtio port's frontend that the
	// vhost-user backend ended for the frontend's fault (descriptors of
	// the wrong kind, framing it cannot trust).
	CutOffs uint64
	// RxQueued counts the frames for a virtio port that found its driver
	// without buffers and waited in the switch's backlog (backlog.go);
	// they are in RxPackets once delivered.
	RxQueued uint64
}

// counters are updated with atomics by every goroutine forwarding to or
// from the port, so they can be read while traffic runs.
type counters struct {
	rxPackets, rxBytes atomic.Uint64
	txPackets, txBytes atomic.Uint64
	drops              [NumDropReasons]atomic.Uint64
	cutOffs            atomic.Uint64
	rxQueued           atomic.Uint64
}

// Rate is a token bucket in one direction. The zero value is unlimited.
type Rate struct {
	BitsPerSecond    uint64 // 0: no bandwidth limit
	PacketsPerSecond uint64 // 0: no packet rate limit
	// BurstBits and BurstPackets are the bucket sizes: how much may pass
	// at once after a quiet period. Zero means 50 ms worth of the rate
	// (at least one 64 KiB frame, or one packet).
	BurstBits    uint64
	BurstPackets uint64
}

// Limits are a port's rates. Rx limits what the switch delivers to the port
// (excess is dropped); Tx limits what the port sends into the switch (a VM's
// transmit queue is paused until tokens are back, a frame port's excess is
// dropped).
type Limits struct {
	Rx, Tx Rate
}

func bucket(rate, burst, minBurst uint64) ratelimit.BucketConfig {
	if rate == 0 {
		return ratelimit.BucketConfig{}
	}
	if burst == 0 {
		burst = max(rate/20, minBurst)
	}
	// RefillTime = burst/rate seconds, computed in 128 bits.
	hi, lo := bits.Mul64(burst, uint64(time.Second))
	if hi >= rate {
		return ratelimit.BucketConfig{Size: burst, RefillTime: math.MaxInt64}
	}
	q, _ := bits.Div64(hi, lo, rate)
	return ratelimit.BucketConfig{Size: burst, RefillTime: time.Duration(min(q, math.MaxInt64))}
}

// newLimiter returns nil for an unlimited rate, so the data path skips it
// with one comparison.
func newLimiter(r Rate, clock func() time.Duration) *ratelimit.Limiter {
	if r.BitsPerSecond == 0 && r.PacketsPerSecond == 0 {
		return nil
	}
	ops := bucket(r.PacketsPerSecond, r.BurstPackets, 1)
	bytes := bucket(r.BitsPerSecond, r.BurstBits, 8*maxFrame)
	return ratelimit.New(ops, bytes, ratelimit.Clock(clock))
}

// Port is a switch port: what every kind of port has in common.
type Port struct {
	sw      *Switch
	name    string
	nets    []*Network // immutable after creation
	native  *Network   // the network of untagged frames, or nil
	trunk   bool       // frames of networks with a VLAN id carry a tag
	mac     uint64     // virtio ports: the only source MAC allowed
	removed atomic.Bool

	capture atomic.Pointer[func(frame []byte)]
	// The port's rates (nil: unlimited), replaced whole by SetLimits
	// while frames flow: the data path loads each once per frame.
	txLimit atomic.Pointer[ratelimit.Limiter]
	rxLimit atomic.Pointer[ratelimit.Limiter]
	// segDebt is packets software segmentation made from the port's GSO
	// frames beyond the one its limit was charged: the port's next
	// frame pays for them (see sender.segment).
	segDebt atomic.Uint64
	busy    busyWatch // deliveries into the port in progress, for Stalled
	c       counters

	v *VirtioPort // set for a virtio port
	f *FramePort  // set for a frame port
}

func newPort(sw *Switch, name string, nets []*Network, trunk bool, limits Limits) (*Port, error) {
	if name == "" {
		return nil, errors.New("vswitch: port needs a name")
	}
	if len(nets) == 0 {
		return nil, fmt.Errorf("vswitch: port %s has no network", name)
	}
	if !trunk && len(nets) != 1 {
		return nil, fmt.Errorf("vswitch: port %s: an access port has exactly one network, got %d (use a trunk)", name, len(nets))
	}
	p := &Port{sw: sw, name: name, nets: append([]*Network(nil), nets...), trunk: trunk}
	p.SetLimits(limits)
	for i, n := range p.nets {
		if n == nil {
			return nil, fmt.Errorf("vswitch: port %s: nil network", name)
		}
		for _, m := range p.nets[:i] {
			if m == n || (trunk && m.vlan == n.vlan) {
				return nil, fmt.Errorf("vswitch: port %s: networks %s and %s share VLAN %d", name, m.name, n.name, n.vlan)
			}
		}
		if !trunk || n.vlan == 0 {
			p.native = n
		}
	}
	return p, nil
}

// SetLimits replaces the port's rates, at once and while frames flow: the
// new buckets start full, as a new port's do. A virtio port's transmit
// queue held back by the old limit tries again when the wait the old limit
// set is over (at most that wait late).
func (p *Port) SetLimits(l Limits) {
	p.txLimit.Store(newLimiter(l.Tx, p.sw.clock))
	p.rxLimit.Store(newLimiter(l.Rx, p.sw.clock))
}

// Name is the port's name.
func (p *Port) Name() string { return p.name }

// Networks are the networks the port is attached to.
func (p *Port) Networks() []*Network { return append([]*Network(nil), p.nets...) }

// Counters returns a snapshot of the port's counters without stopping
// traffic (each field is read atomically; the set is not one instant).
func (p *Port) Counters() Counters {
	var c Counters
	c.RxPackets = p.c.rxPackets.Load()
	c.RxBytes = p.c.rxBytes.Load()
	c.TxPackets = p.c.txPackets.Load()
	c.TxBytes = p.c.txBytes.Load()
	for i := range c.Drops {
		c.Drops[i] = p.c.drops[i].Load()
	}
	c.CutOffs = p.c.cutOffs.Load()
	c.RxQueued = p.c.rxQueued.Load()
	return c
}

func (p *Port) drop(r DropReason) { p.c.drops[r].Add(1) }

// Capture installs w to see every frame entering or leaving the port
// (Ethernet frames without the virtio-net header, as received from the
// sender), for packet capture; nil turns it off. w is called concurrently
// from the forwarding goroutines and must not keep frame. When off, the
// data path pays one atomic load per frame.
func (p *Port) Capture(w func(frame []byte)) {
	if w == nil {
		p.capture.Store(nil)
		return
	}
	p.capture.Store(&w)
}

// network returns the network a frame with the given tag belongs to on
// this port, or nil.
func (p *Port) network(tagged bool, vid uint16) *Network {
	if !tagged || vid == 0 { // priority-tagged frames are untagged ones
		return p.native
	}
	if !p.trunk {
		return nil
	}
	for _, n := range p.nets {
		if n.vlan == vid {
			return n
		}
	}
	return nil
}

// Inject delivers frame, an Ethernet frame, to this port alone with a zero
// virtio-net header: the switch's own services (the DHCP server) answer
// through it. It bypasses the port's rate limit and is sent as given (a
// trunk port gets no tag added). A frame the VM has no receive buffer for
// waits in the port's backlog (backlog.go); Inject fails when the port
// cannot take it (backlog full, queue or port stopped).
func (p *Port) Inject(frame []byte) error {
	if len(frame) < ethHeaderLen || len(frame) > maxFrame {
		return fmt.Errorf("vswitch: inject into %s: frame of %d bytes", p.name, len(frame))
	}
	if p.removed.Load() {
		return fmt.Errorf("vswitch: inject into %s: port removed", p.name)
	}
	s := p.sw.pool.Get().(*sender)
	defer p.sw.pool.Put(s)
	s.injectSegs[0], s.injectSegs[1] = s.zeroHdr[:], frame
	f := frameRef{segs: s.injectSegs[:], size: HeaderLen + len(frame)}
	ok := s.deliver(p, &f, nil, false)
	s.flush()
	s.injectSegs[0], s.injectSegs[1] = nil, nil
	if !ok {
		return fmt.Errorf("vswitch: inject into %s: no receive buffer", p.name)
	}
	return nil
}

// remove detaches the port and stops its goroutines.
func (p *Port) remove() error {
	if !p.sw.detach(p) {
		return nil
	}
	switch {
	case p.v != nil:
		p.v.Stop(0)
		p.v.Stop(1)
	case p.f != nil:
		return p.f.stop()
	}
	return nil
}

// Remove takes the port out of the switch: its addresses are forgotten, no
// frame is forwarded to it any more, and its goroutines have stopped when
// Remove returns. A frame port's Frames is closed.
func (p *Port) Remove() error { return p.remove() }
