package tap

import (
	"encoding/binary"
	"testing"
	"time"
)

// BenchmarkEcho measures frames/s through the tap and the kernel: batches of
// ICMP echo requests written with WriteBatch, the replies read back with
// ReadBatch. Both directions must be allocation-free.
func BenchmarkEcho(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(map[int]string{64: "64B", 1500: "1500B"}[size], func(b *testing.B) {
			tp, _ := setup(b, Options{MAC: kernelMAC})
			const batch = 32
			payload := make([]byte, size-14-20-8)
			frames := make([][]byte, batch)
			for i := range frames {
				ip := ipv4(1, peerIP, kernelIP, icmpEcho(0x4242, uint16(i), payload))
				frames[i] = withHdr([HdrLen]byte{}, ether(kernelMAC, peerMAC, 0x0800, ip))
			}
			bufs, lens := make([][]byte, batch), make([]int, batch)
			for i := range bufs {
				bufs[i] = make([]byte, HdrLen+2048)
			}
			if err := tp.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			for done := 0; done < b.N; done += batch {
				if _, err := tp.WriteBatch(frames); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < batch; {
					n, err := tp.ReadBatch(bufs, lens)
					if err != nil {
						b.Fatal(err)
					}
					for i := 0; i < n; i++ {
						f := bufs[i][HdrLen:lens[i]]
						if binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 1 && f[34] == 0 {
							got++
						}
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
		})
	}
}
