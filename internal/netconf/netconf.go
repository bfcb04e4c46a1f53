// Package netconf configures IPv4 on a Linux network interface the way
// ifconfig and route do, for the appliance's host port and the test guest:
// one address, link up, a default route. Both run without any userland,
// so this is done with ioctls and one netlink message.
package netconf

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// SetAddress gives interface ifname the IPv4 address and prefix length of
// p and brings the link up.
func SetAddress(ifname string, p netip.Prefix) error {
	if !p.Addr().Is4() {
		return fmt.Errorf("%s: %s is not an IPv4 address", ifname, p)
	}
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("%s: %w", ifname, err)
	}
	defer unix.Close(fd)
	set := func(req uint, what string, ip net.IP) error {
		ifr, err := unix.NewIfreq(ifname)
		if err != nil {
			return fmt.Errorf("%s: %w", ifname, err)
		}
		if err := ifr.SetInet4Addr(ip.To4()); err != nil {
			return fmt.Errorf("%s: %s: %w", ifname, what, err)
		}
		if err := unix.IoctlIfreq(fd, req, ifr); err != nil {
			return fmt.Errorf("%s: set %s %s: %w", ifname, what, ip, err)
		}
		return nil
	}
	if err := set(unix.SIOCSIFADDR, "address", p.Addr().AsSlice()); err != nil {
		return err
	}
	if err := set(unix.SIOCSIFNETMASK, "netmask", net.IP(net.CIDRMask(p.Bits(), 32))); err != nil {
		return err
	}
	return Up(ifname)
}

// ClearAddress removes interface ifname's IPv4 address (and with it the
// routes through it), as a DHCP client must when its lease runs out. An
// interface without an address is not an error.
func ClearAddress(ifname string) error {
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("%s: %w", ifname, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return fmt.Errorf("%s: %w", ifname, err)
	}
	if err := ifr.SetInet4Addr(net.IPv4zero.To4()); err != nil {
		return fmt.Errorf("%s: %w", ifname, err)
	}
	// Setting 0.0.0.0 is how the ioctl interface spells "delete".
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil && err != unix.EADDRNOTAVAIL {
		return fmt.Errorf("%s: clear address: %w", ifname, err)
	}
	return nil
}

// HasAddress reports whether interface ifname exists and carries exactly
// the address and prefix length of p, with its index (which changes when
// the interface is destroyed and created again under the same name).
func HasAddress(ifname string, p netip.Prefix) (index int, ok bool, err error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", ifname, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return ifi.Index, false, fmt.Errorf("%s: addresses: %w", ifname, err)
	}
	for _, a := range addrs {
		n, isNet := a.(*net.IPNet)
		if !isNet {
			continue
		}
		ip, okIP := netip.AddrFromSlice(n.IP)
		bits, _ := n.Mask.Size()
		if okIP && netip.PrefixFrom(ip.Unmap(), bits) == p {
			return ifi.Index, true, nil
		}
	}
	return ifi.Index, false, nil
}

// Up sets IFF_UP on interface ifname.
func Up(ifname string) error { return setUp(ifname, true) }

// Down clears IFF_UP on interface ifname (the kernel refuses to delete a
// bridge that is up, for one).
func Down(ifname string) error { return setUp(ifname, false) }

func setUp(ifname string, up bool) error {
	fd, err := ctlSocket()
	if err != nil {
		return fmt.Errorf("%s: %w", ifname, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: get flags: %w", ifname, err)
	}
	flags, what := ifr.Uint16()|unix.IFF_UP, "up"
	if !up {
		flags, what = ifr.Uint16()&^unix.IFF_UP, "down"
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: %s: %w", ifname, what, err)
	}
	return nil
}

// AddDefaultRoute routes everything without a more specific route through
// gateway (RTM_NEWROUTE for 0.0.0.0/0 in the main table). It fails if a
// default route exists already.
func AddDefaultRoute(gateway netip.Addr) error {
	return defaultRoute(gateway, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
}

// SetDefaultRoute is AddDefaultRoute that replaces an existing default
// route instead of failing: a DHCP client reapplies its lease after every
// renewal and after its interface was recreated, and the router may have
// changed in between.
func SetDefaultRoute(gateway netip.Addr) error {
	return defaultRoute(gateway, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
}

func defaultRoute(gateway netip.Addr, flags uint16) error {
	if !gateway.Is4() {
		return fmt.Errorf("default route: %s is not an IPv4 address", gateway)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("default route: netlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("default route: bind: %w", err)
	}
	msg := routeMessage(gateway, 1, flags)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("default route: send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("default route: receive: %w", err)
	}
	return ackError(buf[:n])
}

// routeMessage is an RTM_NEWROUTE request (with NLM_F_ACK and flags) for
// the default route via gateway.
func routeMessage(gateway netip.Addr, seq uint32, flags uint16) []byte {
	le := binary.LittleEndian
	gw := gateway.As4()
	const hdr, rtm, attr = unix.SizeofNlMsghdr, unix.SizeofRtMsg, 8 // rtattr (4) + IPv4 (4)
	b := make([]byte, hdr+rtm+attr)
	le.PutUint32(b[0:], uint32(len(b)))
	le.PutUint16(b[4:], unix.RTM_NEWROUTE)
	le.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	le.PutUint32(b[8:], seq)
	r := b[hdr:]
	r[0] = unix.AF_INET // rtm_family; dst_len, src_len, tos stay 0: the default route
	r[4] = unix.RT_TABLE_MAIN
	r[5] = unix.RTPROT_BOOT
	r[6] = unix.RT_SCOPE_UNIVERSE
	r[7] = unix.RTN_UNICAST
	a := b[hdr+rtm:]
	le.PutUint16(a[0:], attr)
	le.PutUint16(a[2:], unix.RTA_GATEWAY)
	copy(a[4:], gw[:])
	return b
}

// ackError reads the NLMSG_ERROR answer to a request sent with NLM_F_ACK.
func ackError(b []byte) error {
	if len(b) < unix.SizeofNlMsghdr+4 {
		return fmt.Errorf("netlink: short answer of %d bytes", len(b))
	}
	if t := binary.LittleEndian.Uint16(b[4:]); t != unix.NLMSG_ERROR {
		return fmt.Errorf("netlink: answer of type %d, want an acknowledgement", t)
	}
	if errno := int32(binary.LittleEndian.Uint32(b[unix.SizeofNlMsghdr:])); errno != 0 {
		return fmt.Errorf("netlink: %w", unix.Errno(-errno))
	}
	return nil
}

// ctlSocket is a throwaway socket for interface ioctls, in the calling
// thread's network namespace.
func ctlSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("control socket: %w", err)
	}
	return fd, nil
}
