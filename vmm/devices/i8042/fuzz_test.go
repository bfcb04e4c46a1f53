package i8042

import (
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
)

// FuzzI8042 drives the controller with arbitrary access sequences: a
// control byte (offset in bits 0-2, width 1<<bits 4-5, bit 6 write)
// followed by the value bytes. Nothing may panic, the queue stays bounded
// and at most one interrupt line is high.
func FuzzI8042(f *testing.F) {
	f.Add([]byte{0x44, 0xAA, 0x04, 0x00, 0x44, 0x20, 0x00, 0x44, 0x60, 0x40, 0x03, 0x44, 0xD3, 0x40, 0x5A, 0x04, 0x00})
	f.Add([]byte{0x44, 0xD4, 0x40, 0xFF, 0x40, 0xF2, 0x00, 0x44, 0xFE})
	f.Add([]byte{0x74, 0xD1, 0xDE, 0, 0, 0, 0, 0, 0, 0x30, 0x13})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var kbd, aux irqtest.Recorder
		d := New(Options{Reset: func() {}, KbdIRQ: &kbd, AuxIRQ: &aux})
		var buf [8]byte
		for len(ops) > 0 {
			c := ops[0]
			ops = ops[1:]
			off := uint64(c & 0x07)
			width := 1 << (c >> 4 & 3)
			if c&0x40 != 0 {
				n := copy(buf[:width], ops)
				ops = ops[n:]
				d.Write(off, buf[:width])
			} else {
				d.Read(off, buf[:width])
			}
			if kbd.Level() && aux.Level() {
				t.Fatal("both interrupt lines high")
			}
			d.mu.Lock()
			n := d.qLen
			d.mu.Unlock()
			if n > queueSize {
				t.Fatalf("queue holds %d", n)
			}
		}
	})
}
