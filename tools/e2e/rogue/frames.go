package main

import (
	"net"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// hostileFrames are frames a VM on a DHCP-locked port must not be able to
// send, each from the port's own MAC unless forging the MAC is the point.
// The rogue holds no lease, so no IPv4 source is its own. Port security
// drops every one, and the switch counts each under its reason; the e2e
// test checks the counts.
func hostileFrames(own net.HardwareAddr) [][]byte {
	forged := net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x02}
	bcast := layers.EthernetBroadcast
	gateway := net.IPv4(10, 20, 0, 1).To4()
	stranger := net.IPv4(10, 20, 0, 77).To4()
	udp4 := func(src net.HardwareAddr, ip net.IP, sport, dport layers.UDPPort) []byte {
		u := &layers.UDP{SrcPort: sport, DstPort: dport}
		i := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: ip, DstIP: net.IPv4bcast.To4()}
		u.SetNetworkLayerForChecksum(i)
		return frame(&layers.Ethernet{SrcMAC: src, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv4},
			i, u, gopacket.Payload("rogue"))
	}
	llOwn := net.IP{0xfe, 0x80, 0, 0, 0, 0, 0, 0, own[0] ^ 2, own[1], own[2], 0xff, 0xfe, own[3], own[4], own[5]}
	ra := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: llOwn,
		DstIP: net.ParseIP("ff02::1")}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeRouterAdvertisement, 0)}
	icmp.SetNetworkLayerForChecksum(ra)
	return [][]byte{
		// Another MAC as the source.
		udp4(forged, stranger, 40000, 5000),
		// An IPv4 source the port was not given.
		udp4(own, stranger, 40000, 5000),
		// A DHCP server's reply, from a VM.
		udp4(own, net.IPv4zero.To4(), 67, 68),
		// ARP with hardware type 6 (IEEE 802) claiming the gateway's
		// address: Linux accepts it as ARP.
		frame(&layers.Ethernet{SrcMAC: own, DstMAC: bcast, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{AddrType: layers.LinkTypeTokenRing /* hardware type 6 */, Protocol: layers.EthernetTypeIPv4,
				HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPReply,
				SourceHwAddress: own, SourceProtAddress: gateway,
				DstHwAddress: bcast, DstProtAddress: gateway}),
		// Two stacked VLAN tags (outer VID 0) around IPv4.
		frame(&layers.Ethernet{SrcMAC: own, DstMAC: bcast, EthernetType: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 0, Type: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 0, Type: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: stranger, DstIP: net.IPv4bcast.To4()},
			gopacket.Payload("rogue")),
		// An IPv6 router advertisement.
		frame(&layers.Ethernet{SrcMAC: own, DstMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6},
			ra, icmp, &layers.ICMPv6RouterAdvertisement{HopLimit: 64, RouterLifetime: 1800}),
	}
}

// frame serializes layers with lengths and checksums filled in, padded
// to Ethernet's minimum.
func frame(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(err) // fixed frames: a failure is a bug in this file
	}
	b := buf.Bytes()
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}
