package blk

import (
	"testing"
	"time"
)

func TestBucketOf(t *testing.T) {
	for _, tc := range []struct {
		ns   int64
		want int
	}{
		{-5, 0}, {0, 0}, {1, 0}, {1000, 0}, {1001, 1}, {2000, 1}, {2001, 2}, {4000, 2},
		{int64(time.Second), 20}, {int64(1<<20) * 1000, 20}, {int64(1<<20)*1000 + 1, 21}, {1 << 62, 21},
	} {
		if got := bucketOf(tc.ns); got != tc.want {
			t.Errorf("bucketOf(%d) = %d, want %d", tc.ns, got, tc.want)
		}
		if b := BucketBound(tc.want); b != 0 && time.Duration(tc.ns) > b {
			t.Errorf("%d ns counted in bucket %d, bounded by %v", tc.ns, tc.want, b)
		}
	}
}

// TestStats: each class counts its requests, bytes, failures and
// latencies; a request the backend holds is as slow as the hold.
func TestStats(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	r := newRig(t, Options{Backend: fb}, 0)
	for i := range 3 {
		if s, _ := r.do(typeOut, uint64(8*i), make([]byte, 4096), 4096); s != statusOK {
			t.Fatalf("write: status %d", s)
		}
	}
	if s, _ := r.do(typeIn, 0, nil, 1024); s != statusOK {
		t.Fatalf("read: status %d", s)
	}
	if s, _ := r.do(typeIn, 2048, nil, 512); s != statusIOErr {
		t.Fatalf("read past the end: status %d", s)
	}
	if s, _ := r.do(typeFlush, 0, nil, 0); s != statusOK {
		t.Fatalf("flush: status %d", s)
	}
	if s, _ := r.do(typeGetID, 0, nil, 20); s != statusOK {
		t.Fatalf("get id: status %d", s)
	}

	// A held read: its latency is at least the hold.
	const hold = 30 * time.Millisecond
	fb.mu.Lock()
	fb.hold = true
	fb.mu.Unlock()
	q := r.newReq(typeIn, 16, 512)
	r.submit(0, q, q.segs(typeIn))
	for fb.heldCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(hold)
	fb.release()
	r.wait(0, 1, 5*time.Second)

	st := r.dev.Stats()
	check := func(c Class, reqs, bytes, errs uint64) {
		t.Helper()
		s := st[c]
		if s.Requests != reqs || s.Bytes != bytes || s.Errors != errs {
			t.Errorf("%v: %d requests, %d bytes, %d errors; want %d, %d, %d", c, s.Requests, s.Bytes, s.Errors, reqs, bytes, errs)
		}
		var n uint64
		for _, b := range s.Buckets {
			n += b
		}
		if n != s.Requests {
			t.Errorf("%v: buckets hold %d requests, want %d", c, n, s.Requests)
		}
	}
	check(ClassWrite, 3, 3*4096, 0)
	check(ClassRead, 3, 1024+512, 1)
	check(ClassFlush, 1, 0, 0)
	check(ClassDiscard, 0, 0, 0)
	rd := st[ClassRead]
	if rd.Nanos < uint64(hold) {
		t.Errorf("reads took %v in all, want at least the %v hold", time.Duration(rd.Nanos), hold)
	}
	slow := 0
	for k := range rd.Buckets {
		if b := BucketBound(k); rd.Buckets[k] > 0 && (b == 0 || b >= hold) {
			slow += int(rd.Buckets[k])
		}
	}
	if slow != 1 {
		t.Errorf("%d reads in buckets of %v or more, want the held one: %v", slow, hold, rd.Buckets)
	}
}
