package vswitch

import (
	"encoding/binary"

	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// virtio-net device feature bits (virtio 1.2 §5.1.3), as masks of the
// 64-bit feature word; the bit number is in the comment.
const (
	FeatureCsum      uint64 = 1 << 0  // VIRTIO_NET_F_CSUM: the driver may send frames with a partial checksum (NEEDS_CSUM)
	FeatureGuestCsum uint64 = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: the driver accepts frames with a partial checksum
	FeatureMTU       uint64 = 1 << 3  // VIRTIO_NET_F_MTU: the config space advertises an MTU
	FeatureMAC       uint64 = 1 << 5  // VIRTIO_NET_F_MAC: the config space holds the NIC's MAC address
	FeatureGuestTSO4 uint64 = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4: the driver accepts TCPv4 GSO frames
	FeatureGuestTSO6 uint64 = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6: the driver accepts TCPv6 GSO frames
	FeatureGuestECN  uint64 = 1 << 9  // VIRTIO_NET_F_GUEST_ECN: the driver accepts GSO frames with ECN
	FeatureHostTSO4  uint64 = 1 << 11 // VIRTIO_NET_F_HOST_TSO4: the driver may send TCPv4 GSO frames
	FeatureHostTSO6  uint64 = 1 << 12 // VIRTIO_NET_F_HOST_TSO6: the driver may send TCPv6 GSO frames
	FeatureMrgRxbuf  uint64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF: a received frame may span several receive chains
	FeatureStatus    uint64 = 1 << 16 // VIRTIO_NET_F_STATUS: the config space has a link status field
	FeatureMQ        uint64 = 1 << 22 // VIRTIO_NET_F_MQ: several receive/transmit queue pairs

	// featureProtocol is VHOST_USER_F_PROTOCOL_FEATURES (bit 30): a
	// vhost-user backend adds it to the offer, and a frontend may pass it
	// back among the acked bits. It is not a virtio feature, so SetFeatures
	// ignores it.
	featureProtocol uint64 = 1 << 30
)

// Offered is what a virtio port offers. MTU and STATUS are left out because
// the frontend (the VMM) serves the config space; MQ because a port has one
// queue pair.
const Offered = virtio.FeatureVersion1 | virtio.FeaturesQueue | FeatureMAC |
	FeatureCsum | FeatureGuestCsum | FeatureHostTSO4 | FeatureHostTSO6 |
	FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureMrgRxbuf

// HeaderLen is the size of struct virtio_net_hdr_v1, which precedes every
// frame in a virtqueue and every buffer a Frames port moves. It is fixed
// because VIRTIO_F_VERSION_1 is always negotiated.
const HeaderLen = 12

// virtio_net_hdr flags and gso_type values (virtio 1.2 §5.1.6).
const (
	hdrNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum from csum_start, stored at csum_start+csum_offset
	hdrDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified (receive side only)

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the frame has the ECN CWR bit set
)

// netHdr is a decoded virtio_net_hdr_v1.
type netHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
	numBuffers uint16
}

// decode and encode move the 12 bytes as one 8-byte and one 4-byte word:
// a frame's header costs two loads or stores, not seven.
func (h *netHdr) decode(b []byte) {
	_ = b[HeaderLen-1]
	lo, hi := binary.LittleEndian.Uint64(b[0:8]), binary.LittleEndian.Uint32(b[8:12])
	h.flags = uint8(lo)
	h.gsoType = uint8(lo >> 8)
	h.hdrLen = uint16(lo >> 16)
	h.gsoSize = uint16(lo >> 32)
	h.csumStart = uint16(lo >> 48)
	h.csumOffset = uint16(hi)
	h.numBuffers = uint16(hi >> 16)
}

func (h *netHdr) encode(b []byte) {
	_ = b[HeaderLen-1]
	binary.LittleEndian.PutUint64(b[0:8], uint64(h.flags)|uint64(h.gsoType)<<8|uint64(h.hdrLen)<<16|
		uint64(h.gsoSize)<<32|uint64(h.csumStart)<<48)
	binary.LittleEndian.PutUint32(b[8:12], uint32(h.csumOffset)|uint32(h.numBuffers)<<16)
}

// offloads is what a receiver accepts in the virtio-net header; anything
// else the switch completes in software before delivery.
type offloads struct {
	csum bool // partial checksums (NEEDS_CSUM)
	tso4 bool // TCPv4 GSO frames
	tso6 bool // TCPv6 GSO frames
	ecn  bool // GSO frames with the ECN bit
}

func offloadsOf(features uint64) offloads {
	return offloads{
		csum: features&FeatureGuestCsum != 0,
		tso4: features&FeatureGuestTSO4 != 0,
		tso6: features&FeatureGuestTSO6 != 0,
		ecn:  features&FeatureGuestECN != 0,
	}
}

// kernelOffloads is what a kernel behind tap or AF_PACKET accepts:
// everything, since it completes checksums and segments itself.
func kernelOffloads() offloads { return offloads{csum: true, tso4: true, tso6: true, ecn: true} }

// takesGSO reports whether the receiver accepts a GSO frame of type t.
func (o offloads) takesGSO(t uint8) bool {
	if t&gsoECN != 0 && !o.ecn {
		return false
	}
	switch t &^ gsoECN {
	case gsoNone:
		return true
	case gsoTCPv4:
		return o.tso4
	case gsoTCPv6:
		return o.tso6
	}
	return false
}
