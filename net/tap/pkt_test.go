package tap

import (
	"encoding/binary"
	"net"
)

// Hand-built frames for the tests: small enough to read, and independent of
// the code under test.

const (
	hdrFlagNeedsCsum = 1
	gsoTCPv4         = 1
)

var (
	kernelMAC = net.HardwareAddr{0x02, 0x68, 0x72, 0x00, 0x00, 0x01}
	peerMAC   = net.HardwareAddr{0x02, 0x68, 0x72, 0x00, 0x00, 0x02}
	kernelIP  = net.IPv4(198, 18, 0, 1).To4()
	peerIP    = net.IPv4(198, 18, 0, 2).To4()
)

// withHdr prefixes a zero virtio_net_hdr_v1 to an Ethernet frame.
func withHdr(hdr [HdrLen]byte, frame []byte) []byte {
	return append(hdr[:], frame...)
}

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b, dst)
	copy(b[6:], src)
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(b, payload...)
}

func arpRequest(srcMAC net.HardwareAddr, srcIP, dstIP net.IP) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(p[2:], 0x0800) // IPv4
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], 1) // request
	copy(p[8:], srcMAC)
	copy(p[14:], srcIP)
	copy(p[24:], dstIP)
	return ether(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, srcMAC, 0x0806, p)
}

// csum is the Internet checksum's ones'-complement sum, folded, not inverted.
func csum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum
}

func ipv4(proto byte, src, dst net.IP, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
	h[8] = 64
	h[9] = proto
	copy(h[12:], src)
	copy(h[16:], dst)
	binary.BigEndian.PutUint16(h[10:], ^uint16(csum(0, h)))
	return append(h, payload...)
}

func icmpEcho(id, seq uint16, data []byte) []byte {
	p := make([]byte, 8, 8+len(data))
	p[0] = 8
	binary.BigEndian.PutUint16(p[4:], id)
	binary.BigEndian.PutUint16(p[6:], seq)
	p = append(p, data...)
	binary.BigEndian.PutUint16(p[2:], ^uint16(csum(0, p)))
	return p
}

type tcpSeg struct {
	sport, dport uint16
	seq, ack     uint32
	flags        byte
	mss          uint16 // 0: no option
	data         []byte
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// tcp builds a TCP segment. With partial set, the checksum field holds only
// the pseudo-header sum, to be completed by whoever honours NEEDS_CSUM;
// otherwise it is complete.
func tcp(s tcpSeg, src, dst net.IP, partial bool) []byte {
	hl := 20
	if s.mss != 0 {
		hl = 24
	}
	p := make([]byte, hl, hl+len(s.data))
	binary.BigEndian.PutUint16(p[0:], s.sport)
	binary.BigEndian.PutUint16(p[2:], s.dport)
	binary.BigEndian.PutUint32(p[4:], s.seq)
	binary.BigEndian.PutUint32(p[8:], s.ack)
	p[12] = byte(hl/4) << 4
	p[13] = s.flags
	binary.BigEndian.PutUint16(p[14:], 65535)
	if s.mss != 0 {
		p[20], p[21] = 2, 4
		binary.BigEndian.PutUint16(p[22:], s.mss)
	}
	p = append(p, s.data...)
	pseudo := make([]byte, 12)
	copy(pseudo, src)
	copy(pseudo[4:], dst)
	pseudo[9] = 6
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(p)))
	sum := csum(0, pseudo)
	if partial {
		binary.BigEndian.PutUint16(p[16:], uint16(sum))
	} else {
		binary.BigEndian.PutUint16(p[16:], ^uint16(csum(sum, p)))
	}
	return p
}
