package blk

import (
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/ratelimit"
)

// TestLimiterCharge: each request type charges the limiter what the disk
// does for it. The clock never moves and both buckets hold 2^40 tokens
// refilled in 2^40 ns, so Wait(bucket size) is exactly what was consumed.
func TestLimiterCharge(t *testing.T) {
	const big = 1 << 40
	for _, tc := range []struct {
		name       string
		typ        uint32
		dataLen    uint32    // IN, OUT, GET_ID
		zero       [3]uint64 // DISCARD, WRITE_ZEROES: sector, count, flags
		status     byte
		ops, bytes uint64 // charged
	}{
		{"read 4K", typeIn, 4096, [3]uint64{}, statusOK, 1, 4096},
		{"write 4K", typeOut, 4096, [3]uint64{}, statusOK, 1, 4096},
		{"read 0", typeIn, 0, [3]uint64{}, statusOK, 0, 0},
		{"read odd length", typeIn, 513, [3]uint64{}, statusIOErr, 0, 0},
		{"write odd length", typeOut, 511, [3]uint64{}, statusIOErr, 0, 0},
		{"flush", typeFlush, 0, [3]uint64{}, statusOK, 1, 0},
		{"get id", typeGetID, 20, [3]uint64{}, statusOK, 0, 0},
		{"discard 1 MiB", typeDiscard, 0, [3]uint64{0, 2048, 0}, statusOK, 1, 1 << 20},
		{"write zeroes 1 MiB", typeWriteZeroes, 0, [3]uint64{0, 2048, 0}, statusOK, 1, 1 << 20},
		{"write zeroes unmap 4K", typeWriteZeroes, 0, [3]uint64{8, 8, flagUnmap}, statusOK, 1, 4096},
		{"discard past the end", typeDiscard, 0, [3]uint64{2048, 1, 0}, statusIOErr, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := ratelimit.New(
				ratelimit.BucketConfig{Size: big, RefillTime: big},
				ratelimit.BucketConfig{Size: big, RefillTime: big},
				func() time.Duration { return 0 })
			r := newRig(t, Options{Backend: newFakeBackend(1 << 20), Limiter: lim}, 0)
			var status byte
			if tc.typ == typeDiscard || tc.typ == typeWriteZeroes {
				q, segs := r.zeroReq(tc.typ, tc.zero)
				status, _ = r.doSegs(q, segs)
			} else {
				status, _ = r.do(tc.typ, 0, nil, tc.dataLen)
			}
			if status != tc.status {
				t.Fatalf("status %d, want %d", status, tc.status)
			}
			if got := uint64(lim.Wait(big, 0)); got != tc.ops {
				t.Errorf("charged %d ops, want %d", got, tc.ops)
			}
			if got := uint64(lim.Wait(0, big)); got != tc.bytes {
				t.Errorf("charged %d bytes, want %d", got, tc.bytes)
			}
		})
	}
}
