// Package ratelimit implements token-bucket rate limiting in Firecracker's
// model, shared by disks (IOPS and bytes/s) and the network switch (packets
// and bytes/s).
//
// A bucket holds up to Size tokens and refills from empty to full in
// RefillTime, continuously; it starts full. OneTimeBurst tokens are spent
// before the bucket's own and are never refilled, which lets a VM boot
// faster than its steady-state limit. A request larger than Size can never
// fit; it is allowed when the bucket is full and leaves the bucket in debt,
// so the long-run rate still holds.
package ratelimit

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// Clock returns monotonic time since an arbitrary fixed origin. Tests inject
// a fake one.
type Clock func() time.Duration

// maxTokens bounds every token count so that sums and differences of two
// of them never overflow an int64.
const maxTokens = 1 << 62

// BucketConfig describes one bucket. The zero value (Size 0 or RefillTime
// 0) means unlimited.
type BucketConfig struct {
	Size         uint64
	OneTimeBurst uint64
	RefillTime   time.Duration
}

func (c BucketConfig) unlimited() bool { return c.Size == 0 || c.RefillTime <= 0 }

// bucket is one token bucket; the Limiter's mutex guards it.
type bucket struct {
	size   int64  // 0 = unlimited
	refill uint64 // nanoseconds to refill from 0 to size
	budget int64  // tokens available; negative after an oversized request
	burst  uint64 // one-time burst tokens left
	rem    uint64 // fractional token carried between refills, in 1/refill units
	last   time.Duration
}

func newBucket(c BucketConfig, now time.Duration) bucket {
	if c.unlimited() {
		return bucket{}
	}
	size := int64(min(c.Size, maxTokens))
	return bucket{size: size, refill: uint64(c.RefillTime), budget: size, burst: min(c.OneTimeBurst, maxTokens), last: now}
}

// update adds the tokens earned since the last update: elapsed*size/refill,
// computed in 128 bits with the remainder carried, so no token is lost or
// invented by rounding however often it is called.
func (b *bucket) update(now time.Duration) {
	if now <= b.last { // clock did not move (or a fake clock went back)
		return
	}
	elapsed := uint64(now - b.last)
	b.last = now
	if b.budget >= b.size {
		b.rem = 0
		return
	}
	hi, lo := bits.Mul64(elapsed, uint64(b.size))
	var carry uint64
	lo, carry = bits.Add64(lo, b.rem, 0)
	hi += carry
	if hi >= b.refill { // quotient >= 2^64: certainly full
		b.budget, b.rem = b.size, 0
		return
	}
	q, r := bits.Div64(hi, lo, b.refill)
	if q >= uint64(b.size-b.budget) { // b.size-b.budget <= 2^63
		b.budget, b.rem = b.size, 0
		return
	}
	b.budget += int64(q)
	b.rem = r
}

// need reports how many tokens of n must come from the budget after the
// one-time burst, and whether the budget allows them.
func (b *bucket) need(n uint64) (fromBudget int64, ok bool) {
	if n <= b.burst {
		return 0, true
	}
	rest := int64(min(n-b.burst, maxTokens))
	return rest, rest <= b.budget || (rest > b.size && b.budget >= b.size)
}

func (b *bucket) commit(n uint64, fromBudget int64) {
	b.burst -= min(n, b.burst)
	b.budget -= fromBudget
}

// wait returns how long until need(n) would succeed, after update.
func (b *bucket) wait(n uint64) time.Duration {
	rest, ok := b.need(n)
	if ok {
		return 0
	}
	target := min(rest, b.size) // an oversized request waits for a full bucket
	deficit := uint64(target - b.budget)
	// ceil((deficit*refill - rem) / size); rem < refill <= deficit*refill.
	hi, lo := bits.Mul64(deficit, b.refill)
	var borrow, carry uint64
	lo, borrow = bits.Sub64(lo, b.rem, 0)
	hi -= borrow
	lo, carry = bits.Add64(lo, uint64(b.size)-1, 0)
	hi += carry
	if hi >= uint64(b.size) {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, uint64(b.size))
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(q)
}

// Limiter pairs an operations bucket with a bytes bucket. It is safe for
// concurrent use and does not allocate.
type Limiter struct {
	mu    sync.Mutex
	clock Clock
	ops   bucket
	bytes bucket
}

// New returns a limiter; a nil clock means the real monotonic clock.
func New(ops, bytes BucketConfig, clock Clock) *Limiter {
	if clock == nil {
		start := time.Now()
		clock = func() time.Duration { return time.Since(start) }
	}
	now := clock()
	return &Limiter{clock: clock, ops: newBucket(ops, now), bytes: newBucket(bytes, now)}
}

// Consume takes ops operations and n bytes if both buckets allow it, and
// nothing otherwise.
func (l *Limiter) Consume(ops, n uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	var fo, fb int64
	if l.ops.size != 0 {
		l.ops.update(now)
		var ok bool
		if fo, ok = l.ops.need(ops); !ok {
			return false
		}
	}
	if l.bytes.size != 0 {
		l.bytes.update(now)
		var ok bool
		if fb, ok = l.bytes.need(n); !ok {
			return false
		}
	}
	if l.ops.size != 0 {
		l.ops.commit(ops, fo)
	}
	if l.bytes.size != 0 {
		l.bytes.commit(n, fb)
	}
	return true
}

// Wait returns how long until Consume(ops, n) would succeed if nothing else
// consumed meanwhile; 0 means now. A device arms a timer for it instead of
// polling.
func (l *Limiter) Wait(ops, n uint64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	var d time.Duration
	if l.ops.size != 0 {
		l.ops.update(now)
		d = l.ops.wait(ops)
	}
	if l.bytes.size != 0 {
		l.bytes.update(now)
		d = max(d, l.bytes.wait(n))
	}
	return d
}

// Unlimited reports whether neither bucket limits anything, so callers can
// skip the limiter entirely.
func (l *Limiter) Unlimited() bool { return l.ops.size == 0 && l.bytes.size == 0 }
