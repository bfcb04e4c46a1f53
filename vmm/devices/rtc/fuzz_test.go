package rtc

import (
	"testing"
	"time"
)

// FuzzRTC drives the RTC with arbitrary access sequences while the host
// clock moves: a control byte (bit 0 port, width 1<<bits 1-2, bit 3
// write, bits 4-7 clock advance in 100 ms steps) followed by value bytes.
// Nothing may panic and register D must stay valid.
func FuzzRTC(f *testing.F) {
	f.Add([]byte{0x08, 0x0B, 0x09, 0x86, 0x08, 0x09, 0x09, 0x99, 0x08, 0x32, 0x09, 0x99, 0x08, 0x0B, 0xF9, 0x06, 0x01})
	f.Add([]byte{0x0A, 0x04, 0x92, 0x08, 0x0C, 0xF1, 0xF1, 0x08, 0x0A, 0x01})
	f.Add([]byte{0x08, 0x0B, 0x09, 0x82, 0x08, 0x08, 0x09, 0xFF, 0x08, 0x07, 0x09, 0x00, 0x08, 0x0B, 0x09, 0x00, 0x01})
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := &clock{t: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
		d := New(Options{Now: c.now})
		var buf [8]byte
		for len(ops) > 0 {
			op := ops[0]
			ops = ops[1:]
			c.t = c.t.Add(time.Duration(op>>4) * 100 * time.Millisecond)
			off := uint64(op & 1)
			width := 1 << (op >> 1 & 3)
			if op&0x08 != 0 {
				n := copy(buf[:width], ops)
				ops = ops[n:]
				d.Write(off, buf[:width])
			} else {
				d.Read(off, buf[:width])
			}
			if v := get(d, regD); v != dVRT {
				t.Fatalf("register D %#x", v)
			}
		}
	})
}
