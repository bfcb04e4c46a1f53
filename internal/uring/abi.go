package uring

// Kernel ABI of io_uring, written from include/uapi/linux/io_uring.h. Only the
// parts this package uses are here; the layouts are checked by abi_test.go.

// Offsets for mmap(2) on the ring descriptor.
const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// Setup flags (io_uring_params.flags).
const (
	setupCQSize = 1 << 3
	setupClamp  = 1 << 4
)

// Feature bits reported by io_uring_setup in io_uring_params.features.
const (
	FeatSingleMmap   = 1 << 0 // SQ and CQ rings share one mapping (5.4)
	FeatNoDrop       = 1 << 1 // CQEs are never dropped on CQ overflow (5.5)
	FeatSubmitStable = 1 << 2 // SQE data (iovec arrays) is consumed at submit time (5.5)
	FeatExtArg       = 1 << 8
)

// Opcodes (enum io_uring_op).
const (
	OpNop       = 0
	OpReadv     = 1
	OpWritev    = 2
	OpFsync     = 3
	OpFallocate = 17
)

// FsyncDatasync makes OpFsync behave as fdatasync(2).
const FsyncDatasync = 1 << 0

// SQE flags.
const (
	SQEIODrain = 1 << 1 // start only after every earlier SQE has completed
)

// sq_ring->flags bits.
const (
	sqCQOverflow = 1 << 1
)

// io_uring_enter flags.
const (
	enterGetEvents = 1 << 0
)

// io_uring_register opcodes.
const (
	registerEventfd   = 4
	unregisterEventfd = 5
	registerProbe     = 8
)

// opSupported is io_uring_probe_op.flags' IO_URING_OP_SUPPORTED.
const opSupported = 1 << 0

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type params struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqringOffsets
	CQOff                                                                  cqringOffsets
}

// SQE is struct io_uring_sqe (64 bytes). Union members are named after the
// variant this package uses.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64 // file offset
	Addr        uint64 // iovec array, or length for fallocate
	Len         uint32 // iovec count, or mode for fallocate
	OpFlags     uint32 // rw_flags / fsync_flags
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	Addr3       uint64
	pad         uint64
}

// CQE is struct io_uring_cqe (16 bytes): Res is the operation's return value
// (negative errno on failure).
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

type probeOp struct {
	Op    uint8
	Resv  uint8
	Flags uint16
	Resv2 uint32
}

type probe struct {
	LastOp uint8
	OpsLen uint8
	Resv   uint16
	Resv2  [3]uint32
	Ops    [256]probeOp
}
