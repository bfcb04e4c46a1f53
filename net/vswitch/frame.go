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

	// prefixLen is how much of a frame (header included) parseFrame needs:
	// the virtio-net header, an 802.1Q-tagged Ethernet header, the longest
	// IPv4 header and a UDP header.
	prefixLen = HeaderLen + ethHeaderLen + vlanTagLen + 60 + 8
)

// Reasons a frame is malformed. They are values, not formatted errors, so
// that dropping a hostile frame costs no allocation.
var (
	errShort     = errors.New("frame shorter than the virtio-net and Ethernet headers")
	errLong      = errors.New("frame longer than 64 KiB")
	errIPv4      = errors.New("truncated or invalid IPv4 header")
	errUDP       = errors.New("truncated UDP header")
	errARP       = errors.New("truncated ARP packet")
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
	vid       uint16 // the tag's VLAN id
	etherType uint16 // after the tag, if any
	l3        int    // offset of the network header in the Ethernet frame

	ipv4   bool    // an IPv4 packet; src4 is its source address
	arp    bool    // an Ethernet/IPv4 ARP packet; src4 is the sender address
	src4   [4]byte // IPv4 source or ARP sender protocol address
	dst4   [4]byte // IPv4 destination
	udp    bool    // an unfragmented-or-first-fragment IPv4 UDP datagram
	sport  uint16  // UDP source port
	dport  uint16  // UDP destination port
	proto  uint8   // IPv4 protocol
	length int     // Ethernet frame length (size - HeaderLen)
}

// macKey turns 6 bytes into an FDB key.
func macKey(b []byte) uint64 {
	_ = b[5]
	return uint64(b[0])<<40 | uint64(b[1])<<32 | uint64(b[2])<<24 | uint64(b[3])<<16 | uint64(b[4])<<8 | uint64(b[5])
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
	}
	if err := checkOffload(&fi.hdr, fi.l3, fi.length); err != nil {
		return err
	}
	switch fi.etherType {
	case etherTypeIPv4:
		return parseIPv4(e, fi)
	case etherTypeARP:
		return parseARP(e, fi)
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
	return nil
}

func parseARP(e []byte, fi *frameInfo) error {
	l3 := fi.l3
	if fi.length < l3+28 || len(e) < l3+28 {
		return errARP
	}
	a := e[l3:]
	// Only Ethernet/IPv4 ARP carries an address a VM could spoof; other
	// hardware or protocol types are ignored by every IPv4 host.
	if binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != etherTypeIPv4 || a[4] != 6 || a[5] != 4 {
		return nil
	}
	fi.arp = true
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
