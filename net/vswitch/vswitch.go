// Package vswitch is the forwarding core of hyperroot's userspace virtio-net
// switch: networks, ports, MAC learning, VLANs, port security, rate limits
// and counters, copying each frame once from the sender's buffers into the
// receiver's.
//
// A virtio port (a VM NIC) is served through the Device seam of
// net/vhostuser: its transmit queue has a goroutine woken by the kick
// eventfd, and its receive queue is written directly by whichever port's
// goroutine forwards a frame to it, under the port's receive mutex. A frame
// port (tap, AF_PACKET uplink, tests) wraps a Frames and has one reader
// goroutine. There is no central forwarding thread: a frame is forwarded
// on the goroutine that received it, so the work spreads over cores with
// the senders.
package vswitch

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// DefaultAgeTime is how long a learned MAC address stays in a network's
// forwarding database without a frame from it (the IEEE 802.1D default).
const DefaultAgeTime = 300 * time.Second

// DefaultFDBSize is the number of FDB slots per network.
const DefaultFDBSize = 4096

// Options configures a Switch. The zero value is usable.
type Options struct {
	// AgeTime is how long a learned address is remembered; zero means
	// DefaultAgeTime.
	AgeTime time.Duration
	// FDBSize is the number of addresses each network can learn; zero
	// means DefaultFDBSize.
	FDBSize int
	// Local, when set, sees frames addressed to the switch's own services
	// before they are forwarded: every broadcast or multicast frame and
	// every IPv4 UDP datagram to port 67 (DHCP), after port security
	// accepted them. frame is the Ethernet frame as it arrived on p
	// (without the virtio-net header; tagged if p is a trunk), valid only
	// during the call. Returning true consumes the frame. It is called
	// concurrently from every port's goroutine and may call Port.Inject.
	Local func(p *Port, frame []byte) bool
	// Clock is monotonic time since an arbitrary origin, for aging and
	// rate limits; nil means the real clock. Tests inject a fake one.
	Clock func() time.Duration
	// Fault, when set, is told of a panic recovered on a port's transmit
	// goroutine (a bug met while forwarding that port's frames): port is
	// the sender, whose transmit queue stops as for a broken ring; the
	// switch and its other ports go on.
	Fault func(port string, panicked any, stack []byte)
	// Claimed6, when set, is told of each IPv6 address a locked port
	// claims (first come, first served; its EUI-64 link-local address is
	// always its own), so that the claims can outlive a restart of the
	// switch (VirtioPort.Claim6 restores them). It is called on the
	// claiming port's forwarding path with its network's claim table
	// locked: it must not block.
	Claimed6 func(p *VirtioPort, addr netip.Addr)
}

// Switch is a set of networks and the ports attached to them.
type Switch struct {
	age   int64 // AgeTime in ns
	local func(p *Port, frame []byte) bool
	clock func() time.Duration
	fault func(port string, panicked any, stack []byte)
	// claimed6 is Options.Claimed6.
	claimed6 func(p *VirtioPort, addr netip.Addr)
	fdbN     int

	pool sync.Pool // *sender for Inject

	stallMu sync.Mutex // serialises Stalled

	mu     sync.Mutex
	nets   map[string]*Network
	ports  []*Port
	closed bool
}

// New returns an empty switch.
func New(opts Options) *Switch {
	s := &Switch{
		age:      int64(opts.AgeTime),
		local:    opts.Local,
		clock:    opts.Clock,
		fault:    opts.Fault,
		claimed6: opts.Claimed6,
		fdbN:     opts.FDBSize,
		nets:     map[string]*Network{},
	}
	if s.age <= 0 {
		s.age = int64(DefaultAgeTime)
	}
	if s.fdbN <= 0 {
		s.fdbN = DefaultFDBSize
	}
	if s.clock == nil {
		start := time.Now()
		s.clock = func() time.Duration { return time.Since(start) }
	}
	s.pool.New = func() any { return newSender(s) }
	return s
}

func (s *Switch) now() int64 { return int64(s.clock()) }

// ErrClosed is returned when adding to a closed switch.
var ErrClosed = errors.New("vswitch: switch closed")

// AddNetwork creates a network. vlan is its 802.1Q VLAN id on trunk ports
// (1-4094); 0 means the network is only ever untagged, the native network
// of a trunk.
func (s *Switch) AddNetwork(name string, vlan uint16) (*Network, error) {
	if name == "" {
		return nil, errors.New("vswitch: network needs a name")
	}
	if vlan > 4094 {
		return nil, fmt.Errorf("vswitch: network %s: VLAN id %d outside 0-4094", name, vlan)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if _, ok := s.nets[name]; ok {
		return nil, fmt.Errorf("vswitch: network %s already exists", name)
	}
	n := &Network{name: name, vlan: vlan, fdb: newFDB(s.fdbN), sw: s}
	n.ports.Store(&[]*Port{})
	s.nets[name] = n
	return n, nil
}

// Network returns the network called name, or nil.
func (s *Switch) Network(name string) *Network {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nets[name]
}

// attach adds p to its networks; the caller has validated p.
func (s *Switch) attach(p *Port) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, q := range s.ports {
		if q.name == p.name {
			return fmt.Errorf("vswitch: port %s already exists", p.name)
		}
	}
	for _, n := range p.nets {
		if n.sw != s {
			return fmt.Errorf("vswitch: port %s: network %s belongs to another switch", p.name, n.name)
		}
	}
	s.ports = append(s.ports, p)
	for _, n := range p.nets {
		// Copy on write: forwarding goroutines read the list without a
		// lock while ports come and go.
		old := *n.ports.Load()
		list := append(slices.Clip(old), p)
		n.ports.Store(&list)
	}
	return nil
}

// detach removes p from its networks and forgets its addresses; afterwards
// no new frame is forwarded to it (one already being delivered may still
// finish).
func (s *Switch) detach(p *Port) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.Index(s.ports, p)
	if i < 0 {
		return false
	}
	s.ports = slices.Delete(s.ports, i, i+1)
	p.removed.Store(true)
	for _, n := range p.nets {
		old := *n.ports.Load()
		list := slices.DeleteFunc(slices.Clone(old), func(q *Port) bool { return q == p })
		n.ports.Store(&list)
		n.fdb.forget(p)
		if p.v != nil {
			n.v6.forget(p.v)
		}
	}
	return true
}

// Close removes every port (stopping their goroutines) and refuses new
// ones.
func (s *Switch) Close() error {
	s.mu.Lock()
	s.closed = true
	ports := slices.Clone(s.ports)
	s.mu.Unlock()
	var errs []error
	for _, p := range ports {
		if err := p.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
