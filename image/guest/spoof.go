package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// spoofCount is how many frames of each forged kind net-spoof sends.
const spoofCount = 3

// netSpoof sends, from eth0 through an AF_PACKET socket, frames a VM must
// not be able to send: from a MAC that is not its NIC's, from an IPv4
// address it was not leased, and a DHCP server reply. Port security must
// drop every one (the switch counts them); the guest reports what it sent.
func netSpoof(uint64) error {
	l, err := lease()
	if err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: htons(unix.ETH_P_ALL)}
	own := ifc.HardwareAddr
	forgedMAC := net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x01}
	forgedIP := l.ip.Masked().Addr().Next().Next() // .2: not leased to us
	if forgedIP == l.ip.Addr() {
		forgedIP = forgedIP.Next()
	}
	frames := []struct {
		kind string
		b    []byte
	}{
		{"mac", udpFrame(forgedMAC, l.ip.Addr(), 40000, announcePort, "spoofed mac")},
		{"ip", udpFrame(own, forgedIP, 40000, announcePort, "spoofed ip")},
		{"dhcp", udpFrame(own, l.ip.Addr(), 67, 68, "rogue dhcp offer")},
	}
	for _, f := range frames {
		for range spoofCount {
			if err := unix.Sendto(fd, f.b, 0, to); err != nil {
				return fmt.Errorf("send %s frame: %w", f.kind, err)
			}
		}
	}
	fmt.Printf("guest: net spoof sent mac=%d ip=%d dhcp=%d\n", spoofCount, spoofCount, spoofCount)
	return nil
}

// udpFrame is a broadcast IPv4/UDP frame from mac and src.
func udpFrame(mac net.HardwareAddr, src netip.Addr, sport, dport uint16, payload string) []byte {
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IP(src.AsSlice()), DstIP: net.IPv4bcast}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		panic(err) // fixed, well-formed layers
	}
	return buf.Bytes()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
