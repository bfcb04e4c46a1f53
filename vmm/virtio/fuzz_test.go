package virtio

import (
	"bytes"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"
)

// Fuzzed guest: two small RAM regions with a hole between them, rings at
// fixed places in the first region. The input is a 3-byte header (queue
// size, features, available ring alignment) followed by the initial RAM
// contents, so descriptors, ring indices and entries, indirect tables and
// used_event are all the fuzzer's.
const (
	fuzzRAM0   = 0x1000 // region 0: [0, 0x1000)
	fuzzRAM1   = 0x3000 // region 1: [0x3000, 0x4000)
	fuzzDesc   = 0x000  // up to 16 descriptors: 0x100 bytes
	fuzzAvail  = 0x100
	fuzzUsed   = 0x180
	fuzzHeader = 3
)

// FuzzQueue activates a queue over fuzzed RAM and runs the device's data
// path on it: Pop, Walk, Read, Write, Push (or PushDeferred and
// PublishUsed), NeedInterrupt and EnableNotifications must never panic, never write outside RAM (the
// guards around each region stay intact), and keep their invariants.
func FuzzQueue(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < fuzzHeader {
			return
		}
		mem := virtiotest.NewRAMAt(virtiotest.Span{GPA: 0, Size: fuzzRAM0}, virtiotest.Span{GPA: fuzzRAM1, Size: 0x1000})
		copy(mem.Bytes(0, fuzzRAM0), data[fuzzHeader:])
		if len(data) > fuzzHeader+fuzzRAM0 {
			copy(mem.Bytes(fuzzRAM1, 0x1000), data[fuzzHeader+fuzzRAM0:])
		}
		q, err := NewQueue(16)
		if err != nil {
			t.Fatal(err)
		}
		q.Size = 1 << (data[0] % 6) // 1..32: 32 exceeds the maximum
		q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = fuzzDesc, fuzzAvail+uint64(data[2]&3), fuzzUsed, true
		var feat uint64 = FeatureVersion1
		if data[1]&1 != 0 {
			feat |= FeatureRingIndirectDesc
		}
		if data[1]&2 != 0 {
			feat |= FeatureRingEventIdx
		}
		deferred := data[1]&4 != 0 // PushDeferred and PublishUsed instead of Push
		if err := q.Activate(mem, feat); err != nil {
			if q.Size <= 16 && data[2]&1 == 0 {
				t.Fatalf("Activate of a valid configuration: %v", err)
			}
			return
		}
		var c Chain
		var buf [64]byte
		pushes := uint16(0)
		for range 40 {
			head, ok, err := q.Pop()
			if err != nil || !ok {
				break
			}
			if head >= q.size {
				t.Fatalf("Pop returned head %d on a queue of size %d", head, q.size)
			}
			if err := q.Walk(head, &c); err == nil {
				var r, w uint64
				for _, b := range c.Readable() {
					r += uint64(len(b))
				}
				for _, b := range c.Writable() {
					w += uint64(len(b))
				}
				if r != uint64(c.ReadLen()) || w != uint64(c.WriteLen()) || r+w > 1<<32-1 {
					t.Fatalf("lengths %d/%d, buffers hold %d/%d", c.ReadLen(), c.WriteLen(), r, w)
				}
				for {
					if _, err := c.Read(buf[:]); err != nil {
						break
					}
				}
				for i := range buf {
					buf[i] = byte(i)
				}
				for {
					if _, err := c.Write(buf[:]); err != nil {
						break
					}
				}
				if c.Written() != c.WriteLen() {
					t.Fatalf("wrote %d of %d writable bytes", c.Written(), c.WriteLen())
				}
			} else if c.Head != head {
				t.Fatalf("failed Walk left Head %d, want %d", c.Head, head)
			}
			if deferred {
				// A batching device: publish every third chain, and
				// let NeedInterrupt publish the rest.
				if err := q.PushDeferred(c.Head, c.Written()); err != nil {
					t.Fatalf("PushDeferred of a popped head: %v", err)
				}
				pushes++
				if pushes%3 != 0 {
					continue
				}
				q.PublishUsed()
				if got := fieldAt(q.used, 2).load(); got != pushes {
					t.Fatalf("used->idx %d after PublishUsed, want %d", got, pushes)
				}
			} else {
				if err := q.Push(c.Head, c.Written()); err != nil {
					t.Fatalf("Push of a popped head: %v", err)
				}
				pushes++
			}
			q.NeedInterrupt()
			if !q.EnableNotifications() {
				break
			}
			q.DisableNotifications()
		}
		q.NeedInterrupt()
		if q.usedIdx != pushes {
			t.Fatalf("used idx %d after %d pushes", q.usedIdx, pushes)
		}
		// With nothing pushed the device never wrote used->idx: it holds
		// whatever the guest left there.
		if got := fieldAt(q.used, 2).load(); pushes > 0 && got != pushes {
			t.Fatalf("used->idx in guest memory %d after %d pushes and NeedInterrupt", got, pushes)
		}
		checkGuards(t, mem)
	})
}

// fuzzSeeds builds well-formed rings (one of each chain shape the tests
// know) and returns them as fuzz inputs, so the fuzzer starts from the
// interesting states instead of having to find a valid ring by chance.
func fuzzSeeds(t testing.TB) [][]byte {
	seed := func(size uint16, feat byte, build func(d *driver, mem *virtiotest.RAM)) []byte {
		mem := virtiotest.NewRAMAt(virtiotest.Span{GPA: 0, Size: fuzzRAM0}, virtiotest.Span{GPA: fuzzRAM1, Size: 0x1000})
		d := newDriver(t, mem, size, fuzzDesc, fuzzAvail, fuzzUsed)
		build(d, mem)
		var sizeLog byte
		for 1<<sizeLog < size {
			sizeLog++
		}
		out := append([]byte{sizeLog, feat, 0}, mem.Bytes(0, fuzzRAM0)...)
		out = append(out, mem.Bytes(fuzzRAM1, 0x1000)[:0x100]...)
		return bytes.TrimRight(out, "\x00") // the fuzz target zero-fills the rest

	}
	return [][]byte{
		seed(4, 0, func(d *driver, _ *virtiotest.RAM) { // one readable buffer
			d.SetDesc(0, 0x800, 16, R, 0)
			d.Add(0)
		}),
		seed(8, 2, func(d *driver, _ *virtiotest.RAM) { // header, data, status; event idx
			d.SetDesc(1, 0x800, 16, R|N, 2)
			d.SetDesc(2, 0x3000, 0x200, W|N, 3)
			d.SetDesc(3, 0x900, 1, W, 0)
			d.Add(1, 1)
			d.SetUsedEvent(1)
		}),
		seed(16, 3, func(d *driver, mem *virtiotest.RAM) { // direct then indirect
			d.SetDesc(0, 0x800, 8, R|N, 5)
			d.SetDesc(5, 0x400, 3*16, I, 0)
			putDesc(t, mem, 0x400, 0x808, 8, R|N, 2)
			putDesc(t, mem, 0x410, 0x3100, 0x80, W, 0)
			putDesc(t, mem, 0x420, 0x3200, 0x80, W|N, 1)
			d.Add(0)
		}),
		seed(16, 1, func(d *driver, mem *virtiotest.RAM) { // indirect whose buffers overlap the rings
			d.SetDesc(7, 0x400, 2*16, I, 0)
			putDesc(t, mem, 0x400, fuzzAvail, 0x40, R|N, 1)
			putDesc(t, mem, 0x410, fuzzAvail, 0x40, W, 0)
			d.Add(7, 7, 7)
		}),
		seed(2, 0, func(d *driver, _ *virtiotest.RAM) { // loop
			d.SetDesc(0, 0x800, 8, R|N, 1)
			d.SetDesc(1, 0x800, 8, R|N, 0)
			d.Add(0)
		}),
		seed(4, 0, func(d *driver, _ *virtiotest.RAM) { // buffer across the end of region 0
			d.SetDesc(0, fuzzRAM0-8, 16, W, 0)
			d.Add(0)
		}),
		seed(8, 4|2, func(d *driver, _ *virtiotest.RAM) { // a batch of receive buffers, deferred pushes, event idx
			for i := uint16(0); i < 5; i++ {
				d.SetDesc(i, 0x800+0x40*uint64(i), 0x40, W, 0)
			}
			d.Add(0, 1, 2, 3, 4)
			d.SetUsedEvent(3)
		}),
		seed(4, 4, func(d *driver, _ *virtiotest.RAM) { // deferred pushes of transmit chains
			d.SetDesc(0, 0x800, 12, R|N, 1)
			d.SetDesc(1, 0x900, 60, R, 0)
			d.SetDesc(2, 0xa00, 72, R, 0)
			d.Add(0, 2, 0)
		}),
		seed(4, 0, func(d *driver, _ *virtiotest.RAM) { // avail idx far ahead
			d.SetDesc(0, 0x800, 8, R, 0)
			d.SetAvailIdx(0x1234)
		}),
	}
}
