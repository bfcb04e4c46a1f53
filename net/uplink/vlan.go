package uplink

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Offsets in a buffer: v1 header, then the frame.
const (
	hdrFlags     = 0
	hdrLenOff    = 2
	hdrCsumStart = 6

	flagNeedsCsum = 1
	tagLen        = 4
	macsEnd       = HdrLen + 12 // where the EtherType (or a tag) starts
)

// vlanTag finds the PACKET_AUXDATA control message in oob and returns the
// VLAN tag the kernel stripped from the frame, if it did.
func vlanTag(oob []byte) (tpid, tci uint16, ok bool) {
	const (
		hdrSize  = unix.SizeofCmsghdr
		lenSize  = int(unsafe.Sizeof(unix.Cmsghdr{}.Len))
		auxSize  = int(unsafe.Sizeof(unix.TpacketAuxdata{}))
		align    = int(unsafe.Sizeof(uintptr(0)))
		statusAt = 0
		tciAt    = 16
		tpidAt   = 18
	)
	ne := binary.NativeEndian
	for len(oob) >= hdrSize {
		var l int
		if lenSize == 8 {
			l64 := ne.Uint64(oob)
			if l64 > uint64(len(oob)) {
				return 0, 0, false
			}
			l = int(l64)
		} else {
			l = int(ne.Uint32(oob))
		}
		if l < hdrSize || l > len(oob) {
			return 0, 0, false
		}
		level := int32(ne.Uint32(oob[lenSize:]))
		typ := int32(ne.Uint32(oob[lenSize+4:]))
		if level == unix.SOL_PACKET && typ == unix.PACKET_AUXDATA && l >= hdrSize+auxSize {
			aux := oob[hdrSize:l]
			status := ne.Uint32(aux[statusAt:])
			if status&unix.TP_STATUS_VLAN_VALID == 0 {
				return 0, 0, false
			}
			tpid = unix.ETH_P_8021Q
			if status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				if t := ne.Uint16(aux[tpidAt:]); t != 0 {
					tpid = t
				}
			}
			return tpid, ne.Uint16(aux[tciAt:]), true
		}
		step := (l + align - 1) &^ (align - 1)
		if step >= len(oob) {
			break
		}
		oob = oob[step:]
	}
	return 0, 0, false
}

// retag inserts an 802.1Q-style tag (tpid, tci) after the MAC addresses of
// the frame in b[:n] (v1 header first) and shifts the header's offsets to
// match. It reports false when the tag does not fit in b or the offsets
// would overflow; the frame is then unusable.
func retag(b []byte, n int, tpid, tci uint16) (int, bool) {
	if n < macsEnd+2 || n > len(b) || n+tagLen > len(b) {
		return 0, false
	}
	if b[hdrFlags]&flagNeedsCsum != 0 {
		cs := binary.LittleEndian.Uint16(b[hdrCsumStart:])
		if cs > 0xffff-tagLen {
			return 0, false
		}
		binary.LittleEndian.PutUint16(b[hdrCsumStart:], cs+tagLen)
	}
	if hl := binary.LittleEndian.Uint16(b[hdrLenOff:]); hl != 0 {
		if hl > 0xffff-tagLen {
			return 0, false
		}
		binary.LittleEndian.PutUint16(b[hdrLenOff:], hl+tagLen)
	}
	copy(b[macsEnd+tagLen:n+tagLen], b[macsEnd:n])
	binary.BigEndian.PutUint16(b[macsEnd:], tpid)
	binary.BigEndian.PutUint16(b[macsEnd+2:], tci)
	return n + tagLen, true
}
