// Package vhostuser speaks the vhost-user protocol (QEMU docs/interop/vhost-user.rst):
// a backend that serves one virtio device's virtqueues to a frontend VMM over a
// unix socket, and the frontend a VMM uses to hand its virtqueues to such a backend.
//
// The frontend is only as trusted as the guest it runs (a compromised VMM is
// a compromised guest), so every message is parsed as hostile bytes: sizes
// are bounded before anything is read, and no address, length or index is
// used before it has been checked.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a vhost-user message type (the "request" field of the header).
type Request uint32

// Frontend-to-backend requests. The numbers are the protocol's; requests
// this package does not implement are listed too so that traces and errors
// can name them.
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	SendRARP            Request = 19
	NetSetMTU           Request = 20
	SetBackendReqFD     Request = 21
	IOTLBMsg            Request = 22
	SetVringEndian      Request = 23
	GetConfig           Request = 24
	SetConfig           Request = 25
	GetInflightFD       Request = 31
	SetInflightFD       Request = 32
	ResetDevice         Request = 34
	GetMaxMemSlots      Request = 36
	AddMemReg           Request = 37
	RemMemReg           Request = 38
	SetStatus           Request = 39
	GetStatus           Request = 40
)

// String is the protocol's name for the request (VHOST_USER_ stripped).
func (r Request) String() string {
	switch r {
	case GetFeatures:
		return "GET_FEATURES"
	case SetFeatures:
		return "SET_FEATURES"
	case SetOwner:
		return "SET_OWNER"
	case ResetOwner:
		return "RESET_OWNER"
	case SetMemTable:
		return "SET_MEM_TABLE"
	case SetLogBase:
		return "SET_LOG_BASE"
	case SetLogFD:
		return "SET_LOG_FD"
	case SetVringNum:
		return "SET_VRING_NUM"
	case SetVringAddr:
		return "SET_VRING_ADDR"
	case SetVringBase:
		return "SET_VRING_BASE"
	case GetVringBase:
		return "GET_VRING_BASE"
	case SetVringKick:
		return "SET_VRING_KICK"
	case SetVringCall:
		return "SET_VRING_CALL"
	case SetVringErr:
		return "SET_VRING_ERR"
	case GetProtocolFeatures:
		return "GET_PROTOCOL_FEATURES"
	case SetProtocolFeatures:
		return "SET_PROTOCOL_FEATURES"
	case GetQueueNum:
		return "GET_QUEUE_NUM"
	case SetVringEnable:
		return "SET_VRING_ENABLE"
	case SendRARP:
		return "SEND_RARP"
	case NetSetMTU:
		return "NET_SET_MTU"
	case SetBackendReqFD:
		return "SET_BACKEND_REQ_FD"
	case IOTLBMsg:
		return "IOTLB_MSG"
	case SetVringEndian:
		return "SET_VRING_ENDIAN"
	case GetConfig:
		return "GET_CONFIG"
	case SetConfig:
		return "SET_CONFIG"
	case GetInflightFD:
		return "GET_INFLIGHT_FD"
	case SetInflightFD:
		return "SET_INFLIGHT_FD"
	case ResetDevice:
		return "RESET_DEVICE"
	case GetMaxMemSlots:
		return "GET_MAX_MEM_SLOTS"
	case AddMemReg:
		return "ADD_MEM_REG"
	case RemMemReg:
		return "REM_MEM_REG"
	case SetStatus:
		return "SET_STATUS"
	case GetStatus:
		return "GET_STATUS"
	}
	return fmt.Sprintf("request(%d)", uint32(r))
}

// Header flags.
const (
	FlagVersionMask uint32 = 0x3
	Version         uint32 = 0x1 // the only protocol version
	FlagReply       uint32 = 0x4 // the message is a reply
	FlagNeedReply   uint32 = 0x8 // the sender wants a REPLY_ACK (with ProtocolReplyAck)
)

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES), as masks.
const (
	ProtocolMQ                uint64 = 1 << 0  // GET_QUEUE_NUM; more than one queue pair
	ProtocolLogSHMFD          uint64 = 1 << 1  // dirty log in shared memory (live migration)
	ProtocolRARP              uint64 = 1 << 2  // SEND_RARP
	ProtocolReplyAck          uint64 = 1 << 3  // NEED_REPLY is honoured with a u64 ack
	ProtocolMTU               uint64 = 1 << 4  // NET_SET_MTU
	ProtocolBackendReq        uint64 = 1 << 5  // a backend-to-frontend channel
	ProtocolConfig            uint64 = 1 << 9  // GET_CONFIG / SET_CONFIG
	ProtocolConfigureMemSlots uint64 = 1 << 15 // GET_MAX_MEM_SLOTS, ADD/REM_MEM_REG
)

// FeatureProtocolFeatures is VHOST_USER_F_PROTOCOL_FEATURES, the virtio
// feature bit (30, unused by virtio itself) a backend offers to say it
// understands GET/SET_PROTOCOL_FEATURES. Negotiating it also makes rings
// start disabled until SET_VRING_ENABLE.
const FeatureProtocolFeatures uint64 = 1 << 30

// Limits of the wire format.
const (
	HeaderSize = 12
	// MaxRegions is VHOST_MEMORY_BASELINE_NREGIONS: regions (and file
	// descriptors) in one SET_MEM_TABLE.
	MaxRegions = 8
	// MaxFDs is the most descriptors any message carries.
	MaxFDs = MaxRegions
	// MaxConfigSize is the largest GET/SET_CONFIG window (VHOST_USER_MAX_CONFIG_SIZE).
	MaxConfigSize = 256
	// MaxPayload bounds the payload size a header may announce. The largest
	// message the protocol defines (a config window) is 268 bytes; anything
	// announcing more than this is hostile and ends the connection, since
	// the stream cannot be resynchronised without reading it.
	MaxPayload = 4096
)

// Payload sizes of the fixed-size messages.
const (
	sizeU64        = 8
	sizeVringState = 8
	sizeVringAddr  = 40
	sizeRegion     = 32
	sizeMemHeader  = 8  // nregions u32 + padding u32
	sizeConfigHdr  = 12 // offset, size, flags
)

// vringFDMask is the index field of the u64 payload of SET_VRING_KICK/CALL/ERR;
// vringNoFD (bit 8) says no descriptor accompanies the message.
const (
	vringFDMask = 0xff
	vringNoFD   = 1 << 8
)

// ErrProtocol is wrapped by every error about malformed messages.
var ErrProtocol = errors.New("vhost-user: malformed message")

// Header is the fixed 12-byte start of every message.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32 // payload bytes that follow
}

// ParseHeader decodes b's first HeaderSize bytes and checks the version and
// the announced payload size; it never trusts Size beyond MaxPayload.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes, want %d", ErrProtocol, len(b), HeaderSize)
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if v := h.Flags & FlagVersionMask; v != Version {
		return h, fmt.Errorf("%w: %v has version %d, want %d", ErrProtocol, h.Request, v, Version)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("%w: %v announces a %d-byte payload (limit %d)", ErrProtocol, h.Request, h.Size, MaxPayload)
	}
	return h, nil
}

// put encodes h into b[:HeaderSize].
func (h Header) put(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

func checkSize(what string, p []byte, want int) error {
	if len(p) != want {
		return fmt.Errorf("%w: %s payload of %d bytes, want %d", ErrProtocol, what, len(p), want)
	}
	return nil
}

// ParseU64 decodes a u64 payload (features, acks, queue counts, fd indices).
func ParseU64(p []byte) (uint64, error) {
	if err := checkSize("u64", p, sizeU64); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

func appendU64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// VringState is the payload of SET_VRING_NUM, SET/GET_VRING_BASE and
// SET_VRING_ENABLE: a ring index and a number whose meaning depends on the
// request (size, next available index, enable flag).
type VringState struct {
	Index uint32
	Num   uint32
}

// ParseVringState decodes a vring state payload.
func ParseVringState(p []byte) (VringState, error) {
	if err := checkSize("vring state", p, sizeVringState); err != nil {
		return VringState{}, err
	}
	return VringState{Index: binary.LittleEndian.Uint32(p), Num: binary.LittleEndian.Uint32(p[4:])}, nil
}

func (s VringState) append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

// VringAddr is the payload of SET_VRING_ADDR. The ring addresses are
// virtual addresses in the frontend's process (Memory.Translate turns them
// into guest-physical ones); Log is guest-physical and only used for
// dirty logging, which this package does not implement.
type VringAddr struct {
	Index uint32
	Flags uint32 // bit 0: log the used ring (VHOST_VRING_F_LOG)
	Desc  uint64 // descriptor table
	Used  uint64 // used ring
	Avail uint64 // available ring
	Log   uint64
}

// ParseVringAddr decodes a vring address payload.
func ParseVringAddr(p []byte) (VringAddr, error) {
	if err := checkSize("vring address", p, sizeVringAddr); err != nil {
		return VringAddr{}, err
	}
	le := binary.LittleEndian
	return VringAddr{
		Index: le.Uint32(p[0:]), Flags: le.Uint32(p[4:]),
		Desc: le.Uint64(p[8:]), Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:]),
	}, nil
}

func (a VringAddr) append(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, a.Index)
	b = le.AppendUint32(b, a.Flags)
	b = le.AppendUint64(b, a.Desc)
	b = le.AppendUint64(b, a.Used)
	b = le.AppendUint64(b, a.Avail)
	return le.AppendUint64(b, a.Log)
}

// Region is one guest RAM region of SET_MEM_TABLE: Size bytes at guest
// physical GuestAddr, mapped in the frontend at UserAddr, found at Offset
// in the file Fd (sent alongside the message with SCM_RIGHTS).
type Region struct {
	GuestAddr uint64
	Size      uint64
	UserAddr  uint64
	Offset    uint64 // mmap_offset: where the region starts in Fd
	Fd        int
}

// ParseMemTable decodes a SET_MEM_TABLE payload: 1 to MaxRegions regions,
// their Fd fields set to -1 (the descriptors travel out of band). Overlaps
// and sizes are checked by Map, which needs the whole table anyway.
func ParseMemTable(p []byte) ([]Region, error) {
	if len(p) < sizeMemHeader {
		return nil, fmt.Errorf("%w: memory table payload of %d bytes", ErrProtocol, len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxRegions {
		return nil, fmt.Errorf("%w: memory table with %d regions (want 1 to %d)", ErrProtocol, n, MaxRegions)
	}
	if err := checkSize("memory table", p, sizeMemHeader+int(n)*sizeRegion); err != nil {
		return nil, err
	}
	regions := make([]Region, n)
	le := binary.LittleEndian
	for i := range regions {
		r := p[sizeMemHeader+i*sizeRegion:]
		regions[i] = Region{
			GuestAddr: le.Uint64(r[0:]), Size: le.Uint64(r[8:]),
			UserAddr: le.Uint64(r[16:]), Offset: le.Uint64(r[24:]), Fd: -1,
		}
	}
	return regions, nil
}

func appendMemTable(b []byte, regions []Region) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(len(regions)))
	b = le.AppendUint32(b, 0)
	for _, r := range regions {
		b = le.AppendUint64(b, r.GuestAddr)
		b = le.AppendUint64(b, r.Size)
		b = le.AppendUint64(b, r.UserAddr)
		b = le.AppendUint64(b, r.Offset)
	}
	return b
}

// Config is the payload of GET_CONFIG and SET_CONFIG: a window of the
// device's configuration space. In a GET_CONFIG request Data only gives the
// window's size (its bytes are ignored); the reply carries the contents.
type Config struct {
	Offset uint32
	Flags  uint32 // SET_CONFIG: 0 writable, 1 migration
	Data   []byte
}

// ParseConfig decodes a config payload; Data aliases p.
func ParseConfig(p []byte) (Config, error) {
	if len(p) < sizeConfigHdr {
		return Config{}, fmt.Errorf("%w: config payload of %d bytes", ErrProtocol, len(p))
	}
	le := binary.LittleEndian
	c := Config{Offset: le.Uint32(p[0:]), Flags: le.Uint32(p[8:])}
	size := le.Uint32(p[4:])
	if size > MaxConfigSize {
		return Config{}, fmt.Errorf("%w: config window of %d bytes (limit %d)", ErrProtocol, size, MaxConfigSize)
	}
	if err := checkSize("config", p, sizeConfigHdr+int(size)); err != nil {
		return Config{}, err
	}
	c.Data = p[sizeConfigHdr:]
	return c, nil
}

func (c Config) append(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, c.Offset)
	b = le.AppendUint32(b, uint32(len(c.Data)))
	b = le.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// ParseVringFD decodes the u64 payload of SET_VRING_KICK, SET_VRING_CALL
// and SET_VRING_ERR: the ring index and whether the message comes without
// a descriptor (bit 8, "invalid FD": the ring is polled, or the
// notification is disabled). Other bits are reserved and rejected.
func ParseVringFD(p []byte) (index uint32, noFD bool, err error) {
	v, err := ParseU64(p)
	if err != nil {
		return 0, false, err
	}
	if v&^uint64(vringFDMask|vringNoFD) != 0 {
		return 0, false, fmt.Errorf("%w: vring descriptor payload %#x has reserved bits set", ErrProtocol, v)
	}
	return uint32(v & vringFDMask), v&vringNoFD != 0, nil
}

func vringFD(index uint32, noFD bool) uint64 {
	v := uint64(index & vringFDMask)
	if noFD {
		v |= vringNoFD
	}
	return v
}
