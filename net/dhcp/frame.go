package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

const (
	serverPort = 67
	clientPort = 68
	ethHeader  = 14
)

// HandleFrame looks at an Ethernet frame a VM sent. If it is a DHCP client
// message (untagged IPv4, UDP to port 67) that deserves an answer, the
// reply frame is written into out and ok is true; otherwise ok is false and
// out is untouched, so the switch forwards or drops the frame by its own
// rules. A reply that does not fit out is dropped (ok false).
//
// Every frame from a VM port passes through here, so anything that is not
// DHCP is rejected on a few byte compares without allocating.
func (s *Server) HandleFrame(in []byte, out []byte) (n int, ok bool) {
	if !isDHCPClient(in) {
		return 0, false
	}
	var eth layers.Ethernet
	var ip4 layers.IPv4
	var udp layers.UDP
	df := gopacket.NilDecodeFeedback
	if eth.DecodeFromBytes(in, df) != nil || eth.EthernetType != layers.EthernetTypeIPv4 {
		return 0, false
	}
	if ip4.DecodeFromBytes(eth.Payload, df) != nil || ip4.Protocol != layers.IPProtocolUDP ||
		ip4.Flags&layers.IPv4MoreFragments != 0 || ip4.FragOffset != 0 {
		return 0, false
	}
	if udp.DecodeFromBytes(ip4.Payload, df) != nil || udp.DstPort != serverPort {
		return 0, false
	}
	req, err := dhcpv4.FromBytes(udp.Payload)
	if err != nil {
		return 0, false
	}
	if !req.GatewayIPAddr.IsUnspecified() && req.GatewayIPAddr != nil {
		// Relayed requests cannot come from a VM port on this network.
		return 0, false
	}
	// The client is its hardware address, and the switch locks a port to
	// its MAC: a message naming another chaddr speaks for someone else
	// (RELEASE or DECLINE of a neighbour's lease). The switch's port
	// security drops these from VM ports already; this holds for the
	// host port and any other caller.
	if !bytes.Equal(req.ClientHWAddr, eth.SrcMAC) {
		s.spoofed.Add(1)
		return 0, false
	}
	resp, err := s.Handle(req)
	if err != nil || resp == nil {
		return 0, false
	}
	return s.frame(out, eth.SrcMAC, req, resp)
}

// isDHCPClient is the allocation-free pre-filter: Ethernet type IPv4
// (untagged), IPv4 protocol UDP, UDP destination port 67.
func isDHCPClient(in []byte) bool {
	if len(in) < ethHeader+20+8 || binary.BigEndian.Uint16(in[12:14]) != 0x0800 {
		return false
	}
	ip := in[ethHeader:]
	if ip[0]>>4 != 4 || ip[9] != 17 {
		return false
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl+8 {
		return false
	}
	return binary.BigEndian.Uint16(ip[ihl+2:ihl+4]) == serverPort
}

// frame wraps resp in Ethernet/IPv4/UDP. Destination, per the switch's
// needs rather than a relay's: a client that has an address (ciaddr, i.e.
// renewing or INFORM) is answered by unicast; one without an address, one
// asking for broadcast, and every NAK are answered by broadcast.
func (s *Server) frame(out []byte, src net.HardwareAddr, req, resp *dhcpv4.DHCPv4) (int, bool) {
	if len(s.cfg.ServerMAC) != 6 {
		return 0, false
	}
	dstMAC := layers.EthernetBroadcast
	dstIP := net.IPv4bcast
	ciaddr := addrOf(req.ClientIPAddr)
	if resp.MessageType() != dhcpv4.MessageTypeNak && !req.IsBroadcast() &&
		ciaddr.Is4() && !ciaddr.IsUnspecified() && len(src) == 6 {
		dstMAC = src
		dstIP = req.ClientIPAddr.To4()
	}
	eth := layers.Ethernet{
		SrcMAC:       s.cfg.ServerMAC,
		DstMAC:       dstMAC,
		EthernetType: layers.EthernetTypeIPv4,
	}
	ip4 := layers.IPv4{
		Version:  4,
		TTL:      64,
		Protocol: layers.IPProtocolUDP,
		SrcIP:    net.IP(s.cfg.Router.AsSlice()),
		DstIP:    dstIP,
	}
	udp := layers.UDP{SrcPort: serverPort, DstPort: clientPort}
	if err := udp.SetNetworkLayerForChecksum(&ip4); err != nil {
		return 0, false
	}
	buf := gopacket.NewSerializeBufferExpectedSize(ethHeader+20+8, 0)
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, &eth, &ip4, &udp, gopacket.Payload(resp.ToBytes())); err != nil {
		return 0, false
	}
	b := buf.Bytes()
	if len(b) > len(out) {
		return 0, false
	}
	return copy(out, b), true
}
