package vswitch

import (
	"encoding/binary"
	"math/bits"
)

// minGSOSize is the smallest segment size software segmentation accepts:
// below it a hostile sender could make one 64 KiB frame cost thousands of
// deliveries. Linux never goes below TCP_MIN_MSS (88).
const minGSOSize = 64

// maxSegDebt bounds the segments a port owes its transmit limit: more than
// any bucket holds, so the debt always costs a full refill.
const maxSegDebt = 1 << 20

// TCP flags segmentation adjusts.
const (
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpCWR = 0x80
)

// csumAdd adds b, as big-endian 16-bit words from an even offset, to a
// ones' complement sum kept in 64 bits (fold it with csumFold).
func csumAdd(sum uint64, b []byte) uint64 {
	var c uint64
	for len(b) >= 32 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[0:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[8:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[16:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) > 0 {
		var t [8]byte
		copy(t[:], b) // an odd last byte is the high half of its word
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(t[:]), c)
	}
	sum, c = bits.Add64(sum, 0, c)
	return sum + c // end-around carry; cannot overflow again
}

// csumFold folds a 64-bit ones' complement sum to 16 bits (2^16 ≡ 1
// modulo 0xffff, so halves can be added).
func csumFold(sum uint64) uint16 {
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>16 + sum&0xffff
	sum = sum>>16 + sum&0xffff
	sum = sum>>16 + sum&0xffff
	return uint16(sum)
}

// checksumSegs is the Internet checksum of bytes [from, to) of segs, viewed
// as one buffer, as the value to store: what a NIC computes for a
// NEEDS_CSUM frame (the field already holds the pseudo-header sum). A
// result of 0 is stored as 0xffff, which means the same and which UDP
// requires.
func checksumSegs(segs [][]byte, from, to int) uint16 {
	return csumStore(csumPartial1(segs, from, to, from))
}

// csumPartial1 is the one's-complement sum of bytes [from, to) of segs,
// viewed as one buffer, aligned as if the checksummed range began at
// base: a piece that starts an odd number of bytes after base is summed
// byte-swapped. Sums of adjacent ranges with the same base add up.
func csumPartial1(segs [][]byte, from, to, base int) uint64 {
	var sum uint64
	pos := 0 // offset of sg in the buffer
	for _, sg := range segs {
		if pos >= to {
			break
		}
		sum += csumPartial(sg, from-pos, to-pos, base-pos)
		pos += len(sg)
	}
	return sum
}

// csumPartial is csumPartial1 for one buffer b; the range is clipped to
// it.
func csumPartial(b []byte, from, to, base int) uint64 {
	lo, hi := max(from, 0), min(to, len(b))
	if lo >= hi {
		return 0
	}
	part := csumFold(csumAdd(0, b[lo:hi]))
	if (lo-base)&1 != 0 {
		part = bits.ReverseBytes16(part) // this piece starts mid-word
	}
	return uint64(part)
}

// csumStore folds a one's-complement sum into the value to store (0
// stored as 0xffff).
func csumStore(sum uint64) uint16 {
	if v := ^csumFold(sum); v != 0 {
		return v
	}
	return 0xffff
}

// segment does TCP segmentation in software, for a GSO frame to a receiver
// that does not accept it: each segment gets copies of the headers with
// the IP length, IPv4 id and checksum, TCP sequence number, flags and
// checksum fixed, and is delivered as an ordinary frame.
func (s *sender) segment(d *Port, f *frameRef, nw *Network) bool {
	malformed := func() bool {
		if f.from != nil {
			f.from.drop(DropMalformed)
		}
		return false
	}
	if f.hdr.gsoSize < minGSOSize {
		return malformed()
	}
	// The untagged frame, contiguous.
	buf := s.bigBuf()
	n := f.ethLen()
	f.gather(buf[:12], HeaderLen)
	f.gather(buf[12:n], HeaderLen+12+f.tagLen)
	fr := buf[:n]

	var l4 int
	v4 := false
	switch binary.BigEndian.Uint16(fr[12:]) {
	case etherTypeIPv4:
		if f.hdr.gsoType&^gsoECN != gsoTCPv4 || n < ethHeaderLen+20 {
			return malformed()
		}
		ihl := int(fr[ethHeaderLen]&0x0f) * 4
		if fr[ethHeaderLen]>>4 != 4 || ihl < 20 || fr[ethHeaderLen+9] != protoTCP {
			return malformed()
		}
		l4, v4 = ethHeaderLen+ihl, true
	case etherTypeIPv6:
		// Extension headers before TCP are not supported: Linux puts
		// none there on the TSO path.
		if f.hdr.gsoType&^gsoECN != gsoTCPv6 || n < ethHeaderLen+40 || fr[ethHeaderLen+6] != protoTCP {
			return malformed()
		}
		l4 = ethHeaderLen + 40
	default:
		return malformed()
	}
	if n < l4+20 {
		return malformed()
	}
	doff := int(fr[l4+12]>>4) * 4
	if doff < 20 || n < l4+doff {
		return malformed()
	}
	hlen := l4 + doff
	payload := fr[hlen:]
	mss := int(f.hdr.gsoSize)
	seq := binary.BigEndian.Uint32(fr[l4+4:])
	ipID := binary.BigEndian.Uint16(fr[ethHeaderLen+4:])
	flags := fr[l4+13]

	// The segments are packets the limits were not charged for: the
	// sender and the receiver were charged one for the whole frame (the
	// receiver in deliver). The sender's next frame pays for the rest
	// (segDebt); the receiver's limit drops segments beyond its tokens.
	if nseg := (len(payload) + mss - 1) / mss; nseg > 1 && f.from != nil && f.from.txLimit.Load() != nil {
		if f.from.segDebt.Add(uint64(nseg-1)) > maxSegDebt {
			f.from.segDebt.Store(maxSegDebt)
		}
	}
	if s.seg == nil {
		s.seg = make([]byte, HeaderLen+maxFrame)
	}
	out := false
	rxLimit := d.rxLimit.Load()
	for off, i := 0, 0; ; off, i = off+mss, i+1 {
		end := min(off+mss, len(payload))
		if i > 0 && rxLimit != nil && !rxLimit.Consume(1, 0) {
			d.drop(DropRateLimit)
			if end >= len(payload) {
				break
			}
			continue
		}
		seg := s.seg[:HeaderLen+hlen+end-off]
		clear(seg[:HeaderLen])
		e := seg[HeaderLen:]
		copy(e, fr[:hlen])
		copy(e[hlen:], payload[off:end])
		ip, tcp := e[ethHeaderLen:], e[l4:]
		if v4 {
			binary.BigEndian.PutUint16(ip[2:], uint16(len(e)-ethHeaderLen))
			binary.BigEndian.PutUint16(ip[4:], ipID+uint16(i))
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], ^csumFold(csumAdd(0, ip[:l4-ethHeaderLen])))
		} else {
			binary.BigEndian.PutUint16(ip[4:], uint16(len(e)-l4))
		}
		binary.BigEndian.PutUint32(tcp[4:], seq+uint32(off))
		fl := flags
		if end < len(payload) {
			fl &^= tcpFIN | tcpPSH
		}
		if i > 0 {
			fl &^= tcpCWR
		}
		tcp[13] = fl
		tcp[16], tcp[17] = 0, 0
		binary.BigEndian.PutUint16(tcp[16:], tcpChecksum(ip, tcp, v4))

		s.segSegs[0] = seg
		sf := frameRef{segs: s.segSegs[:], size: len(seg), from: f.from}
		if s.deliverOne(d, &sf, nw, offloads{}) {
			out = true
		}
		if end >= len(payload) {
			break
		}
	}
	s.segSegs[0] = nil
	return out
}

// tcpChecksum is the full TCP checksum of a segment with the pseudo-header
// of its IPv4 or IPv6 header; tcp runs to the end of the packet.
func tcpChecksum(ip, tcp []byte, v4 bool) uint16 {
	var sum uint64
	if v4 {
		sum = csumAdd(sum, ip[12:20])
	} else {
		sum = csumAdd(sum, ip[8:40])
	}
	var ph [4]byte
	binary.BigEndian.PutUint16(ph[0:], protoTCP)
	binary.BigEndian.PutUint16(ph[2:], uint16(len(tcp)))
	sum = csumAdd(sum, ph[:])
	sum = csumAdd(sum, tcp)
	return ^csumFold(sum)
}
