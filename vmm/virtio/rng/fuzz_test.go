package rng

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// fillByte is what the fuzz's Source gives: a byte that RAM never holds
// otherwise, so every byte the device wrote can be found afterwards.
const fillByte = 0xEE

type constSource struct{}

func (constSource) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = fillByte
	}
	return len(p), nil
}

// Layout of the fuzz's guest: rings from descAt, one indirect table at
// tableAt, buffers in [fuzzBufs, ramSize) or past the end of RAM.
const (
	tableAt  = 0x4000
	fuzzBufs = 0x5000
)

// FuzzRing hands the device a descriptor table, an indirect table and an
// available ring written from the input (any lengths, flags, next links,
// loops, indirect tables of any size, buffers crossing the end of RAM,
// any heads) and checks what the guest can see afterwards, without
// trusting the device's own walk: no panic; guest RAM's guards intact;
// every byte the device wrote lies in a buffer some descriptor marked
// device-writable; each used element names a head the driver made
// available, at most once per time it was, with a length of at most
// MaxRequest; and the device takes no more than it was given.
//
// Input: MaxRequest's byte, 8 direct and 8 indirect descriptors of 6 bytes
// (address, length, flags, next), then available heads.
func FuzzRing(f *testing.F) {
	desc := func(addr, length uint16, flags, next byte) []byte {
		b := binary.LittleEndian.AppendUint16(nil, addr)
		b = binary.LittleEndian.AppendUint16(b, length)
		return append(b, flags, next)
	}
	seed := func(max byte, direct, indirect [][]byte, heads ...byte) []byte {
		out := []byte{max}
		for i := range 8 {
			if i < len(direct) {
				out = append(out, direct[i]...)
			} else {
				out = append(out, desc(0, 0, 0, 0)...)
			}
		}
		for i := range 8 {
			if i < len(indirect) {
				out = append(out, indirect[i]...)
			} else {
				out = append(out, desc(0, 0, 0, 0)...)
			}
		}
		return append(out, heads...)
	}
	const W, N, I = virtiotest.DescWrite, 1, 4
	f.Add(seed(0, [][]byte{desc(0, 64, W, 0)}, nil, 0))
	f.Add(seed(1, [][]byte{desc(0, 16, W|N, 1), desc(0x100, 100, W, 0)}, nil, 0, 0))
	f.Add(seed(0, [][]byte{desc(0, 3*16, I, 0)}, [][]byte{desc(0, 8, W|N, 1), desc(0x10, 8, W|N, 2), desc(0x20, 8, W, 0)}, 0))
	f.Add(seed(0, [][]byte{desc(0, 8, W|N, 1), desc(0x10, 8, W|N, 0)}, nil, 0, 1, 9))                    // a loop, a head out of range
	f.Add(seed(0, [][]byte{desc(0xFFFF, 0x200, W, 0), desc(0, 8, 0, 0)}, nil, 0, 1))                     // past RAM, readable only
	f.Add(seed(0, [][]byte{desc(0, 16, W|N, 1), desc(0, 2*16, I, 0)}, [][]byte{desc(0x40, 8, W, 0)}, 0)) // direct then indirect
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 1+16*6 {
			return
		}
		ram := virtiotest.NewRAM(ramSize)
		drv, err := virtiotest.NewDriver(ram, virtiotest.Layout{Size: qsize, Desc: descAt, Avail: availAt, Used: usedAt})
		if err != nil {
			t.Fatal(err)
		}
		max := 1 + int(in[0])*7
		in = in[1:]
		type span struct{ lo, hi uint64 }
		var writable []span
		decode := func(b []byte) (addr uint64, length uint32, flags, next uint16) {
			a := uint64(binary.LittleEndian.Uint16(b))
			length = uint32(binary.LittleEndian.Uint16(b[2:])) % 0x1000
			flags, next = uint16(b[4]&7), uint16(b[5]%(qsize+2))
			if flags&I != 0 {
				return tableAt, length % (10 * 16), flags, next // a table of up to 9 (the queue allows 8)
			}
			addr = fuzzBufs + a%(ramSize-fuzzBufs)
			if a == 0xFFFF {
				addr = ramSize - 0x100 // may cross the end of RAM
			}
			if flags&W != 0 {
				writable = append(writable, span{addr, addr + uint64(length)})
			}
			return addr, length, flags, next
		}
		for i := range uint16(qsize) {
			a, l, fl, nx := decode(in[6*i:])
			drv.SetDesc(i, a, l, fl, nx)
		}
		for i := range uint64(8) {
			a, l, fl, nx := decode(in[6*(qsize+i):])
			if err := virtiotest.WriteDesc(ram, tableAt+16*i, a, l, fl, nx); err != nil {
				t.Fatal(err)
			}
		}
		in = in[16*6:]
		var heads []uint16
		offered := map[uint16]int{}
		for _, h := range in[:min(len(in), qsize)] {
			head := uint16(h % (qsize + 2))
			heads = append(heads, head)
			offered[head]++
		}
		drv.Add(heads...)

		q, err := virtio.NewQueue(qsize)
		if err != nil {
			t.Fatal(err)
		}
		q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = qsize, descAt, availAt, usedAt, true
		d := New(Options{Source: constSource{}, MaxRequest: max})
		if err := d.Ack(d.Features()); err != nil {
			t.Fatal(err)
		}
		if err := q.Activate(ram, d.Features()); err != nil {
			t.Fatal(err)
		}
		if err := d.Activate([]*virtio.Queue{q}, &irqs{}); err != nil {
			t.Fatal(err)
		}
		// The rings and the table, but for the used ring, are the
		// driver's: the device must leave them as they are.
		before := append([]byte(nil), ram.Bytes(0, fuzzBufs)...)
		clear(before[usedAt : usedAt+6+8*qsize])
		d.Kick(0)
		d.Kick(0)

		if err := ram.CheckGuards(); err != nil {
			t.Fatal(err)
		}
		// Every fillByte is inside a writable buffer.
		buf := ram.Bytes(fuzzBufs, ramSize-fuzzBufs)
		for i, b := range buf {
			if b != fillByte {
				continue
			}
			gpa := fuzzBufs + uint64(i)
			ok := false
			for _, s := range writable {
				if gpa >= s.lo && gpa < s.hi {
					ok = true
					break
				}
			}
			if !ok {
				t.Fatalf("the device wrote at %#x, in no writable buffer", gpa)
			}
		}
		after := append([]byte(nil), ram.Bytes(0, fuzzBufs)...)
		clear(after[usedAt : usedAt+6+8*qsize])
		if !bytes.Equal(before, after) {
			t.Fatal("the device wrote into the descriptor table, the available ring or the indirect table")
		}
		// The used ring against what was made available.
		used := drv.UsedIdx()
		if int(used) > len(heads) {
			t.Fatalf("%d used elements for %d available", used, len(heads))
		}
		for i := range used {
			id, n := drv.UsedElem(i)
			if offered[uint16(id)] == 0 {
				t.Fatalf("used element %d: head %d was not available (or returned twice)", i, id)
			}
			offered[uint16(id)]--
			if int(n) > max {
				t.Fatalf("used element %d: %d bytes, MaxRequest %d", i, n, max)
			}
		}
	})
}
