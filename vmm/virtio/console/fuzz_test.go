package console

import (
	"bytes"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// FuzzConsole drives both queues from the input: chains of up to three
// buffers anywhere in (or past) guest RAM, readable or writable, on either
// queue, kicks, and host input of any length between them. The device
// must not panic, must keep RAM's guards intact, and must never give the
// guest more input than
// it was given. Each step is 8 bytes: an operation (post a chain on the
// receive or transmit ring, kick, input), its argument, then three
// buffers of (512-byte page, length).
func FuzzConsole(f *testing.F) {
	f.Add([]byte{0, 1, 0x80, 16, 0x81, 8, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0x90, 32, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0xff, 255, 0x1f, 255, 0x80, 1, 1, 1, 2, 0, 3, 255, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		d, g := setup(t, Options{Backlog: 64, MaxBuffers: 2})
		var given bytes.Buffer
		for len(in) >= 8 {
			step := in[:8]
			in = in[8:]
			switch step[0] % 4 {
			case 0, 1: // post a chain on queue step[0]%2 (0: receive, 1: transmit)
				drv := g.rx
				write := true
				if step[0]%2 == 1 {
					drv, write = g.tx, false
				}
				var bufs []virtiotest.Buf
				for i := 0; i < 3; i++ {
					page, n := step[2+2*i], step[3+2*i]
					if n == 0 {
						continue
					}
					// Pages 0x80-0x9f are the buffer area; others land on
					// the rings or past the end of RAM.
					bufs = append(bufs, virtiotest.Buf{Addr: uint64(page) << 9, Len: uint32(n), Write: write != (page&1 == 1 && step[1]&1 == 1)})
				}
				if len(bufs) > 0 {
					drv.Post(bufs...)
				}
			case 2: // kick a queue
				d.Kick(int(step[1] % 3))
			case 3: // host input
				p := bytes.Repeat([]byte{'i'}, int(step[1]))
				given.Write(p[:d.Input(p)])
			}
		}
		if err := g.ram.CheckGuards(); err != nil {
			t.Fatal(err)
		}
		// What the guest got (used lengths on the receive ring) is at
		// most what it was given.
		if g.rx.UsedIdx() > qsize {
			return // older used elements were overwritten
		}
		var got uint32
		for i := uint16(0); i < g.rx.UsedIdx(); i++ {
			_, n := g.rx.UsedElem(i)
			got += n
		}
		if int(got) > given.Len() {
			t.Errorf("the guest got %d input bytes, %d were given", got, given.Len())
		}
	})
}
