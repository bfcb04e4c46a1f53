package serial

import (
	"bytes"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
)

// FuzzSerial drives the UART with arbitrary access sequences. Each op is a
// control byte — offset in bits 0-3 (so it strays past the 8 ports), width
// 1<<bits 4-5, bit 6 write, bit 7 host input — followed by the value bytes.
// It checks that nothing panics, that the interrupt line always matches
// what IIR reports, and that the bytes transmitted are exactly the THR
// writes a model of LCR.DLAB and MCR.LOOP says reach the line (the line
// check restates the device's own rule; this one does not).
func FuzzSerial(f *testing.F) {
	f.Add([]byte{0x43, 0x80, 0x40, 0x01, 0x41, 0x00, 0x43, 0x03, 0x42, 0xC7, 0x44, 0x0B, 0x41, 0x0F, 0x40, 'h', 0x85, 'a', 0x02, 0x05, 0x00})
	f.Add([]byte{0x44, 0x1A, 0x06, 0x44, 0x00, 0x43, 0xBF, 0x42, 0x00, 0x43, 0x00, 0x42, 0x01, 0x02})
	f.Add([]byte{0x44, 0x08, 0x41, 0x02, 0x02, 0x40, 'x', 0x41, 0x00, 0x70, 1, 2, 3, 4, 5, 6, 7, 8, 0x3E})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var line irqtest.Recorder
		var sent bytes.Buffer
		d := New(Options{Out: &sent, IRQ: &line, Backlog: 32})
		var want []byte
		var lcr, mcr byte
		var buf [8]byte
		for len(ops) > 0 {
			c := ops[0]
			ops = ops[1:]
			off := uint64(c & 0x0F)
			width := 1 << (c >> 4 & 3)
			switch {
			case c&0x80 != 0:
				n := min(int(c&0x3F), len(ops))
				d.Input(ops[:n])
				ops = ops[n:]
			case c&0x40 != 0:
				n := copy(buf[:width], ops)
				ops = ops[n:]
				d.Write(off, buf[:width])
				// A wide access writes consecutive registers in order.
				for i, v := range buf[:width] {
					switch off + uint64(i) {
					case regData:
						if lcr&lcrDLAB == 0 && mcr&mcrLoop == 0 {
							want = append(want, v)
						}
					case regLCR:
						lcr = v
					case regMCR:
						mcr = v
					}
				}
				if !bytes.Equal(sent.Bytes(), want) {
					t.Fatalf("transmitted % x, want % x", sent.Bytes(), want)
				}
			default:
				d.Read(off, buf[:width])
			}
			if v := in(d, regIIR); v&0x30 != 0 {
				t.Fatalf("IIR %#x has reserved bits", v)
			}
			if v := in(d, regLSR); v&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
				t.Fatalf("LSR %#x: transmitter not idle", v)
			}
			d.mu.Lock()
			want := d.mcr&(mcrOUT2|mcrLoop) == mcrOUT2 && d.iidLocked() != iirNone
			n := d.rxLen
			d.mu.Unlock()
			if line.Level() != want {
				t.Fatalf("line %v, pending-and-enabled %v", line.Level(), want)
			}
			if n > 32 {
				t.Fatalf("receive buffer holds %d bytes, bound 32", n)
			}
		}
	})
}
