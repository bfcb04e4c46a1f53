package vswitch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func withHdr(h netHdr, frame []byte) []byte {
	b := make([]byte, HeaderLen, HeaderLen+len(frame))
	h.encode(b)
	return append(b, frame...)
}

func TestParseFrame(t *testing.T) {
	ip1, ip2 := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	dhcp := udp4(bcast(), mac(macA), [4]byte{}, [4]byte{255, 255, 255, 255}, 68, 67, make([]byte, 240))
	withOpts := udp4(mac(macB), mac(macA), ip1, ip2, 5, 6, nil)
	withOpts[ethHeaderLen] = 0x46 // IHL 6: the UDP header moves 4 bytes (into the old payload)
	withOpts = append(withOpts, 0, 0, 0, 0)
	frag := udp4(mac(macB), mac(macA), ip1, ip2, 67, 68, nil)
	frag[ethHeaderLen+7] = 8 // fragment offset 8: no UDP header here
	for _, tc := range []struct {
		name  string
		buf   []byte
		err   error
		check func(t *testing.T, fi *frameInfo)
	}{
		{"empty", nil, errShort, nil},
		{"header only", make([]byte, HeaderLen), errShort, nil},
		{"13-byte frame", withHdr(netHdr{}, make([]byte, 13)), errShort, nil},
		{"multicast source", withHdr(netHdr{}, ether(bcast(), bcast(), 0x88b5, nil)), errGroupSrc, nil},
		{"minimal", withHdr(netHdr{}, ether(mac(macB), mac(macA), 0x88b5, nil)), nil, func(t *testing.T, fi *frameInfo) {
			if fi.dst != macKey(mac(macB)) || fi.src != macKey(mac(macA)) || fi.etherType != 0x88b5 || fi.tagged {
				t.Errorf("%+v", fi)
			}
		}},
		{"tag cut short", withHdr(netHdr{}, ether(mac(macB), mac(macA), etherTypeVLAN, []byte{0})), errShort, nil},
		{"tagged", withHdr(netHdr{}, tagged(0xfff&1234, dhcp)), nil, func(t *testing.T, fi *frameInfo) {
			if !fi.tagged || fi.vid != 1234 || !fi.udp || fi.sport != 68 || fi.dport != 67 || fi.l3 != 18 {
				t.Errorf("%+v", fi)
			}
		}},
		{"dhcp", withHdr(netHdr{}, dhcp), nil, func(t *testing.T, fi *frameInfo) {
			if !fi.ipv4 || !fi.udp || fi.src4 != [4]byte{} || fi.dport != 67 || fi.length != len(dhcp) {
				t.Errorf("%+v", fi)
			}
		}},
		{"IPv4 options", withHdr(netHdr{}, withOpts), nil, func(t *testing.T, fi *frameInfo) {
			if fi.sport != 8 || fi.dport != 0 || fi.src4 != ip1 { // read after the options: the old length and checksum
				t.Errorf("%+v", fi)
			}
		}},
		{"later fragment", withHdr(netHdr{}, frag), nil, func(t *testing.T, fi *frameInfo) {
			if fi.udp || !fi.ipv4 {
				t.Errorf("a non-first fragment was parsed as UDP: %+v", fi)
			}
		}},
		{"IPv4 truncated", withHdr(netHdr{}, dhcp[:ethHeaderLen+19]), errIPv4, nil},
		{"IPv4 bad IHL", withHdr(netHdr{}, append(append([]byte(nil), dhcp[:ethHeaderLen]...), 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), errIPv4, nil},
		{"UDP truncated", withHdr(netHdr{}, dhcp[:ethHeaderLen+24]), errUDP, nil},
		{"ARP", withHdr(netHdr{}, arp(bcast(), mac(macA), ip1, ip2)), nil, func(t *testing.T, fi *frameInfo) {
			if !fi.arp || fi.src4 != ip1 {
				t.Errorf("%+v", fi)
			}
		}},
		{"ARP truncated", withHdr(netHdr{}, arp(bcast(), mac(macA), ip1, ip2)[:ethHeaderLen+20]), errARP, nil},
		{"csum beyond frame", withHdr(netHdr{flags: hdrNeedsCsum, csumStart: 14, csumOffset: 100}, dhcp[:60]), errCsum, nil},
		{"csum inside Ethernet header", withHdr(netHdr{flags: hdrNeedsCsum, csumStart: 4, csumOffset: 6}, dhcp), errCsum, nil},
		{"gso without size", withHdr(netHdr{gsoType: gsoTCPv4}, dhcp), errGSO, nil},
		{"gso UDP", withHdr(netHdr{gsoType: 3, gsoSize: 100}, dhcp), errGSO, nil},
		{"too long", withHdr(netHdr{}, ether(mac(macB), mac(macA), 0x88b5, make([]byte, maxFrame))), errLong, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fi frameInfo
			b := tc.buf[:min(len(tc.buf), prefixLen)]
			err := parseFrame(b, len(tc.buf), &fi)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if tc.check != nil {
				tc.check(t, &fi)
			}
		})
	}
}

// FuzzParseFrame feeds arbitrary header+frame bytes, split into
// descriptor-like pieces, through the parser and then through delivery to
// receivers that need software checksums and segmentation, a trunk and an
// offloading port: nothing may panic, and whatever is delivered must be
// exactly as long as the frame says.
func FuzzParseFrame(f *testing.F) {
	f.Add(byte(0), withHdr(netHdr{}, udp4(bcast(), mac(macA), [4]byte{}, [4]byte{255, 255, 255, 255}, 68, 67, make([]byte, 20))))
	f.Add(byte(3), withHdr(netHdr{}, arp(bcast(), mac(macA), [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8})))
	f.Add(byte(7), withHdr(netHdr{}, tagged(10, ether(bcast(), mac(macA), 0x88b5, make([]byte, 46)))))
	f.Add(byte(2), withHdr(netHdr{}, stacked(0, 10, udp4(bcast(), mac(macA), [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 67, 68, nil))))
	f.Add(byte(4), withHdr(netHdr{}, ipv6Frame(bcast(), mac(macA), linkLocal(mac(macA)), netip.MustParseAddr("ff02::1"), 0,
		[]byte{58, 0, 5, 2, 0, 0, 1, 0, 134, 0, 0, 0, 0, 0, 0, 0})))
	f.Add(byte(6), withHdr(netHdr{}, ipv6Frame(bcast(), mac(macA), linkLocal(mac(macA)), netip.MustParseAddr("ff02::1"), 58,
		icmp6(136, nd(linkLocal(mac(macA)), 2, mac(macA))))))
	for _, v6 := range []bool{false, true} {
		frame, l4 := tcpFrame(v6, bcast(), mac(macA), make([]byte, 300), tcpPSH)
		gso := uint8(gsoTCPv4)
		if v6 {
			gso = gsoTCPv6
		}
		f.Add(byte(5), withHdr(netHdr{flags: hdrNeedsCsum, gsoType: gso, gsoSize: 100, csumStart: uint16(l4), csumOffset: 16}, frame))
		f.Add(byte(1), withHdr(netHdr{flags: hdrNeedsCsum, csumStart: uint16(l4), csumOffset: 16}, frame))
	}
	f.Fuzz(func(t *testing.T, split byte, data []byte) {
		// Split data the way a descriptor chain might.
		var segs [][]byte
		step := int(split%17) + 1
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			segs = append(segs, rest[:n])
			rest = rest[n:]
			step = step*3%29 + 1
		}
		var pre [prefixLen]byte
		n := gather(pre[:min(len(data), prefixLen)], segs, 0)
		if !bytes.Equal(pre[:n], data[:n]) {
			t.Fatal("gather disagrees with the input")
		}
		var fi frameInfo
		if err := parseFrame(pre[:n], len(data), &fi); err != nil {
			return
		}
		if fi.length != len(data)-HeaderLen || fi.l3 > fi.length {
			t.Fatalf("inconsistent info %+v for %d bytes", fi, len(data))
		}
		// Deliver it in software to ports that take no offloads.
		sw := New(Options{})
		defer sw.Close()
		native, _ := sw.AddNetwork("n", 0)
		tagNet, _ := sw.AddNetwork("t", 10)
		soft, kern := newFakeFrames(), newFakeFrames()
		sp, _ := sw.AddFramePort("soft", soft, FrameConfig{Networks: []*Network{native, tagNet}, Trunk: true, Batch: 1})
		kp, _ := sw.AddFramePort("kern", kern, FrameConfig{Networks: []*Network{native, tagNet}, Trunk: true, Offload: true, Batch: 1})
		s := newSender(sw)
		fr := frameRef{segs: segs, size: len(data), hdr: fi.hdr}
		if fi.tagged {
			fr.tagLen = vlanTagLen
		}
		ethLen := len(data) - HeaderLen - fr.tagLen
		for _, nw := range []*Network{native, tagNet} {
			tagOut := 0
			if nw.vlan != 0 {
				tagOut = vlanTagLen
			}
			for _, p := range []*Port{sp.Port, kp.Port} {
				ok := s.deliver(p, &fr, nw, true)
				ff := soft
				if p == kp.Port {
					ff = kern
				}
				outs := ff.drain()
				if !ok {
					if len(outs) != 0 {
						t.Fatalf("%s: delivery failed but %d buffers came out", p.name, len(outs))
					}
					continue
				}
				// Every buffer carries the network's tag (and no
				// other) after the addresses.
				for _, out := range outs {
					if len(out) < HeaderLen+ethHeaderLen+tagOut {
						t.Fatalf("%s: delivered a %d-byte buffer", p.name, len(out))
					}
					isTagged := binary.BigEndian.Uint16(out[HeaderLen+12:]) == etherTypeVLAN
					if tagOut != 0 && (!isTagged || binary.BigEndian.Uint16(out[HeaderLen+14:]) != nw.vlan) {
						t.Fatalf("%s: frame to VLAN %d without its tag: %x", p.name, nw.vlan, out[:HeaderLen+18])
					}
				}
				// A frame delivered whole is exactly as long as
				// the frame said, its ingress tag replaced by the
				// egress one.
				if p == kp.Port || fi.hdr.gsoType == gsoNone {
					if len(outs) != 1 || len(outs[0]) != HeaderLen+ethLen+tagOut {
						t.Fatalf("%s: %d buffers, first %d bytes; want one of %d", p.name, len(outs), len(outs[0]), HeaderLen+ethLen+tagOut)
					}
					continue
				}
				// Segments: the same headers (H bytes) on each,
				// gso_size bytes of payload but the last, and the
				// payloads adding up to the frame's.
				k := len(outs)
				sum := 0
				for _, out := range outs {
					sum += len(out) - HeaderLen - tagOut
				}
				if k == 1 {
					if sum != ethLen {
						t.Fatalf("one segment of %d bytes from a %d-byte frame", sum, ethLen)
					}
					continue
				}
				if (sum-ethLen)%(k-1) != 0 {
					t.Fatalf("%d segments of %d bytes in all cannot come from a %d-byte frame", k, sum, ethLen)
				}
				h := (sum - ethLen) / (k - 1)
				for i, out := range outs {
					pl := len(out) - HeaderLen - tagOut - h
					if pl <= 0 || pl > int(fi.hdr.gsoSize) || (i < k-1 && pl != int(fi.hdr.gsoSize)) {
						t.Fatalf("segment %d of %d carries %d bytes of payload (gso_size %d, headers %d)", i, k, pl, fi.hdr.gsoSize, h)
					}
				}
			}
		}
	})
}
