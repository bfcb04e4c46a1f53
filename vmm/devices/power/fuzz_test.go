package power

import (
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
)

// FuzzPower drives the three devices with arbitrary accesses: a control
// byte (bits 0-1 device: sleep, reset, GED, button press; bits 2-4 offset;
// width 1<<bits 5-6; bit 7 write) followed by value bytes. Nothing may
// panic and the GED line must be high exactly while an event is pending.
func FuzzPower(f *testing.F) {
	f.Add([]byte{0x80, 0x34, 0x84, 0x80, 0x03, 0xC2, 0, 0, 0, 0, 0x42})
	f.Add([]byte{0x81, 0x02, 0x81, 0x06, 0x01, 0x03, 0x03, 0x06, 0x42})
	f.Add([]byte{0x80, 0x24, 0x00, 0x84, 0x80, 0x01, 0x03, 0x22, 0x02, 0x62})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var line irqtest.Recorder
		s, r, g := NewSleep(func() {}), NewReset(func() {}), NewGED(&line)
		var buf [8]byte
		for len(ops) > 0 {
			c := ops[0]
			ops = ops[1:]
			off := uint64(c >> 2 & 7)
			width := 1 << (c >> 5 & 3)
			var dev interface {
				Read(uint64, []byte)
				Write(uint64, []byte)
			}
			switch c & 3 {
			case 0:
				dev = s
			case 1:
				dev = r
			case 2:
				dev = g
			case 3:
				g.PowerButton()
				continue
			}
			if c&0x80 != 0 {
				n := copy(buf[:width], ops)
				ops = ops[n:]
				dev.Write(off, buf[:width])
			} else {
				dev.Read(off, buf[:width])
			}
			g.mu.Lock()
			pending := g.pending != 0
			g.mu.Unlock()
			if line.Level() != pending {
				t.Fatalf("GED line %v, pending %v", line.Level(), pending)
			}
		}
	})
}
