package uplink

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// BenchmarkVeth measures frames/s from one uplink to the other through a
// veth pair, a batch of 32 written with WriteBatch and read back with
// ReadBatch before the next. ns/op is per frame; both calls must be
// allocation-free.
func BenchmarkVeth(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			p := newPair(b)
			const batch = 32
			frames := make([][]byte, batch)
			for i := range frames {
				frames[i] = testFrame(foreignMAC, testType, size, 'B', uint16(i))
			}
			r := newReader(p.b, batch, HdrLen+2048)
			if err := p.b.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			for done := 0; done < b.N; done += batch {
				if _, err := p.a.WriteBatch(frames); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < batch; {
					n, err := p.b.ReadBatch(r.bufs, r.lens)
					if err != nil {
						b.Fatal(err)
					}
					for i := 0; i < n; i++ {
						if binary.BigEndian.Uint16(r.bufs[i][HdrLen+12:]) == testType {
							got++
						}
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
			if d := p.a.Dropped() + p.b.Dropped(); d != 0 {
				b.Errorf("Dropped = %d", d)
			}
		})
	}
}
