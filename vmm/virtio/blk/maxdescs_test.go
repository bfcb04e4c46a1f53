package blk

import (
	"testing"
	"time"
)

// TestChainTooLong: a request whose chain has more descriptors than
// seg_max data segments plus header and status is refused before the
// device builds anything from it: it is given back with length 0, the
// queue goes on serving, and every slot is free with no view of guest
// memory kept.
func TestChainTooLong(t *testing.T) {
	const size = 2048 // seg_max 1024: a table of 1100 fits an indirect chain
	r := newRig(t, Options{Backend: newFakeBackend(4 << 20), QueueSize: size}, 0)
	limit := int(r.dev.segMax) + 2
	for _, tc := range []struct {
		name  string
		descs int // header + data segments + status
		ok    bool
	}{
		{"seg_max segments", limit, true},
		{"one segment more", limit + 1, false},
		{"1100 descriptors", 1100, false},
		{"after the refusals", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := tc.descs - 2
			q := r.newReq(typeIn, 0, uint32(512*segs))
			chain := []seg{{Addr: q.hdr, Len: 16}}
			for i := range segs {
				chain = append(chain, seg{Addr: q.data + 512*uint64(i), Len: 512, Write: true})
			}
			chain = append(chain, seg{Addr: q.status, Len: 1, Write: true})
			table := r.alloc(16 * uint64(len(chain)))
			head, ok, err := r.drv[0].PostIndirect(table, chain...)
			if err != nil || !ok {
				t.Fatalf("PostIndirect: %v %v", ok, err)
			}
			r.dev.Kick(0)
			e := r.wait(0, 1, 5*time.Second)
			if e[0].Head != head {
				t.Fatalf("used head %d, posted %d", e[0].Head, head)
			}
			status := r.bytes(q.status, 1)[0]
			if tc.ok && (status != statusOK || e[0].Len != uint32(512*segs)+1) {
				t.Fatalf("status %d len %d, want OK and %d", status, e[0].Len, 512*segs+1)
			}
			if !tc.ok && (status != 0xff || e[0].Len != 0) {
				t.Fatalf("status %d len %d, want untouched and 0", status, e[0].Len)
			}
		})
	}
	w := r.dev.workers[0]
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.slots {
		s := &w.slots[i]
		if s.state != slotFree || len(s.iov) != 0 || s.status != nil {
			t.Errorf("slot %d: state %d, %d views and status %v kept after the requests", i, s.state, len(s.iov), s.status != nil)
		}
	}
}
