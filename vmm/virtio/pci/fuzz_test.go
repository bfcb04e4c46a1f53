package virtiopci

import (
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// FuzzRegisters drives the transport with arbitrary BAR and configuration
// accesses (offsets, widths, values) and device interrupts: nothing the
// guest writes may panic, hang, or make an access leave its buffer. The
// last is checked twice: each access's data sits between guard bytes that
// must be unchanged afterwards, and the fake guest RAM (which the rings the
// guest programs point into) must have its guards intact at the end.
// Each operation is 11 bytes: kind and width, 2 bytes of offset, 8 of data.
func FuzzRegisters(f *testing.F) {
	op := func(kind, width byte, off uint16, v uint64) []byte {
		b := []byte{kind | width<<4}
		b = le.AppendUint16(b, off)
		return le.AppendUint64(b, v)
	}
	seq := func(ops ...[]byte) []byte {
		var s []byte
		for _, o := range ops {
			s = append(s, o...)
		}
		return s
	}
	st := func(s uint8) []byte { return op(1, 0, regDeviceStatus, uint64(s)) }
	f.Add(seq(st(1), st(3), op(1, 2, regDriverFeatureSelect, 1), op(1, 2, regDriverFeature, 1), st(11),
		op(1, 1, regQueueSize, 8), op(1, 2, regQueueDesc, descAt), op(1, 2, regQueueDriver, availAt),
		op(1, 2, regQueueDevice, usedAt), op(1, 1, regQueueEnable, 1), st(15), op(1, 1, notifyOffset, 0), op(4, 0, 0, 0)))
	f.Add(seq(op(2, 0, 0x63, 0x80), op(1, 3, msixOffset, 0xFEE0_0000), op(1, 1, regConfigMSIXVector, 0), op(5, 0, 0, 0), op(0, 0, isrOffset, 0)))
	f.Add(seq(op(2, 2, 0x54, 0), op(2, 2, 0x58, 0x14), op(2, 2, 0x5C, 1), op(2, 0, 0x60, 0), op(3, 2, 0x60, 0)))
	f.Add(seq(op(1, 3, 0xFFF8, ^uint64(0)), op(0, 3, 0x3FFF, 0), op(1, 2, regQueueSelect, 0xFFFF), op(0, 3, regQueueDesc, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		ram := virtiotest.NewRAM(ramSize)
		dev := newFakeDevice()
		dev.popOnKick = true
		tr, err := New(dev, Options{Memory: ram, Router: newRouter(), INTx: &fakeLine{}})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		router := tr.opts.Router.(*fakeRouter)
		for ; len(in) >= 11; in = in[11:] {
			width := 1 << (in[0] >> 4 & 3)
			off := uint64(le.Uint16(in[1:]))
			// The access's bytes between guards, capacity exactly
			// width so that an append cannot reach them either.
			var frame [8 + 8 + 8]byte
			for i := range frame {
				frame[i] = virtiotest.GuardByte
			}
			data := frame[8 : 8+width : 8+width]
			le.PutUint64(frame[8:], le.Uint64(in[3:]))
			for i := 8 + width; i < len(frame); i++ {
				frame[i] = virtiotest.GuardByte
			}
			switch in[0] & 0xF % 6 {
			case 0:
				tr.ReadBAR(0, off, data)
			case 1:
				tr.WriteBAR(0, off, data)
			case 2, 3:
				// Config accesses as the bus makes them: aligned, inside
				// one dword.
				reg := int(off%256) &^ (width - 1)
				if in[0]&0xF%6 == 2 {
					tr.WriteConfig(reg, data)
				} else {
					tr.ReadConfig(reg, data)
				}
			case 4:
				if d := dev.irqOf(); d != nil {
					d.Used(int(off % 3))
				}
			case 5:
				if d := dev.irqOf(); d != nil {
					d.ConfigChanged()
				}
			}
			for i, b := range frame {
				if (i < 8 || i >= 8+width) && b != virtiotest.GuardByte {
					t.Fatalf("access of %d bytes at %#x wrote byte %d outside its buffer", width, off, i-8)
				}
			}
			for len(router.signals) > 0 {
				<-router.signals
			}
			for len(dev.kicks) > 0 {
				<-dev.kicks
			}
		}
		if err := ram.CheckGuards(); err != nil {
			t.Fatal(err)
		}
	})
}

// irqOf is the interrupt the device got at activation, or nil.
func (d *fakeDevice) irqOf() virtio.Interrupt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.irq
}
