package vswitch

import (
	"bytes"
	"testing"
)

// FuzzVirtioRings drives the whole virtio data path over guest rings: a
// VM transmits arbitrary header+frame bytes split over up to four
// descriptors, and three VMs receive them: one with mergeable 256-byte
// buffers and no checksum offload (software checksums patched across
// buffers, segmentation), one with every offload and mergeable 1 KiB
// buffers (64 KiB GSO frames merged over many chains), one without
// mergeable buffers or TSO, with big buffers. Nothing may panic or hang,
// every chain is returned, and a frame without offload requests reaches
// each receiver byte for byte.
func FuzzVirtioRings(f *testing.F) {
	seeds := [][]byte{
		withHdr(netHdr{}, ether(bcast(), mac(macA), 0x88b5, make([]byte, 46))),
		withHdr(netHdr{}, udp4(bcast(), mac(macA), [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 1000, 2000, make([]byte, 1400))),
		withHdr(netHdr{}, tagged(0, ether(bcast(), mac(macA), 0x88b5, make([]byte, 600)))),
	}
	for _, v6 := range []bool{false, true} {
		frame, l4 := tcpFrame(v6, bcast(), mac(macA), make([]byte, 3000), tcpPSH)
		gso := uint8(gsoTCPv4)
		if v6 {
			gso = gsoTCPv6
		}
		seeds = append(seeds,
			withHdr(netHdr{flags: hdrNeedsCsum, gsoType: gso, gsoSize: 1000, hdrLen: uint16(l4 + 20), csumStart: uint16(l4), csumOffset: 16}, frame),
			withHdr(netHdr{flags: hdrNeedsCsum, csumStart: uint16(l4), csumOffset: 16}, frame[:l4+700]))
	}
	for i, s := range seeds {
		f.Add(byte(i*37), s)
	}
	sw := New(Options{})
	f.Cleanup(func() { sw.Close() })
	lan, err := sw.AddNetwork("lan", 0)
	if err != nil {
		f.Fatal(err)
	}
	a := newVM(f, sw, "a", lan, macA, vmOpts{})
	type receiver struct {
		m     *vm
		rxBuf int
	}
	rs := []receiver{
		{newVM(f, sw, "b", lan, macB, vmOpts{rxBufs: 200, rxBuf: 256, features: Offered &^ (FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6)}), 256},
		{newVM(f, sw, "c", lan, macC, vmOpts{rxBufs: 120, rxBuf: 1024}), 1024},
		{newVM(f, sw, "d", lan, "52:54:00:00:00:0d", vmOpts{rxBufs: 16, rxBuf: 66 << 10, features: Offered &^ (FeatureMrgRxbuf | FeatureGuestTSO4 | FeatureGuestTSO6)}), 66 << 10},
	}
	f.Fuzz(func(t *testing.T, split byte, data []byte) {
		// The helpers report through the VM's test; inside the
		// target that must be t, not f.
		for _, m := range []*vm{a, rs[0].m, rs[1].m, rs[2].m} {
			m.t, m.rx.t, m.tx.t = t, t, t
		}
		if len(data) > HeaderLen+maxFrame+64 {
			return // the test ring's slot holds 72 KiB
		}
		data = append([]byte(nil), data...)
		if len(data) >= HeaderLen+12 {
			copy(data[HeaderLen+6:], mac(macA)) // port security would drop the rest
		}
		lens := []int{len(data)}
		if n := int(split % 4); n > 0 && len(data) > n {
			// Up to four descriptors, cut at fuzzed offsets.
			lens = lens[:0]
			rest := len(data)
			for i := range n {
				l := min(rest-(n-i), int(split>>2)*(i+1)%max(rest, 1)+1)
				lens = append(lens, l)
				rest -= l
			}
			lens = append(lens, rest)
		}
		before := make([]uint64, len(rs))
		for i, r := range rs {
			before[i] = r.m.port.Counters().RxPackets
		}
		if len(data) == 0 {
			lens = []int{1}
			data = []byte{0}
		}
		if !a.tx.post(data, lens, false) {
			t.Fatal("transmit ring full")
		}
		a.tx.notify()
		a.flushTX()
		var fi frameInfo
		plain := parseFrame(data[:min(len(data), prefixLen)], len(data), &fi) == nil &&
			fi.hdr.flags == 0 && fi.hdr.gsoType == gsoNone && !fi.tagged
		for i, r := range rs {
			r.m.collect(r.rxBuf)
			got := r.m.got
			r.m.got = nil
			if n := r.m.port.Counters().RxPackets - before[i]; n != uint64(len(got)) {
				t.Fatalf("%s: counted %d frames, found %d in its ring", r.m.port.name, n, len(got))
			}
			if r.m.left != 0 {
				t.Fatalf("%s: a frame's num_buffers promised %d more buffers", r.m.port.name, r.m.left)
			}
			for _, g := range got {
				if len(g.frame) > maxFrame+vlanTagLen {
					t.Fatalf("%s: received %d bytes", r.m.port.name, len(g.frame))
				}
			}
			if plain && len(got) > 0 && (len(got) != 1 || !bytes.Equal(got[0].frame, data[HeaderLen:])) {
				t.Fatalf("%s: a plain %d-byte frame arrived as %d frames, first %d bytes", r.m.port.name, len(data)-HeaderLen, len(got), len(got[0].frame))
			}
		}
	})
}
