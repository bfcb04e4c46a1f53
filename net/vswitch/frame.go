package vswitch

import (
	"encoding/binary"
	"errors"
)

// Ethernet and IP constants the switch looks at.
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeVLAN = 0x8100 // 802.1Q
	etherTypeQinQ = 0x88A8 // 802.1ad
	etherTypeIPv6 = 0x86DD

	ethHeaderLen = 14
	vlanTagLen   = 4

	protoTCP = 6
	protoUDP = 17

	portDHCPServer = 67
	portDHCPClient = 68

	// maxFrame bounds an Ethernet frame (without the virtio-net header)
	// the switch accepts: a 64 KiB GSO frame plus its headers and a tag.
	maxFrame = 1<<16 + 128

	// prefixLen is how much of a frame (header included) parseFrame
	// looks at: the virtio-net header, an 802.1Q-tagged Ethernet header
	// and the longest IPv4 header, a UDP header and a DHCP message up to
	// its chaddr (28+6 bytes); that also holds an IPv6 header with 40
	// bytes of extension headers and an ND message with its first option
	// (32 bytes).
	prefixLen = HeaderLen + ethHeaderLen + vlanTagLen + 60 + 8 + 34

	portDHCPv6Server = 547

	protoICMPv6 = 58

	// ICMPv6 types port security looks at.
	icmp6RouterSolicit = 133
	icmp6RouterAdvert  = 134
	icmp6NeighSolicit  = 135
	icmp6NeighAdvert   = 136
	icmp6Redirect      = 137
	icmp6MLDReport     = 131
	icmp6MLDv2Report   = 143
)

// Reasons a frame is malformed. They are values, not formatted errors, so
// that dropping a hostile frame costs no allocation.
var (
	errShort     = errors.New("frame shorter than the virtio-net and Ethernet headers")
	errLong      = errors.New("frame longer than 64 KiB")
	errIPv4      = errors.New("truncated or invalid IPv4 header")
	errUDP       = errors.New("truncated UDP header")
	errARP       = errors.New("truncated ARP packet")
	errIPv6      = errors.New("truncated or invalid IPv6 header")
	errGSO       = errors.New("unsupported or inconsistent GSO request")
	errCsum      = errors.New("checksum offsets outside the frame")
	errGroupSrc  = errors.New("multicast source MAC address")
	errNoNetwork = errors.New("no network for the frame's VLAN")
)

// frameInfo is what the switch needs to know about a frame, read from its
// first bytes. Addresses are kept as integers so the FDB can hash them
// without copying.
type frameInfo struct {
	hdr       netHdr
	dst, src  uint64 // MAC addresses, first octet in the most significant byte
	tagged    bool   // an 802.1Q/802.1ad tag follows the addresses
	stacked   bool   // ... and another tag follows it (the rest is not parsed)
	vid       uint16 // the tag's VLAN id
	etherType uint16 // after the tag, if any
	l3        int    // offset of the network header in the Ethernet frame

	ipv4 bool    // an IPv4 packet; src4 is its source address
	arp  bool    // an ARP packet for IPv4 over 6-byte hardware addresses; src4 and sha are its sender's
	sha  uint64  // ARP sender hardware address
	src4 [4]byte // IPv4 source or ARP sender protocol address
	dst4 [4]byte // IPv4 destination
	udp  bool    // an unfragmented-or-first-fragment IPv4 UDP datagram
	// chaddr is the client hardware address of a DHCP client message
	// (IPv4 UDP from 68 to 67), when hasChaddr.
	chaddr    uint64
	hasChaddr bool

	ipv6 bool     // an IPv6 packet; src6 is its source address
	src6 [16]byte // IPv6 source
	// upper6 says the IPv6 upper-layer header was found within the
	// prefix (proto is its protocol), or that the packet is a later
	// fragment (frag6), which carries none.
	upper6, frag6 bool
	udp6          bool     // an IPv6 UDP datagram (sport, dport)
	icmp6         bool     // an ICMPv6 message of type icmpType
	icmpType      uint8    //
	target6       [16]byte // an NS or NA target address, when hasTarget
	hasTarget     bool     //
	ndLL          uint64   // the link-layer address option of an RS, NS or NA, when hasLL
	hasLL         bool     //

	sport  uint16 // UDP source port
	dport  uint16 // UDP destination port
	proto  uint8  // IPv4 protocol, IPv6 upper-layer protocol
	length int    // Ethernet frame length (size - HeaderLen)
}

// macKey turns 6 bytes into an FDB key.
func macKey(b []byte) uint64 {
	// Two loads (the compiler does not merge six byte loads).
	_ = b[5]
	return uint64(binary.BigEndian.Uint16(b[0:2]))<<32 | uint64(binary.BigEndian.Uint32(b[2:6]))
}

// isGroup reports whether a MAC key is a multicast or broadcast address
// (the I/G bit, the least significant bit of the first octet).
func isGroup(mac uint64) bool { return mac&(1<<40) != 0 }

// parseFrame decodes the virtio-net header and the L2/L3 fields the switch
// needs. b holds the first min(size, prefixLen) bytes of a buffer that is
// size bytes long in total (header plus Ethernet frame), as gathered from
// guest memory. Every length and offset the sender controls is checked;
// the error says what was wrong.
func parseFrame(b []byte, size int, fi *frameInfo) error {
	*fi = frameInfo{}
	if size < HeaderLen+ethHeaderLen || len(b) < HeaderLen+ethHeaderLen {
		return errShort
	}
	if size > HeaderLen+maxFrame {
		return errLong
	}
	fi.length = size - HeaderLen
	fi.hdr.decode(b)
	e := b[HeaderLen:]
	fi.dst = macKey(e[0:6])
	fi.src = macKey(e[6:12])
	if isGroup(fi.src) {
		return errGroupSrc
	}
	fi.etherType = binary.BigEndian.Uint16(e[12:])
	fi.l3 = ethHeaderLen
	if fi.etherType == etherTypeVLAN || fi.etherType == etherTypeQinQ {
		if fi.length < ethHeaderLen+vlanTagLen || len(e) < ethHeaderLen+vlanTagLen {
			return errShort
		}
		fi.tagged = true
		fi.vid = binary.BigEndian.Uint16(e[14:]) & 0x0fff
		fi.etherType = binary.BigEndian.Uint16(e[16:])
		fi.l3 += vlanTagLen
		// A second tag (an outer VID-0 tag, QinQ): whatever follows is
		// hidden from port security, and a trunk would forward the
		// inner tag as the frame's VLAN. VM ports drop these.
		fi.stacked = fi.etherType == etherTypeVLAN || fi.etherType == etherTypeQinQ
	}
	if err := checkOffload(&fi.hdr, fi.l3, fi.length); err != nil {
		return err
	}
	if fi.stacked {
		return nil
	}
	switch fi.etherType {
	case etherTypeIPv4:
		return parseIPv4(e, fi)
	case etherTypeARP:
		return parseARP(e, fi)
	case etherTypeIPv6:
		return parseIPv6(e, fi)
	}
	return nil
}

// checkOffload validates the checksum and GSO requests of a header against
// a frame of length bytes whose network header starts at l3, so that later
// software completion never reads or writes outside the frame.
func checkOffload(h *netHdr, l3, length int) error {
	if h.flags&hdrNeedsCsum != 0 {
		start, off := int(h.csumStart), int(h.csumOffset)
		if start < l3 || start+off+2 > length {
			return errCsum
		}
	}
	if h.gsoType != gsoNone {
		switch h.gsoType &^ gsoECN {
		case gsoTCPv4, gsoTCPv6:
		default:
			return errGSO
		}
		if h.gsoSize == 0 {
			return errGSO
		}
	}
	return nil
}

func parseIPv4(e []byte, fi *frameInfo) error {
	l3 := fi.l3
	if fi.length < l3+20 || len(e) < l3+20 {
		return errIPv4
	}
	ip := e[l3:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || fi.length < l3+ihl {
		return errIPv4
	}
	fi.ipv4 = true
	fi.proto = ip[9]
	copy(fi.src4[:], ip[12:16])
	copy(fi.dst4[:], ip[16:20])
	fragOff := binary.BigEndian.Uint16(ip[6:]) & 0x1fff
	if fi.proto != protoUDP || fragOff != 0 {
		return nil
	}
	// prefixLen covers the longest IPv4 header plus a UDP header, so a
	// frame long enough has them in e.
	l4 := l3 + ihl
	if fi.length < l4+8 || len(e) < l4+8 {
		return errUDP
	}
	fi.udp = true
	fi.sport = binary.BigEndian.Uint16(e[l4:])
	fi.dport = binary.BigEndian.Uint16(e[l4+2:])
	// A DHCP client message names its client in chaddr, at offset 28
	// of the BOOTP message; prefixLen covers it.
	if fi.sport == portDHCPClient && fi.dport == portDHCPServer && fi.length >= l4+8+34 && len(e) >= l4+8+34 {
		fi.chaddr = macKey(e[l4+8+28:])
		fi.hasChaddr = true
	}
	return nil
}

// maxExtHeaders bounds the IPv6 extension headers parseIPv6 follows.
const maxExtHeaders = 4

// parseIPv6 reads the source address and looks for the upper-layer
// header through extension headers (RA guard evasion hides router
// advertisements behind them, RFC 7113). A header beyond the prefix is
// not an error: upper6 stays false and a locked port drops the packet.
func parseIPv6(e []byte, fi *frameInfo) error {
	off := fi.l3
	if fi.length < off+40 || len(e) < off+40 || e[off]>>4 != 6 {
		return errIPv6
	}
	fi.ipv6 = true
	copy(fi.src6[:], e[off+8:off+24])
	nh := e[off+6]
	off += 40
	for range maxExtHeaders {
		switch nh {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if fi.length < off+8 {
				return errIPv6
			}
			if len(e) < off+8 {
				return nil
			}
			nh, off = e[off], off+(int(e[off+1])+1)*8
			continue
		case 44: // fragment
			if fi.length < off+8 {
				return errIPv6
			}
			if len(e) < off+8 {
				return nil
			}
			if binary.BigEndian.Uint16(e[off+2:])&^7 != 0 {
				// A later fragment: the upper-layer header was in
				// the first, which was checked.
				fi.frag6, fi.upper6 = true, true
				return nil
			}
			nh, off = e[off], off+8
			continue
		}
		break
	}
	switch nh {
	case 0, 43, 60, 44:
		return nil // too many extension headers to look through
	case protoICMPv6:
		if fi.length < off+4 {
			return errIPv6
		}
		if len(e) < off+4 {
			return nil
		}
		fi.icmp6, fi.icmpType = true, e[off]
		opt := 0
		switch fi.icmpType {
		case icmp6NeighSolicit, icmp6NeighAdvert:
			if fi.length < off+24 || len(e) < off+24 {
				// Too short for a target: no host accepts it
				// (RFC 4861 7.1), nothing to police.
				break
			}
			copy(fi.target6[:], e[off+8:off+24])
			fi.hasTarget = true
			opt = off + 24
		case icmp6RouterSolicit:
			opt = off + 8
		}
		// The first option, if it is a link-layer address (source 1,
		// target 2, one unit of 8 bytes).
		if opt > 0 && fi.length >= opt+8 && len(e) >= opt+8 && (e[opt] == 1 || e[opt] == 2) && e[opt+1] == 1 {
			fi.ndLL, fi.hasLL = macKey(e[opt+2:]), true
		}
	case protoUDP:
		if fi.length < off+8 {
			return errIPv6
		}
		if len(e) < off+8 {
			return nil
		}
		fi.udp6 = true
		fi.sport = binary.BigEndian.Uint16(e[off:])
		fi.dport = binary.BigEndian.Uint16(e[off+2:])
	}
	fi.upper6, fi.proto = true, nh
	return nil
}

func parseARP(e []byte, fi *frameInfo) error {
	l3 := fi.l3
	if fi.length < l3+28 || len(e) < l3+28 {
		return errARP
	}
	a := e[l3:]
	// Linux takes any ARP packet for IPv4 whose address lengths match
	// the device, whatever its hardware type (arp_process accepts both
	// Ethernet (1) and IEEE 802 (6) on an Ethernet device), so the
	// hardware type is not looked at. Other shapes are ignored by IPv4
	// hosts; a locked port drops them.
	if binary.BigEndian.Uint16(a[2:]) != etherTypeIPv4 || a[4] != 6 || a[5] != 4 {
		return nil
	}
	fi.arp = true
	fi.sha = macKey(a[8:14])
	copy(fi.src4[:], a[14:18])
	return nil
}

// segsLen is the total length of segs.
func segsLen(segs [][]byte) int {
	n := 0
	for _, s := range segs {
		n += len(s)
	}
	return n
}

// gather copies bytes of segs, viewed as one buffer, from offset off into
// dst, and returns how many it copied (fewer than len(dst) at the end).
func gather(dst []byte, segs [][]byte, off int) int {
	n := 0
	for _, s := range segs {
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(dst[n:], s[off:])
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}
