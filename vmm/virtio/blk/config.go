package blk

import "encoding/binary"

// Offsets of struct virtio_blk_config (virtio 1.2 §5.2.4), little-endian.
// Fields past secure_erase_sector_alignment (the zoned characteristics)
// belong to features this device does not offer and read as zero.
const (
	cfgCapacity               = 0  // le64: disk size in 512-byte sectors
	cfgSizeMax                = 8  // le32: largest segment (SIZE_MAX)
	cfgSegMax                 = 12 // le32: most segments per request (SEG_MAX)
	cfgGeometryCylinders      = 16 // le16 (GEOMETRY)
	cfgGeometryHeads          = 18 // u8
	cfgGeometrySectors        = 19 // u8
	cfgBlkSize                = 20 // le32: logical block size (BLK_SIZE)
	cfgPhysicalBlockExp       = 24 // u8 (TOPOLOGY)
	cfgAlignmentOffset        = 25 // u8
	cfgMinIOSize              = 26 // le16
	cfgOptIOSize              = 28 // le32
	cfgWriteback              = 32 // u8 (CONFIG_WCE)
	cfgNumQueues              = 34 // le16, after one unused byte (MQ)
	cfgMaxDiscardSectors      = 36 // le32 (DISCARD)
	cfgMaxDiscardSeg          = 40 // le32
	cfgDiscardSectorAlignment = 44 // le32
	cfgMaxWriteZeroesSectors  = 48 // le32 (WRITE_ZEROES)
	cfgMaxWriteZeroesSeg      = 52 // le32
	cfgWriteZeroesMayUnmap    = 56 // u8, then three unused bytes
	cfgMaxSecureEraseSectors  = 60 // le32 (SECURE_ERASE)
	cfgMaxSecureEraseSeg      = 64 // le32
	cfgSecureEraseAlignment   = 68 // le32
	configSize                = 72
)

// Discard and write-zeroes limits offered to the driver. One segment per
// request keeps a request one Backend operation (Linux then splits larger
// batches itself); 1 GiB per segment bounds how long one fallocate(2) holds
// a Backend slot.
const (
	maxZeroSectors = 1 << 21
	maxZeroSegs    = 1
)

// fillConfig lays out the configuration space once: nothing in it changes
// while the device exists.
func (d *Device) fillConfig(queues uint16) {
	c := d.config[:]
	le := binary.LittleEndian
	le.PutUint64(c[cfgCapacity:], d.sectors)
	le.PutUint32(c[cfgSegMax:], d.segMax)
	le.PutUint32(c[cfgBlkSize:], d.blkSize)
	le.PutUint16(c[cfgNumQueues:], queues)
	align := d.blkSize / sectorSize
	le.PutUint32(c[cfgMaxDiscardSectors:], maxZeroSectors)
	le.PutUint32(c[cfgMaxDiscardSeg:], maxZeroSegs)
	le.PutUint32(c[cfgDiscardSectorAlignment:], align)
	le.PutUint32(c[cfgMaxWriteZeroesSectors:], maxZeroSectors)
	le.PutUint32(c[cfgMaxWriteZeroesSeg:], maxZeroSegs)
	// A write-zeroes request with the unmap flag may punch a hole: the
	// Backend's Discard reads back as zeros.
	c[cfgWriteZeroesMayUnmap] = 1
}
