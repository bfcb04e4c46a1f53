package blk

import (
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// specConfig transcribes struct virtio_blk_config from virtio 1.2 §5.2.4
// field by field; every field is naturally aligned in the spec, so Go lays
// it out at the same offsets as the C structure.
type specConfig struct {
	Capacity                   uint64
	SizeMax                    uint32
	SegMax                     uint32
	Cylinders                  uint16
	Heads                      uint8
	Sectors                    uint8
	BlkSize                    uint32
	PhysicalBlockExp           uint8
	AlignmentOffset            uint8
	MinIOSize                  uint16
	OptIOSize                  uint32
	Writeback                  uint8
	Unused0                    uint8
	NumQueues                  uint16
	MaxDiscardSectors          uint32
	MaxDiscardSeg              uint32
	DiscardSectorAlignment     uint32
	MaxWriteZeroesSectors      uint32
	MaxWriteZeroesSeg          uint32
	WriteZeroesMayUnmap        uint8
	Unused1                    [3]uint8
	MaxSecureEraseSectors      uint32
	MaxSecureEraseSeg          uint32
	SecureEraseSectorAlignment uint32
}

func TestConfigOffsets(t *testing.T) {
	var c specConfig
	for _, tc := range []struct {
		name      string
		got, spec uintptr
	}{
		{"capacity", cfgCapacity, unsafe.Offsetof(c.Capacity)},
		{"size_max", cfgSizeMax, unsafe.Offsetof(c.SizeMax)},
		{"seg_max", cfgSegMax, unsafe.Offsetof(c.SegMax)},
		{"geometry.cylinders", cfgGeometryCylinders, unsafe.Offsetof(c.Cylinders)},
		{"geometry.heads", cfgGeometryHeads, unsafe.Offsetof(c.Heads)},
		{"geometry.sectors", cfgGeometrySectors, unsafe.Offsetof(c.Sectors)},
		{"blk_size", cfgBlkSize, unsafe.Offsetof(c.BlkSize)},
		{"topology.physical_block_exp", cfgPhysicalBlockExp, unsafe.Offsetof(c.PhysicalBlockExp)},
		{"topology.alignment_offset", cfgAlignmentOffset, unsafe.Offsetof(c.AlignmentOffset)},
		{"topology.min_io_size", cfgMinIOSize, unsafe.Offsetof(c.MinIOSize)},
		{"topology.opt_io_size", cfgOptIOSize, unsafe.Offsetof(c.OptIOSize)},
		{"writeback", cfgWriteback, unsafe.Offsetof(c.Writeback)},
		{"num_queues", cfgNumQueues, unsafe.Offsetof(c.NumQueues)},
		{"max_discard_sectors", cfgMaxDiscardSectors, unsafe.Offsetof(c.MaxDiscardSectors)},
		{"max_discard_seg", cfgMaxDiscardSeg, unsafe.Offsetof(c.MaxDiscardSeg)},
		{"discard_sector_alignment", cfgDiscardSectorAlignment, unsafe.Offsetof(c.DiscardSectorAlignment)},
		{"max_write_zeroes_sectors", cfgMaxWriteZeroesSectors, unsafe.Offsetof(c.MaxWriteZeroesSectors)},
		{"max_write_zeroes_seg", cfgMaxWriteZeroesSeg, unsafe.Offsetof(c.MaxWriteZeroesSeg)},
		{"write_zeroes_may_unmap", cfgWriteZeroesMayUnmap, unsafe.Offsetof(c.WriteZeroesMayUnmap)},
		{"max_secure_erase_sectors", cfgMaxSecureEraseSectors, unsafe.Offsetof(c.MaxSecureEraseSectors)},
		{"max_secure_erase_seg", cfgMaxSecureEraseSeg, unsafe.Offsetof(c.MaxSecureEraseSeg)},
		{"secure_erase_sector_alignment", cfgSecureEraseAlignment, unsafe.Offsetof(c.SecureEraseSectorAlignment)},
		{"size", configSize, unsafe.Sizeof(c)},
	} {
		if tc.got != tc.spec {
			t.Errorf("%s at offset %d, the spec puts it at %d", tc.name, tc.got, tc.spec)
		}
	}
}

// alignedBackend is a fakeBackend that claims O_DIRECT alignment.
type alignedBackend struct {
	*fakeBackend
	align int
}

func (a alignedBackend) Alignment() block.Alignment {
	return block.Alignment{Memory: a.align, Offset: a.align}
}

func TestConfigValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend block.Backend
		opts    Options
		want    map[int]uint64 // offset -> value, read with the field's width
		feat    uint64         // must be offered
		notFeat uint64         // must not be offered
	}{
		{
			name:    "defaults",
			backend: newFakeBackend(1<<20 + 3*512),
			want: map[int]uint64{cfgCapacity: 2048 + 3, cfgSegMax: 254, cfgBlkSize: 512, cfgNumQueues: 1,
				cfgMaxDiscardSectors: maxZeroSectors, cfgMaxDiscardSeg: 1, cfgDiscardSectorAlignment: 1,
				cfgMaxWriteZeroesSectors: maxZeroSectors, cfgMaxWriteZeroesSeg: 1, cfgWriteZeroesMayUnmap: 1,
				cfgSizeMax: 0, cfgWriteback: 0},
			feat: virtio.FeatureVersion1 | virtio.FeatureRingEventIdx | virtio.FeatureRingIndirectDesc |
				FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureDiscard | FeatureWriteZeroes,
			notFeat: FeatureRO | FeatureMQ | FeatureConfigWCE | virtio.FeatureRingPacked,
		},
		{
			name:    "multi-queue read-only small queues",
			backend: newFakeBackend(8 << 20),
			opts:    Options{Queues: 4, QueueSize: 8, ReadOnly: true},
			want:    map[int]uint64{cfgCapacity: 16384, cfgSegMax: 6, cfgNumQueues: 4},
			feat:    FeatureRO | FeatureMQ,
		},
		{
			name:    "huge queue caps seg_max at IOV_MAX",
			backend: newFakeBackend(1 << 20),
			opts:    Options{QueueSize: 4096},
			want:    map[int]uint64{cfgSegMax: 1024},
		},
		{
			name:    "O_DIRECT 4K",
			backend: alignedBackend{newFakeBackend(1 << 20), 4096},
			want:    map[int]uint64{cfgBlkSize: 4096, cfgDiscardSectorAlignment: 8, cfgCapacity: 2048},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Backend = tc.backend
			d, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			if f := d.Features(); f&tc.feat != tc.feat || f&tc.notFeat != 0 {
				t.Errorf("features %#x, want %#x set and %#x clear", f, tc.feat, tc.notFeat)
			}
			width := map[int]int{cfgCapacity: 8, cfgNumQueues: 2, cfgWriteZeroesMayUnmap: 1, cfgWriteback: 1}
			for off, want := range tc.want {
				n := 4
				if w, ok := width[off]; ok {
					n = w
				}
				b := make([]byte, n)
				d.ReadConfig(uint64(off), b)
				var got uint64
				for i := n - 1; i >= 0; i-- {
					got = got<<8 | uint64(b[i])
				}
				if got != want {
					t.Errorf("config field at %d = %d, want %d", off, got, want)
				}
			}
		})
	}
}

func TestConfigAccessBounds(t *testing.T) {
	d, err := New(Options{Backend: newFakeBackend(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off  uint64
		n    int
		want []byte
	}{
		{cfgCapacity, 8, binary.LittleEndian.AppendUint64(nil, 2048)},
		{configSize - 2, 4, nil}, // straddles the end: the tail reads zero
		{configSize, 4, []byte{0, 0, 0, 0}},
		{1 << 63, 8, make([]byte, 8)},
		{^uint64(0), 1, []byte{0}},
	} {
		b := []byte(strings.Repeat("\xee", tc.n))
		d.ReadConfig(tc.off, b)
		if tc.want == nil {
			if b[2] != 0 || b[3] != 0 {
				t.Errorf("ReadConfig(%d, %d) = %x: bytes past the end not zero", tc.off, tc.n, b)
			}
			continue
		}
		if string(b) != string(tc.want) {
			t.Errorf("ReadConfig(%d, %d) = %x, want %x", tc.off, tc.n, b, tc.want)
		}
	}
	before := d.config
	d.WriteConfig(cfgCapacity, []byte{1, 2, 3, 4})
	d.WriteConfig(^uint64(0), []byte{1})
	if d.config != before {
		t.Error("WriteConfig changed the read-only configuration")
	}
}

func TestNewRejects(t *testing.T) {
	fb := newFakeBackend(4096)
	for _, o := range []Options{
		{},
		{Backend: fb, ID: strings.Repeat("x", 21)},
		{Backend: fb, Queues: MaxQueues + 1},
		{Backend: fb, Queues: -1},
		{Backend: fb, QueueSize: 100},
		{Backend: fb, QueueSize: 2},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

func TestAck(t *testing.T) {
	d, err := New(Options{Backend: newFakeBackend(4096)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(d.Features()); err != nil {
		t.Errorf("Ack(offered): %v", err)
	}
	if err := d.Ack(d.Features() &^ virtio.FeatureVersion1); err == nil {
		t.Error("Ack without VERSION_1 accepted")
	}
	if err := d.Ack(d.Features() | FeatureConfigWCE); err == nil {
		t.Error("Ack of a feature not offered accepted")
	}
}
