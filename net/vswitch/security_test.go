package vswitch

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// ipv6Frame is an Ethernet frame carrying an IPv6 packet.
func ipv6Frame(dstMAC, srcMAC []byte, src, dst netip.Addr, nh uint8, payload []byte) []byte {
	ip := make([]byte, 40, 40+len(payload))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6], ip[7] = nh, 255
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return ether(dstMAC, srcMAC, etherTypeIPv6, append(ip, payload...))
}

// icmp6 is an ICMPv6 message (checksum left zero: the switch does not
// verify it) with the given body after the 4-byte header.
func icmp6(typ uint8, body []byte) []byte {
	return append([]byte{typ, 0, 0, 0}, body...)
}

// nd is a neighbour solicitation or advertisement body for target, with a
// link-layer address option (1 source, 2 target) when ll is set.
func nd(target netip.Addr, opt uint8, ll []byte) []byte {
	b := make([]byte, 20)
	t := target.As16()
	copy(b[4:], t[:])
	if ll != nil {
		b = append(append(b, opt, 1), ll...)
	}
	return b
}

func udp6(dstMAC, srcMAC []byte, src, dst netip.Addr, sport, dport uint16) []byte {
	u := make([]byte, 8, 16)
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], 16)
	return ipv6Frame(dstMAC, srcMAC, src, dst, protoUDP, append(u, 1, 2, 3, 4, 5, 6, 7, 8))
}

// linkLocal is the link-local address SLAAC derives from a MAC, written
// out independently of eui64.
func linkLocal(m []byte) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15] = m[0]^2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]
	return netip.AddrFrom16(a)
}

// stacked puts two 802.1Q tags in front of frame's EtherType.
func stacked(outer, inner uint16, frame []byte) []byte { return tagged(outer, tagged(inner, frame)) }

// arpWith is an ARP packet with a chosen hardware type and sender
// hardware address.
func arpWith(htype uint16, srcMAC, sha []byte, sender, target [4]byte) []byte {
	f := arp(bcast(), srcMAC, sender, target)
	binary.BigEndian.PutUint16(f[ethHeaderLen:], htype)
	copy(f[ethHeaderLen+8:], sha)
	return f
}

// dhcpFrom is a DHCP client message (UDP 68 to 67 from 0.0.0.0) whose
// chaddr is chaddr.
func dhcpFrom(srcMAC, chaddr []byte) []byte {
	p := make([]byte, 240)
	p[0], p[1], p[2] = 1, 1, 6
	copy(p[28:], chaddr)
	return udp4(bcast(), srcMAC, [4]byte{}, [4]byte{255, 255, 255, 255}, 68, 67, p)
}

// TestPortSecurityHeaders: the port security of a locked port holds for
// every header shape a guest can send (each of these got through once).
func TestPortSecurityHeaders(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{lockIP: true})
	b := newVM(t, sw, "b", lan, macB, vmOpts{lockIP: true})
	a.port.AllowIP(netip.MustParseAddr("10.0.0.5"))
	b.port.AllowIP(netip.MustParseAddr("10.0.0.6"))
	mine, theirs := [4]byte{10, 0, 0, 5}, [4]byte{10, 0, 0, 6}
	bcastIP := [4]byte{255, 255, 255, 255}
	llA, llB := linkLocal(mac(macA)), linkLocal(mac(macB))
	privA := netip.MustParseAddr("fe80::1c2d:3e4f:5a6b:7c8d") // stable-privacy link-local
	globB := netip.MustParseAddr("2001:db8::b")
	allNodes := netip.MustParseAddr("ff02::1")
	unspec := netip.IPv6Unspecified()
	mcastMAC := []byte{0x33, 0x33, 0, 0, 0, 1}
	hop := func(nh uint8, rest []byte) []byte { // a hop-by-hop options header with a router alert
		return append([]byte{nh, 0, 5, 2, 0, 0, 1, 0}, rest...)
	}

	// b claims its global address first.
	b.send(udp6(mac(macA), mac(macB), globB, llA, 1000, 2000))
	b.flushTX()

	for _, tc := range []struct {
		name  string
		frame []byte
		allow bool
		drop  DropReason
	}{
		{"ARP with hardware type 6 claiming the neighbour's IP", arpWith(6, mac(macA), mac(macA), theirs, mine), false, DropSpoofedIP},
		{"ARP with hardware type 6 from our IP", arpWith(6, mac(macA), mac(macA), mine, theirs), true, 0},
		{"ARP naming another sender MAC", arpWith(1, mac(macA), mac(macB), mine, theirs), false, DropSpoofedMAC},
		{"ARP with other address lengths", func() []byte {
			f := arp(bcast(), mac(macA), mine, theirs)
			f[ethHeaderLen+4] = 8
			return f
		}(), false, DropMalformed},
		{"priority-tagged IPv4 from the neighbour's IP", tagged(0, udp4(mac(macB), mac(macA), theirs, mine, 1, 2, nil)), false, DropSpoofedIP},
		{"priority-tagged IPv4 from our IP", tagged(0, udp4(mac(macB), mac(macA), mine, theirs, 1, 2, nil)), true, 0},
		{"double-tagged IPv4 from the neighbour's IP", stacked(0, 0, udp4(mac(macB), mac(macA), theirs, mine, 1, 2, nil)), false, DropEtherType},
		{"double-tagged DHCP server reply", stacked(0, 7, udp4(bcast(), mac(macA), mine, bcastIP, 67, 68, make([]byte, 240))), false, DropEtherType},
		{"802.1ad outer tag", func() []byte {
			f := stacked(0, 5, udp4(mac(macB), mac(macA), mine, theirs, 1, 2, nil))
			binary.BigEndian.PutUint16(f[12:], etherTypeQinQ)
			return f
		}(), false, DropEtherType},
		{"other EtherType", ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)), false, DropEtherType},
		{"802.3 length field (LLC)", ether(mac(macB), mac(macA), 46, make([]byte, 46)), false, DropEtherType},
		{"DHCP discover naming another chaddr", dhcpFrom(mac(macA), mac(macB)), false, DropSpoofedMAC},
		{"DHCP discover naming our chaddr", dhcpFrom(mac(macA), mac(macA)), true, 0},

		{"IPv6 from our EUI-64 link-local", udp6(mac(macB), mac(macA), llA, llB, 1, 2), true, 0},
		{"IPv6 from the neighbour's EUI-64 link-local", udp6(mac(macB), mac(macA), llB, llA, 1, 2), false, DropSpoofedIP},
		{"IPv6 from a stable-privacy link-local", udp6(mac(macB), mac(macA), privA, llB, 1, 2), true, 0},
		{"IPv6 from the neighbour's global address", udp6(mac(macB), mac(macA), globB, llB, 1, 2), false, DropSpoofedIP},
		{"IPv6 from a multicast address", udp6(mac(macB), mac(macA), allNodes, llB, 1, 2), false, DropSpoofedIP},
		{"UDP from ::", udp6(mcastMAC, mac(macA), unspec, allNodes, 1, 2), false, DropSpoofedIP},
		{"DAD solicitation from ::", ipv6Frame(mcastMAC, mac(macA), unspec, allNodes, 58, icmp6(135, nd(privA, 0, nil))), true, 0},
		{"router solicitation from ::", ipv6Frame(mcastMAC, mac(macA), unspec, netip.MustParseAddr("ff02::2"), 58, icmp6(133, make([]byte, 4))), true, 0},
		{"MLDv2 report from ::", ipv6Frame(mcastMAC, mac(macA), unspec, netip.MustParseAddr("ff02::16"), 0, hop(58, icmp6(143, make([]byte, 4)))), true, 0},
		{"router advertisement", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 58, icmp6(134, make([]byte, 12))), false, DropRogueRA},
		{"router advertisement behind a hop-by-hop header", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 0, hop(58, icmp6(134, make([]byte, 12)))), false, DropRogueRA},
		{"redirect", ipv6Frame(mac(macB), mac(macA), llA, llB, 58, icmp6(137, make([]byte, 36))), false, DropRogueRA},
		{"DHCPv6 advertise", udp6(mac(macB), mac(macA), llA, llB, 547, 546), false, DropRogueDHCP},
		{"DHCPv6 solicit", udp6(mcastMAC, mac(macA), llA, netip.MustParseAddr("ff02::1:2"), 546, 547), true, 0},
		{"NA for the neighbour's address", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 58, icmp6(136, nd(globB, 2, mac(macA)))), false, DropSpoofedIP},
		{"NA for our address", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 58, icmp6(136, nd(llA, 2, mac(macA)))), true, 0},
		{"NA with another target MAC", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 58, icmp6(136, nd(llA, 2, mac(macB)))), false, DropSpoofedMAC},
		{"NS with another source MAC", ipv6Frame(mcastMAC, mac(macA), llA, allNodes, 58, icmp6(135, nd(llB, 1, mac(macB)))), false, DropSpoofedMAC},
		{"IPv6 truncated", ipv6Frame(mac(macB), mac(macA), llA, llB, 58, nil)[:ethHeaderLen+30], false, DropMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rx := a.port.Counters(), b.port.Counters().RxPackets
			a.send(tc.frame)
			a.flushTX()
			after := a.port.Counters()
			if tc.allow {
				waitFor(t, "delivery", func() bool { return b.port.Counters().RxPackets == rx+1 })
				b.frames()
				return
			}
			if after.Drops[tc.drop] != before.Drops[tc.drop]+1 {
				t.Errorf("drops[%v] %d -> %d, want +1 (all: %v)", tc.drop, before.Drops[tc.drop], after.Drops[tc.drop], after.Drops)
			}
			if b.port.Counters().RxPackets != rx {
				t.Error("dropped frame was delivered")
			}
		})
	}
}

// TestIPv6AddressClaims: a locked port may use at most maxV6Claims IPv6
// addresses besides its EUI-64 link-local, each first come first served
// in its network; a port's claims go when it is removed.
func TestIPv6AddressClaims(t *testing.T) {
	clock := &fakeClock{}
	sw := newSwitch(t, Options{Clock: clock.now})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{lockIP: true})
	b := newVM(t, sw, "b", lan, macB, vmOpts{lockIP: true})
	llB := linkLocal(mac(macB))
	addr := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)})
	}
	for i := range maxV6Claims {
		a.send(udp6(mac(macB), mac(macA), addr(i), llB, 1, 2))
	}
	a.send(udp6(mac(macB), mac(macA), addr(maxV6Claims), llB, 1, 2))
	a.flushTX()
	if got := a.port.Counters().Drops[DropSpoofedIP]; got != 1 {
		t.Fatalf("spoofed_ip = %d after %d addresses, want 1", got, maxV6Claims+1)
	}
	// b cannot take a's addresses while a uses them ...
	b.send(udp6(mac(macA), mac(macB), addr(0), linkLocal(mac(macA)), 1, 2))
	b.flushTX()
	if got := b.port.Counters().Drops[DropSpoofedIP]; got != 1 {
		t.Fatalf("b used a's address: spoofed_ip = %d", got)
	}
	// ... but may once a has been silent on one for claimAge ...
	clock.advance(v6ClaimAge + 1)
	a.send(udp6(mac(macB), mac(macA), addr(1), llB, 1, 2)) // keeps addr(1)
	a.flushTX()
	b.send(udp6(mac(macA), mac(macB), addr(0), linkLocal(mac(macA)), 1, 2))
	b.flushTX()
	if got := b.port.Counters().Drops[DropSpoofedIP]; got != 1 {
		t.Fatalf("b could not take a stale claim: spoofed_ip = %d", got)
	}
	// ... and then a has lost it, and not addr(1).
	a.send(udp6(mac(macB), mac(macA), addr(0), llB, 1, 2))
	a.send(udp6(mac(macB), mac(macA), addr(1), llB, 1, 2))
	a.flushTX()
	if got := a.port.Counters().Drops[DropSpoofedIP]; got != 2 {
		t.Fatalf("a: spoofed_ip = %d, want 2 (addr(0) taken by b)", got)
	}
	// A removed port's addresses are free at once.
	if err := a.port.Remove(); err != nil {
		t.Fatal(err)
	}
	b.send(udp6(bcast(), mac(macB), addr(1), llB, 1, 2))
	b.flushTX()
	if got := b.port.Counters().Drops[DropSpoofedIP]; got != 1 {
		t.Fatalf("b could not take a removed port's address: spoofed_ip = %d", got)
	}
}

// TestIPv6ClaimsRestored: the claims a switch reports (Options.Claimed6)
// and its successor restores (Claim6) keep a neighbour off a guest's
// address across a restart of the switch, before the guest sends again.
func TestIPv6ClaimsRestored(t *testing.T) {
	type claim struct {
		port string
		addr netip.Addr
	}
	var mu sync.Mutex // Claimed6 runs on a's forwarding goroutine
	var claims []claim
	sw := newSwitch(t, Options{Claimed6: func(p *VirtioPort, a netip.Addr) {
		mu.Lock()
		claims = append(claims, claim{p.Name(), a})
		mu.Unlock()
	}})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{lockIP: true})
	mine := netip.MustParseAddr("2001:db8::a")
	a.send(udp6(bcast(), mac(macA), mine, netip.MustParseAddr("ff02::1"), 1, 2))
	a.send(udp6(bcast(), mac(macA), mine, netip.MustParseAddr("ff02::1"), 1, 2)) // already held: no report
	a.send(udp6(bcast(), mac(macA), linkLocal(mac(macA)), netip.MustParseAddr("ff02::1"), 1, 2))
	a.flushTX()
	mu.Lock()
	defer mu.Unlock()
	if len(claims) != 1 || claims[0] != (claim{"a", mine}) {
		t.Fatalf("claims reported %v, want [{a %v}] (the EUI-64 link-local address is not a claim)", claims, mine)
	}

	// The restarted switch: a's port restores its claim; b may not
	// take the address, though a has not sent since.
	sw2 := newSwitch(t, Options{Claimed6: func(p *VirtioPort, a netip.Addr) {
		t.Errorf("Claimed6(%s, %v) on the restarted switch: a restored claim is no new one", p.Name(), a)
	}})
	lan2 := mustNetwork(t, sw2, "lan", 0)
	a2 := newVM(t, sw2, "a", lan2, macA, vmOpts{lockIP: true})
	b2 := newVM(t, sw2, "b", lan2, macB, vmOpts{lockIP: true})
	for _, bad := range []string{"ff02::1", "::", "::ffff:10.0.0.1", "10.0.0.1"} {
		if a2.port.Claim6(netip.MustParseAddr(bad)) {
			t.Errorf("Claim6(%s) = true", bad)
		}
	}
	if !a2.port.Claim6(claims[0].addr) {
		t.Fatal("Claim6 of a's own address failed")
	}
	b2.send(udp6(bcast(), mac(macB), mine, netip.MustParseAddr("ff02::1"), 1, 2))
	b2.flushTX()
	if got := b2.port.Counters().Drops[DropSpoofedIP]; got != 1 {
		t.Fatalf("b took a's restored address: spoofed_ip = %d", got)
	}
	if b2.port.Claim6(mine) {
		t.Error("Claim6 gave b the address a holds")
	}
}

// TestUnlockedPortTags: a VM on a network without DHCP may send any
// EtherType, but never a frame with stacked tags: forwarded to a trunk
// with the outer (priority) tag removed, its inner tag would put it on
// another VLAN.
func TestUnlockedPortTags(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	a.send(ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)))
	a.send(stacked(0, 10, ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46))))
	a.flushTX()
	waitFor(t, "delivery", func() bool { return b.port.Counters().RxPackets == 1 })
	if got := a.port.Counters().Drops[DropEtherType]; got != 1 {
		t.Errorf("bad_ethertype = %d, want 1", got)
	}
}

// TestTxRewriteAfterCheck: a guest that rewrites a frame after the switch
// checked it, before the frame is copied to its receiver (another vCPU
// racing the transmit worker: deliveries wait for the end of the batch),
// gets the bytes that were checked delivered, not its rewrite. Here the
// rewrite happens while the next frame of the batch, a broadcast, is in
// the switch's Local hook: the first frame's source MAC and IP become the
// neighbour's, which port security would have refused.
func TestTxRewriteAfterCheck(t *testing.T) {
	mine, theirs := [4]byte{10, 0, 0, 5}, [4]byte{10, 0, 0, 6}
	marker := []byte("checked-then-rewritten")
	first := udp4(mac(macB), mac(macA), mine, theirs, 1000, 2000, marker)
	// The hook runs on the switch's worker goroutine.
	var sender atomic.Pointer[vm]
	var rewrites atomic.Int32
	sw := newSwitch(t, Options{Local: func(p *Port, frame []byte) bool {
		a := sender.Load()
		if a == nil || p != a.port.Port || rewrites.Load() > 0 {
			return false
		}
		area := a.g.bytes(t, a.tx.data, 4*a.tx.slot)
		at := bytes.Index(area, first)
		if at < 0 {
			t.Errorf("the first frame is not in the sender's buffers")
			return false
		}
		copy(area[at+6:], mac(macB))               // Ethernet source
		copy(area[at+ethHeaderLen+12:], theirs[:]) // IPv4 source
		rewrites.Add(1)
		return false
	}})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{lockIP: true, noStart: true})
	sender.Store(a)
	b := newVM(t, sw, "b", lan, macB, vmOpts{lockIP: true})
	a.port.AllowIP(netip.AddrFrom4(mine))
	b.port.AllowIP(netip.AddrFrom4(theirs))
	a.send(first)
	a.send(arp(bcast(), mac(macA), mine, theirs))
	a.start() // both frames in one batch
	a.flushTX()
	var got []rxFrame
	waitFor(t, "both frames at b", func() bool { got = append(got, b.frames()...); return len(got) >= 2 })
	if n := rewrites.Load(); n != 1 {
		t.Fatalf("the frame was rewritten %d times, want 1", n)
	}
	if !bytes.Equal(got[0].frame, first) {
		t.Errorf("b received % x\nwant the checked frame % x", got[0].frame, first)
	}
}
