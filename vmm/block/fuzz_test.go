package block

import (
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzRequestCheck feeds guest-controlled request fields (type, sector
// offset, length, buffer sizes) to validation: it must never panic, and
// anything it accepts must lie inside the disk.
func FuzzRequestCheck(f *testing.F) {
	f.Add(uint8(1), int64(0), int64(0), []byte{0, 2, 0, 2})
	f.Add(uint8(4), int64(1<<62), int64(1<<62), []byte{})
	f.Add(uint8(5), int64(-1), int64(9223372036854775807), []byte{255, 255})
	f.Add(uint8(2), int64(1<<20-512), int64(0), []byte{0, 2, 0, 2})
	backing := make([]byte, 1<<16)
	f.Fuzz(func(t *testing.T, op uint8, off, length int64, sizes []byte) {
		for _, d := range []*disk{
			{size: 1 << 20},
			{size: 1 << 20, ro: true},
			{size: 1 << 20, align: Alignment{Memory: 512, Offset: 512}},
		} {
			r := Request{Op: Op(op), Offset: off, Length: length}
			for i := 0; i+1 < len(sizes); i += 2 {
				r.Bufs = append(r.Bufs, backing[:binary.LittleEndian.Uint16(sizes[i:])])
			}
			n, _, err := d.check(&r)
			if err != nil {
				if d.ro && errors.Is(err, ErrReadOnly) && r.Op != Write && r.Op != Discard && r.Op != WriteZeroes {
					t.Fatalf("%v refused as read-only", r.Op)
				}
				continue
			}
			if r.Op == Flush {
				continue
			}
			if d.ro && r.Op != Read {
				t.Fatalf("read-only disk accepted %v", r.Op)
			}
			if n < 0 || r.Offset < 0 || r.Offset+n > d.size {
				t.Fatalf("accepted %v at %d+%d on a disk of %d", r.Op, r.Offset, n, d.size)
			}
		}
	})
}
