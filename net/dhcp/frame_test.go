package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"slices"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// frameOpts shape a client frame built by clientFrame.
type frameOpts struct {
	src, dst  net.IP
	dstPort   layers.UDPPort
	vlan      bool
	ipOptions bool
	fragment  bool
	srcMAC    net.HardwareAddr // the frame's source; default the message's chaddr
}

// clientFrame wraps a DHCP message in Ethernet/IPv4/UDP the way a guest's
// DHCP client does, using gopacket so the test does not share code with
// the parser under test.
func clientFrame(t testing.TB, m *dhcpv4.DHCPv4, o frameOpts) []byte {
	t.Helper()
	if o.src == nil {
		o.src = net.IPv4zero
	}
	if o.dst == nil {
		o.dst = net.IPv4bcast
	}
	if o.dstPort == 0 {
		o.dstPort = serverPort
	}
	src := m.ClientHWAddr
	if len(src) != 6 {
		src = mac(99)
	}
	if o.srcMAC != nil {
		src = o.srcMAC
	}
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: o.src, DstIP: o.dst}
	if o.ipOptions {
		ip4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	}
	if o.fragment {
		ip4.Flags = layers.IPv4MoreFragments
	}
	udp := &layers.UDP{SrcPort: clientPort, DstPort: o.dstPort}
	udp.SetNetworkLayerForChecksum(ip4)
	ls := []gopacket.SerializableLayer{eth, ip4, udp, gopacket.Payload(m.ToBytes())}
	if o.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append([]gopacket.SerializableLayer{eth, &layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4}}, ls[1:]...)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checksum is the Internet checksum (RFC 1071) of b with initial sum.
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// parseReply checks a reply frame byte by byte, independently of gopacket:
// Ethernet, a 20-byte IPv4 header with a valid checksum, UDP 67->68 with a
// valid checksum over the pseudo-header, and a DHCP message.
func parseReply(t testing.TB, f []byte, serverMAC net.HardwareAddr) (dst net.HardwareAddr, src, dstIP net.IP, m *dhcpv4.DHCPv4) {
	t.Helper()
	if len(f) < 14+20+8 {
		t.Fatalf("reply of %d bytes", len(f))
	}
	if !bytes.Equal(f[6:12], serverMAC) || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		t.Fatalf("ethernet header % x", f[:14])
	}
	ipb := f[14:]
	if ipb[0] != 0x45 || ipb[9] != 17 {
		t.Fatalf("ip header % x", ipb[:20])
	}
	if checksum(0, ipb[:20]) != 0xffff {
		t.Fatalf("bad IPv4 header checksum % x", ipb[:20])
	}
	total := int(binary.BigEndian.Uint16(ipb[2:4]))
	if total != len(ipb) {
		t.Fatalf("IPv4 total length %d, frame carries %d", total, len(ipb))
	}
	u := ipb[20:total]
	if binary.BigEndian.Uint16(u[0:2]) != serverPort || binary.BigEndian.Uint16(u[2:4]) != clientPort {
		t.Fatalf("udp ports % x", u[:4])
	}
	if int(binary.BigEndian.Uint16(u[4:6])) != len(u) {
		t.Fatalf("udp length %d, have %d", binary.BigEndian.Uint16(u[4:6]), len(u))
	}
	pseudo := uint32(binary.BigEndian.Uint16(ipb[12:14])) + uint32(binary.BigEndian.Uint16(ipb[14:16])) +
		uint32(binary.BigEndian.Uint16(ipb[16:18])) + uint32(binary.BigEndian.Uint16(ipb[18:20])) + 17 + uint32(len(u))
	if binary.BigEndian.Uint16(u[6:8]) == 0 || checksum(pseudo, u) != 0xffff {
		t.Fatalf("bad UDP checksum %#04x", binary.BigEndian.Uint16(u[6:8]))
	}
	m, err := dhcpv4.FromBytes(u[8:])
	if err != nil {
		t.Fatalf("reply payload: %v", err)
	}
	return net.HardwareAddr(f[0:6]), net.IP(ipb[12:16]), net.IP(ipb[16:20]), m
}

func TestHandleFrame(t *testing.T) {
	bcastMAC := "ff:ff:ff:ff:ff:ff"
	tests := []struct {
		name    string
		msg     func(t testing.TB) *dhcpv4.DHCPv4
		opts    frameOpts
		outLen  int
		wantOK  bool
		want    dhcpv4.MessageType
		dstMAC  string
		dstIP   string
		prepare bool // run a DORA for mac(1) first
	}{
		{name: "discover", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) },
			wantOK: true, want: dhcpv4.MessageTypeOffer, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "discover with broadcast flag", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, dhcpv4.WithBroadcast(true)) },
			wantOK: true, want: dhcpv4.MessageTypeOffer, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "discover with IP options", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, opts: frameOpts{ipOptions: true},
			wantOK: true, want: dhcpv4.MessageTypeOffer, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "selecting request", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return selecting(t, 1, "10.20.0.10") },
			wantOK: true, want: dhcpv4.MessageTypeAck, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "renewal is unicast", prepare: true, msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip("10.20.0.10")))
		}, opts: frameOpts{src: ip("10.20.0.10"), dst: router},
			wantOK: true, want: dhcpv4.MessageTypeAck, dstMAC: mac(1).String(), dstIP: "10.20.0.10"},
		{name: "renewal asking for broadcast", prepare: true, msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip("10.20.0.10")), dhcpv4.WithBroadcast(true))
		}, wantOK: true, want: dhcpv4.MessageTypeAck, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "NAK is broadcast", prepare: true, msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 2, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip("10.20.0.10")))
		}, opts: frameOpts{src: ip("10.20.0.10"), dst: router},
			wantOK: true, want: dhcpv4.MessageTypeNak, dstMAC: bcastMAC, dstIP: "255.255.255.255"},
		{name: "inform is unicast", msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(ip("10.20.0.99")))
		}, wantOK: true, want: dhcpv4.MessageTypeAck, dstMAC: mac(1).String(), dstIP: "10.20.0.99"},
		{name: "request for another server", msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip("10.20.0.2"))), requested("10.20.0.10"))
		}},
		{name: "release gets no answer", prepare: true, msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(ip("10.20.0.10")))
		}},
		{name: "vlan tagged", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, opts: frameOpts{vlan: true}},
		{name: "other udp port", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, opts: frameOpts{dstPort: 53}},
		{name: "fragment", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, opts: frameOpts{fragment: true}},
		{name: "relayed", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, dhcpv4.WithRelay(ip("10.20.0.5"))) }},
		{name: "server message from a guest", msg: func(t testing.TB) *dhcpv4.DHCPv4 {
			return msg(t, 1, dhcpv4.MessageTypeOffer)
		}},
		{name: "out too small", msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, outLen: 300},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(newClock())
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.prepare {
				s.Handle(discover(t, 1))
				s.Handle(selecting(t, 1, "10.20.0.10"))
			}
			req := tc.msg(t)
			in := clientFrame(t, req, tc.opts)
			out := make([]byte, 1514)
			if tc.outLen > 0 {
				out = out[:tc.outLen]
			}
			n, ok := s.HandleFrame(in, out)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if !ok {
				if n != 0 {
					t.Fatalf("n = %d with ok false", n)
				}
				return
			}
			dst, src, dstIP, m := parseReply(t, out[:n], cfg.ServerMAC)
			if dst.String() != tc.dstMAC || dstIP.String() != tc.dstIP || !src.Equal(router) {
				t.Errorf("reply %s -> %s/%s, want %s -> %s/%s", src, dst, dstIP, router, tc.dstMAC, tc.dstIP)
			}
			if m.MessageType() != tc.want || m.TransactionID != req.TransactionID {
				t.Errorf("reply %s xid %s, want %s xid %s", m.MessageType(), m.TransactionID, tc.want, req.TransactionID)
			}
		})
	}
}

// TestHandleFrameTruncated cuts a valid DISCOVER frame at every length.
func TestHandleFrameTruncated(t *testing.T) {
	s, err := New(baseConfig(newClock()))
	if err != nil {
		t.Fatal(err)
	}
	full := clientFrame(t, discover(t, 1), frameOpts{})
	out := make([]byte, 1514)
	for i := 0; i < len(full); i++ {
		if _, ok := s.HandleFrame(full[:i], out); ok && i < 14+20+8+236+4 {
			t.Errorf("answered a frame cut to %d bytes (before the magic cookie)", i)
		}
	}
	if _, ok := s.HandleFrame(full, out); !ok {
		t.Error("the whole frame got no answer")
	}
}

func TestHandleFrameRejectDoesNotAllocate(t *testing.T) {
	s, err := New(baseConfig(newClock()))
	if err != nil {
		t.Fatal(err)
	}
	dns := clientFrame(t, discover(t, 1), frameOpts{dstPort: 53})
	out := make([]byte, 1514)
	if a := testing.AllocsPerRun(100, func() { s.HandleFrame(dns, out) }); a != 0 {
		t.Errorf("rejecting a non-DHCP frame allocates %v times", a)
	}
}

func FuzzHandleFrame(f *testing.F) {
	cfg := baseConfig(newClock())
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(clientFrame(f, discover(f, 1), frameOpts{}))
	out := make([]byte, 1514)
	const sentinel = 0xa5
	f.Fuzz(func(t *testing.T, in []byte) {
		for i := range out {
			out[i] = sentinel
		}
		n, ok := s.HandleFrame(in, out)
		if !ok {
			if n != 0 {
				t.Fatalf("n = %d with ok false", n)
			}
			if slices.ContainsFunc(out, func(b byte) bool { return b != sentinel }) {
				t.Fatal("out written although no reply was made")
			}
			return
		}
		// The reply is exactly n bytes: its IPv4 total length says
		// so, and nothing after it was written.
		if n < ethHeader+20 {
			t.Fatalf("reply of %d bytes", n)
		}
		if l := ethHeader + int(binary.BigEndian.Uint16(out[ethHeader+2:])); l != n {
			t.Fatalf("reply of %d bytes whose IPv4 header says %d", n, l)
		}
		if slices.ContainsFunc(out[n:], func(b byte) bool { return b != sentinel }) {
			t.Fatalf("bytes beyond the %d-byte reply were written", n)
		}
		parseReply(t, out[:n], cfg.ServerMAC)
	})
}

func BenchmarkHandleFrame(b *testing.B) {
	s, err := New(baseConfig(newClock()))
	if err != nil {
		b.Fatal(err)
	}
	out := make([]byte, 1514)
	for _, bc := range []struct {
		name string
		in   []byte
	}{
		{"not-dhcp", clientFrame(b, discover(b, 1), frameOpts{dstPort: 53})},
		{"discover", clientFrame(b, discover(b, 1), frameOpts{})},
		{"request", clientFrame(b, selecting(b, 1, "10.20.0.10"), frameOpts{})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				s.HandleFrame(bc.in, out)
			}
		})
	}
}
