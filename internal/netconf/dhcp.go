package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// Lease is an IPv4 configuration obtained by DHCP, already checked: the
// bytes came from the network, and whoever answered may be wrong or
// hostile, so nothing here can make the caller configure a multicast
// address or renew in a busy loop.
type Lease struct {
	// Address is the leased address with the subnet's prefix length.
	Address netip.Prefix
	// Router is the default gateway, or the zero Addr when the server
	// named none usable (not inside Address's subnet, or Address itself).
	Router netip.Addr
	// Server is the DHCP server identifier.
	Server netip.Addr
	// DNS are the name servers the server named (usable unicast IPv4
	// addresses only, at most maxDNS).
	DNS []netip.Addr
	// HostName is the host name the server gave this host, "" when it
	// gave none or one that is not a valid host name (RFC 1123 letters,
	// digits, hyphens and dots, at most 253 bytes).
	HostName string
	// T1, T2 and Expiry are when to renew with the server, when to ask
	// any server (rebind), and when the address must go. All are the zero
	// Time for an infinite lease.
	T1, T2, Expiry time.Time

	raw *nclient4.Lease
}

// Bounds on the times a server may give, in the client's defence.
const (
	// MinLeaseTime is the shortest lease honoured as such: a server
	// giving less must not make the client renew in a tight loop.
	MinLeaseTime = 60 * time.Second
	// infiniteLease is RFC 2131's 0xffffffff seconds.
	infiniteLease = time.Duration(0xffffffff) * time.Second
)

// DHCPOptions tune RequestLease. The zero value is a client that gives up
// after about half a minute of silence.
type DHCPOptions struct {
	// Hostname, if set, is sent as the host name option.
	Hostname string
	// Timeout is the first wait for an answer; it doubles with each of
	// Retries tries. Defaults: 2 s and 4 tries.
	Timeout time.Duration
	Retries int
}

func (o DHCPOptions) client(ifname string) (*nclient4.Client, error) {
	timeout, retries := o.Timeout, o.Retries
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	if retries <= 0 {
		retries = 4
	}
	c, err := nclient4.New(ifname, nclient4.WithTimeout(timeout), nclient4.WithRetry(retries))
	if err != nil {
		return nil, fmt.Errorf("%s: dhcp client: %w", ifname, err)
	}
	return c, nil
}

func (o DHCPOptions) modifiers() []dhcpv4.Modifier {
	if o.Hostname == "" {
		return nil
	}
	return []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptHostName(o.Hostname))}
}

// RequestLease brings ifname up and obtains a lease on it (DISCOVER,
// OFFER, REQUEST, ACK) with insomniacslk's nclient4. It configures
// nothing: that is Apply's job, so a caller can decide what to do with an
// address first.
//
// The client's raw socket sees every IPv4 packet of the interface, so it
// is opened for the exchange only and closed when RequestLease returns.
func RequestLease(ctx context.Context, ifname string, o DHCPOptions) (*Lease, error) {
	if err := Up(ifname); err != nil {
		return nil, err
	}
	c, err := o.client(ifname)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, err := c.Request(ctx, o.modifiers()...)
	if err != nil {
		return nil, fmt.Errorf("%s: dhcp: %w", ifname, err)
	}
	l, err := leaseFromACK(raw.ACK, raw.CreationTime)
	if err != nil {
		return nil, fmt.Errorf("%s: dhcp: %w", ifname, err)
	}
	l.raw = raw
	return l, nil
}

// ErrNak is returned by Renew when the server refused the lease: the
// address must go at once and the client start over with RequestLease.
var ErrNak = errors.New("server refused the lease (NAK)")

// Renew extends the lease l on ifname (a REQUEST naming l's address,
// broadcast, so it serves as rebinding too) and returns the new lease. It
// brings the link up first: the interface may be a new one by that name.
func (l *Lease) Renew(ctx context.Context, ifname string, o DHCPOptions) (*Lease, error) {
	if l.raw == nil {
		return nil, fmt.Errorf("%s: renew: lease was not obtained by RequestLease", ifname)
	}
	if err := Up(ifname); err != nil {
		return nil, err
	}
	c, err := o.client(ifname)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, err := c.Renew(ctx, l.raw, o.modifiers()...)
	var nak *nclient4.ErrNak
	if errors.As(err, &nak) {
		return nil, fmt.Errorf("%s: renew: %w", ifname, ErrNak)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: renew: %w", ifname, err)
	}
	nl, err := leaseFromACK(raw.ACK, raw.CreationTime)
	if err != nil {
		return nil, fmt.Errorf("%s: renew: %w", ifname, err)
	}
	nl.raw = raw
	return nl, nil
}

// Release tells the server that l is no longer used (DHCPRELEASE, sent
// once: the server may not hear it, and the lease then runs out) and takes
// its address off ifname.
func (l *Lease) Release(ifname string, o DHCPOptions) error {
	var sendErr error
	if l.raw != nil {
		c, err := o.client(ifname)
		if err != nil {
			sendErr = err
		} else {
			sendErr = c.Release(l.raw)
			c.Close()
		}
	}
	if err := ClearAddress(ifname); err != nil {
		return err
	}
	if sendErr != nil {
		return fmt.Errorf("%s: dhcp release: %w", ifname, sendErr)
	}
	return nil
}

// Apply configures l on ifname: address, link up, and the default route
// through l.Router when there is one (replacing any other default route).
func (l *Lease) Apply(ifname string) error {
	if err := SetAddress(ifname, l.Address); err != nil {
		return err
	}
	if l.Router.IsValid() {
		if err := SetDefaultRoute(l.Router); err != nil {
			return fmt.Errorf("%s: %w", ifname, err)
		}
	}
	return nil
}

// leaseFromACK checks a server's ACK and turns it into a Lease whose times
// count from received.
func leaseFromACK(ack *dhcpv4.DHCPv4, received time.Time) (*Lease, error) {
	if ack == nil {
		return nil, errors.New("no ACK")
	}
	if mt := ack.MessageType(); mt != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("answer is a %s, not an ACK", mt)
	}
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr)
	if !ok || !ip.Unmap().Is4() {
		return nil, fmt.Errorf("ACK has no IPv4 address (yiaddr %v)", ack.YourIPAddr)
	}
	ip = ip.Unmap()
	if !usableHost(ip) {
		return nil, fmt.Errorf("ACK offers %s, which no host can use", ip)
	}
	bits := naturalBits(ip)
	if m := ack.SubnetMask(); m != nil {
		ones, size := m.Size()
		if size != 32 {
			return nil, fmt.Errorf("ACK subnet mask %v is not a contiguous IPv4 mask", net.IP(m))
		}
		bits = ones
	}
	l := &Lease{Address: netip.PrefixFrom(ip, bits)}
	if bits < 31 {
		// The subnet's own and broadcast addresses are no host's.
		if ip == l.Address.Masked().Addr() || ip == lastAddr(l.Address) {
			return nil, fmt.Errorf("ACK offers %s, not a host address of its subnet", l.Address)
		}
	}
	for _, r := range ack.Router() {
		a, ok := netip.AddrFromSlice(r)
		if a = a.Unmap(); ok && a.Is4() && a != ip && usableHost(a) && l.Address.Contains(a) {
			l.Router = a
			break
		}
	}
	if s, ok := netip.AddrFromSlice(ack.ServerIdentifier()); ok {
		l.Server = s.Unmap()
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d); ok && a.Unmap().Is4() && usableHost(a.Unmap()) && len(l.DNS) < maxDNS {
			l.DNS = append(l.DNS, a.Unmap())
		}
	}
	if h := ack.HostName(); validHostName(h) {
		l.HostName = h
	}
	lease := ack.IPAddressLeaseTime(0)
	if lease == 0 {
		return nil, errors.New("ACK has no lease time")
	}
	if lease >= infiniteLease {
		return l, nil // never renewed, never expires
	}
	lease = max(lease, MinLeaseTime)
	t1 := ack.IPAddressRenewalTime(lease / 2)
	t2 := ack.IPAddressRebindingTime(lease / 8 * 7)
	if t2 <= 0 || t2 >= lease {
		t2 = lease / 8 * 7
	}
	if t1 <= 0 || t1 >= t2 {
		t1 = min(lease/2, t2)
	}
	// Nor may a server make the client renew every second.
	t1 = min(max(t1, MinLeaseTime/4), t2)
	l.T1, l.T2, l.Expiry = received.Add(t1), received.Add(t2), received.Add(lease)
	return l, nil
}

// maxDNS bounds the name servers a lease keeps (the resolver's own limit
// in resolv.conf is 3).
const maxDNS = 3

// validHostName says whether h is a host name by RFC 1123: labels of
// letters, digits and inner hyphens, joined by dots. A server's host name
// ends up in URLs and on the console.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// usableHost rules out addresses that cannot name one host on a LAN.
func usableHost(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// naturalBits is the classful prefix length of a, the kernel's and
// dhclient's default when no netmask is given.
func naturalBits(a netip.Addr) int {
	switch b := a.As4(); {
	case b[0] < 128:
		return 8
	case b[0] < 192:
		return 16
	default:
		return 24
	}
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}
