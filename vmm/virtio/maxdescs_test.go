package virtio

import (
	"errors"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// TestWalkMaxDescriptors: a Chain's bound stops a walk at the first
// descriptor past it, direct or indirect, empty or not; the bound survives
// walks, and a rejected walk leaves no buffer behind.
func TestWalkMaxDescriptors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		max      uint32
		direct   int  // direct descriptors, 8 bytes each
		indirect int  // then an indirect table of this many
		empty    bool // the direct ones are zero-length
		ok       bool
	}{
		{"no bound, whole queue and a table", 0, 15, 16, false, true},
		{"at the bound", 4, 4, 0, false, true},
		{"one past the bound", 4, 5, 0, false, false},
		{"empty descriptors count", 4, 5, 0, true, false},
		{"indirect at the bound", 4, 0, 4, false, true},
		{"indirect past the bound", 4, 0, 5, false, false},
		{"direct then indirect past the bound", 4, 2, 3, false, false},
		{"the pointer to a table does not count", 4, 1, 3, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ram := virtiotest.NewRAM(ramSize)
			defer checkGuards(t, ram)
			d := newDriver(t, ram, 16, descAt, availAt, usedAt)
			q := d.queue(FeatureVersion1 | FeatureRingIndirectDesc)
			n := uint16(tc.direct)
			for i := range n {
				length := uint32(8)
				if tc.empty {
					length = 0
				}
				d.SetDesc(i, bufBase+8*uint64(i), length, R|N, i+1)
			}
			if tc.indirect > 0 {
				d.SetDesc(n, tableAt, uint32(16*tc.indirect), I, 0)
				for j := range tc.indirect {
					flags := uint16(W | N)
					if j == tc.indirect-1 {
						flags = W
					}
					putDesc(t, ram, tableAt+16*uint64(j), bufBase+0x1000+8*uint64(j), 8, flags, uint16(j+1))
				}
			} else {
				d.SetDesc(n-1, bufBase+8*uint64(n-1), map[bool]uint32{false: 8, true: 0}[tc.empty], R, 0)
			}
			var c Chain
			c.SetMaxDescriptors(tc.max)
			for walk := range 2 { // the bound is kept across walks
				err := q.Walk(0, &c)
				if tc.ok != (err == nil) {
					t.Fatalf("walk %d: Walk = %v, want ok=%v", walk, err, tc.ok)
				}
				if err != nil && (!errors.Is(err, ErrChain) || len(c.bufs) != 0 || c.ReadLen() != 0 || c.WriteLen() != 0) {
					t.Fatalf("walk %d: error %v with %d buffers left", walk, err, len(c.bufs))
				}
				if tc.max != 0 && len(c.bufs) > int(tc.max) {
					t.Fatalf("walk %d: %d buffers, bound %d", walk, len(c.bufs), tc.max)
				}
			}
		})
	}
}
