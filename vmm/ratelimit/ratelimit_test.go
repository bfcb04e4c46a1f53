package ratelimit

import (
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Duration      { return time.Duration(c.now.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

func TestLimiterTable(t *testing.T) {
	type step struct {
		advance    time.Duration
		ops, bytes uint64
		want       bool
		wait       time.Duration // expected Wait(ops, bytes) before consuming; -1 = don't check
	}
	for _, c := range []struct {
		name       string
		ops, bytes BucketConfig
		steps      []step
	}{
		{"unlimited", BucketConfig{}, BucketConfig{}, []step{
			{0, 1 << 40, 1 << 60, true, 0},
			{0, math.MaxUint64, math.MaxUint64, true, 0},
		}},
		{"starts full then refills at size/refill", BucketConfig{Size: 10, RefillTime: time.Second}, BucketConfig{}, []step{
			{0, 10, 0, true, 0},
			{0, 1, 0, false, 100 * time.Millisecond},
			{99 * time.Millisecond, 1, 0, false, time.Millisecond},
			{time.Millisecond, 1, 0, true, 0},
			{250 * time.Millisecond, 3, 0, false, 50 * time.Millisecond}, // 2.5 tokens earned
			{50 * time.Millisecond, 3, 0, true, 0},
		}},
		{"refill caps at size", BucketConfig{Size: 5, RefillTime: time.Second}, BucketConfig{}, []step{
			{0, 5, 0, true, 0},
			{time.Hour, 5, 0, true, 0}, // an hour earned only 5
			{0, 1, 0, false, 200 * time.Millisecond},
		}},
		{"one-time burst spent first, never refilled", BucketConfig{Size: 2, OneTimeBurst: 5, RefillTime: time.Second}, BucketConfig{}, []step{
			{0, 5, 0, true, 0}, // burst
			{0, 2, 0, true, 0}, // budget
			{0, 1, 0, false, 500 * time.Millisecond},
			{10 * time.Second, 2, 0, true, 0}, // bucket full at 2, burst gone
			{0, 1, 0, false, 500 * time.Millisecond},
		}},
		{"burst and budget combined", BucketConfig{Size: 4, OneTimeBurst: 3, RefillTime: time.Second}, BucketConfig{}, []step{
			{0, 7, 0, true, 0},
			{0, 1, 0, false, 250 * time.Millisecond},
		}},
		{"failed consume takes nothing", BucketConfig{Size: 4, OneTimeBurst: 3, RefillTime: time.Second}, BucketConfig{}, []step{
			{0, 5, 0, true, 0}, // 3 burst + 2 budget
			{0, 3, 0, false, 250 * time.Millisecond},
			{0, 2, 0, true, 0}, // the refused call took nothing
		}},
		{"oversized request allowed when full, leaves debt", BucketConfig{}, BucketConfig{Size: 1000, RefillTime: time.Second}, []step{
			{0, 0, 3000, true, 0},
			{time.Second, 0, 1, false, time.Second + time.Millisecond}, // debt 2000, 1000 repaid: need 1001 more
			{2 * time.Second, 0, 1000, true, 0},
			{0, 0, 5000, false, time.Second},
		}},
		{"oversized waits for a full bucket", BucketConfig{Size: 10, RefillTime: time.Second}, BucketConfig{Size: 100, RefillTime: time.Second}, []step{
			{0, 1, 50, true, 0},
			{0, 1, 101, false, 500 * time.Millisecond}, // 101 > size: needs all 100
			{500 * time.Millisecond, 1, 101, true, 0},
		}},
		{"ops refused keeps bytes", BucketConfig{Size: 1, RefillTime: time.Second}, BucketConfig{Size: 100, RefillTime: time.Second}, []step{
			{0, 1, 10, true, 0},
			{0, 1, 10, false, time.Second},
			{0, 0, 90, true, 0}, // the refused call took no bytes
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var clk fakeClock
			l := New(c.ops, c.bytes, clk.Now)
			for i, s := range c.steps {
				clk.Advance(s.advance)
				if s.wait >= 0 {
					if got := l.Wait(s.ops, s.bytes); got != s.wait {
						t.Errorf("step %d: Wait=%v, want %v", i, got, s.wait)
					}
				}
				got := l.Consume(s.ops, s.bytes)
				if got != s.want {
					t.Fatalf("step %d: Consume(%d, %d)=%v, want %v", i, s.ops, s.bytes, got, s.want)
				}
			}
		})
	}
}

// TestRateOverTwoSeconds checks that the delivered rate matches the limit
// within 10% over 2 s of simulated time, for several bucket shapes.
func TestRateOverTwoSeconds(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  BucketConfig
		req  uint64 // tokens per request
		rate float64
	}{
		{"1000 IOPS, 1 s bucket", BucketConfig{Size: 1000, RefillTime: time.Second}, 1, 1000},
		{"1000 IOPS, 100 ms bucket", BucketConfig{Size: 100, RefillTime: 100 * time.Millisecond}, 1, 1000},
		{"500 IOPS, 1-token bucket", BucketConfig{Size: 1, RefillTime: 2 * time.Millisecond}, 1, 500},
		{"7 IOPS", BucketConfig{Size: 7, RefillTime: time.Second}, 1, 7},
		{"50 MB/s in 4 KiB requests", BucketConfig{Size: 50e6, RefillTime: time.Second}, 4096, 50e6 / 4096},
		{"1 MB/s in 1 MiB requests (oversized)", BucketConfig{Size: 1e5, RefillTime: 100 * time.Millisecond}, 1 << 20, 1e6 / (1 << 20)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var clk fakeClock
			l := New(BucketConfig{}, c.cfg, clk.Now)
			for l.Consume(0, c.req) { // drain the initial full bucket
			}
			got := 0
			const step = 100 * time.Microsecond
			for clk.Now() < 2*time.Second {
				clk.Advance(step)
				for l.Consume(0, c.req) {
					got++
				}
			}
			want := c.rate * 2
			if float64(got) < want*0.9-1 || float64(got) > want*1.1+1 {
				t.Errorf("%d requests in 2 s, want %.1f ±10%%", got, want)
			}
		})
	}
}

// TestConcurrentRealClock hammers one limiter from several goroutines on
// the real clock: the total can never exceed what the bucket allows. (The
// delivered rate is checked on the simulated clock above; on a shared,
// loaded machine a lower bound here would be flaky.)
func TestConcurrentRealClock(t *testing.T) {
	const size, rate = 100, 2000 // tokens, per second
	l := New(BucketConfig{Size: size, RefillTime: size * time.Second / rate}, BucketConfig{}, nil)
	start := time.Now()
	var got atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Since(start) < 300*time.Millisecond {
				if l.Consume(1, 0) {
					got.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	limit := size + rate*elapsed
	if n := float64(got.Load()); n > limit+1 || n < size {
		t.Errorf("%v ops in %.3fs, limit %.0f", n, elapsed, limit)
	}
}

// clone copies l's state onto a new fake clock at now.
func clone(l *Limiter, now time.Duration) (*Limiter, *fakeClock) {
	clk := &fakeClock{}
	clk.now.Store(int64(now))
	return &Limiter{clock: clk.Now, ops: l.ops, bytes: l.bytes}, clk
}

func FuzzLimiter(f *testing.F) {
	seed := func(vals ...uint64) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
		return b
	}
	f.Add(seed(1000, 0, uint64(time.Second), 100, 5000, uint64(time.Second), 0, 3, 50, 1000, 7, 1<<20))
	f.Add(seed(1, 1<<63, 1, math.MaxUint64, math.MaxUint64, math.MaxUint64, math.MaxUint64, 1, 1))
	f.Add(seed(math.MaxUint64, math.MaxUint64, math.MaxUint64, 1, 1, 1, 1<<62, 1<<62, 1<<62))
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func() uint64 {
			if len(data) < 8 {
				data = nil
				return 0
			}
			v := binary.LittleEndian.Uint64(data)
			data = data[8:]
			return v
		}
		dur := func(v uint64) time.Duration { return time.Duration(v % uint64(24*time.Hour)) }
		ops := BucketConfig{Size: next(), OneTimeBurst: next(), RefillTime: time.Duration(next())}
		bytes := BucketConfig{Size: next(), OneTimeBurst: next(), RefillTime: time.Duration(next())}
		var clk fakeClock
		l := New(ops, bytes, clk.Now)
		for len(data) >= 24 {
			clk.Advance(dur(next()))
			o, b := next(), next()
			d := l.Wait(o, b)
			if d < 0 {
				t.Fatalf("negative wait %v", d)
			}
			if d > 0 && d < 24*time.Hour {
				// Wait is exact: consuming succeeds at now+d, not a nanosecond earlier.
				early, ec := clone(l, clk.Now())
				ec.Advance(d - 1)
				if early.Consume(o, b) {
					t.Fatalf("Consume(%d,%d) succeeded %v early (wait %v)", o, b, time.Duration(1), d)
				}
				onTime, oc := clone(l, clk.Now())
				oc.Advance(d)
				if !onTime.Consume(o, b) {
					t.Fatalf("Consume(%d,%d) failed after waiting %v", o, b, d)
				}
			}
			if ok := l.Consume(o, b); ok != (d == 0) {
				t.Fatalf("Consume=%v but Wait=%v", ok, d)
			}
			for _, bk := range []*bucket{&l.ops, &l.bytes} {
				if bk.budget > bk.size || bk.budget < -maxTokens || bk.burst > maxTokens {
					t.Fatalf("bucket out of bounds: %+v", *bk)
				}
				if bk.size != 0 && bk.rem >= bk.refill {
					t.Fatalf("remainder %d >= refill %d", bk.rem, bk.refill)
				}
			}
		}
	})
}

func BenchmarkConsume(b *testing.B) {
	l := New(BucketConfig{Size: 1 << 40, RefillTime: time.Second}, BucketConfig{Size: 1 << 50, RefillTime: time.Second}, nil)
	b.ReportAllocs()
	for b.Loop() {
		l.Consume(1, 4096)
	}
}

func BenchmarkConsumeParallel(b *testing.B) {
	l := New(BucketConfig{Size: 1 << 40, RefillTime: time.Second}, BucketConfig{Size: 1 << 50, RefillTime: time.Second}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Consume(1, 4096)
		}
	})
}
