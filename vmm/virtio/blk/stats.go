package blk

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
)

// A disk counts its requests by class as the guest sees them: from the
// moment the device pops a request off its queue to the moment it gives
// the request back, so time spent waiting for the rate limiter or a free
// Backend slot is part of a request's latency, as it is for the guest.
// cgroup's io.stat cannot say this: it counts block devices only (not an
// image on tmpfs or in a page cache) and has no latencies.
//
// Recording is a few atomic adds per request, no allocation and no lock:
// the counters are read while the queues run.

// Class is the kind of request a disk counts.
type Class uint8

// Request classes: the transfers, the flushes, and the requests that
// deallocate or zero a range (DISCARD, WRITE_ZEROES).
const (
	ClassRead Class = iota
	ClassWrite
	ClassFlush
	ClassDiscard
	NumClasses
)

func (c Class) String() string {
	return [...]string{"read", "write", "flush", "discard"}[c]
}

// LatencyBuckets is the number of latency buckets: bucket k counts the
// requests that took at most 2^k µs, k < LatencyBuckets-1 (1 µs to ~1 s);
// the last counts the slower ones. Powers of two cover a RAM-backed read
// and a request stuck behind a limiter with equal relative precision.
const LatencyBuckets = 22

// BucketBound returns bucket k's upper bound (the last one's is +Inf,
// returned as 0).
func BucketBound(k int) time.Duration {
	if k >= LatencyBuckets-1 {
		return 0
	}
	return time.Microsecond << k
}

// ClassStats is one class's counters.
type ClassStats struct {
	Requests uint64 // completed requests, failed ones included
	Bytes    uint64 // bytes read or written (zeroed or discarded for ClassDiscard)
	Errors   uint64 // requests completed with a status other than OK
	Nanos    uint64 // sum of the requests' latencies
	Buckets  [LatencyBuckets]uint64
}

// Stats is a disk's counters by class.
type Stats [NumClasses]ClassStats

type classCounters struct {
	requests, bytes, errors, nanos atomic.Uint64
	buckets                        [LatencyBuckets]atomic.Uint64
}

type counters [NumClasses]classCounters

// epoch is the zero of request timestamps: time.Since reads the monotonic
// clock without allocating.
var epoch = time.Now()

func now() int64 { return int64(time.Since(epoch)) }

// classOf maps a Backend operation to its class.
func classOf(op block.Op) (Class, bool) {
	switch op {
	case block.Read:
		return ClassRead, true
	case block.Write:
		return ClassWrite, true
	case block.Flush:
		return ClassFlush, true
	case block.Discard, block.WriteZeroes:
		return ClassDiscard, true
	}
	return 0, false
}

// bucketOf returns the bucket of a latency in nanoseconds.
func bucketOf(ns int64) int {
	if ns <= 0 {
		return 0
	}
	us := (uint64(ns) + 999) / 1000 // rounded up: a bucket is an upper bound
	return min(bits.Len64(us-1), LatencyBuckets-1)
}

// record counts one finished request of op that moved n bytes, began at
// start (now()) and ended with status.
func (c *counters) record(op block.Op, n uint64, start int64, status uint8) {
	cl, ok := classOf(op)
	if !ok {
		return // GET_ID, or a request refused before its type was known
	}
	lat := now() - start
	s := &c[cl]
	s.requests.Add(1)
	s.bytes.Add(n)
	if status != statusOK {
		s.errors.Add(1)
	}
	s.nanos.Add(uint64(max(lat, 0)))
	s.buckets[bucketOf(lat)].Add(1)
}

// Stats returns the disk's counters since it was made. The counts are read
// one by one while requests complete, so a snapshot may be a request
// behind in one counter and not in another.
func (d *Device) Stats() Stats {
	var out Stats
	for i := range d.counters {
		c, o := &d.counters[i], &out[i]
		o.Requests, o.Bytes, o.Errors, o.Nanos = c.requests.Load(), c.bytes.Load(), c.errors.Load(), c.nanos.Load()
		for k := range c.buckets {
			o.Buckets[k] = c.buckets[k].Load()
		}
	}
	return out
}
