package vswitch

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// naiveChecksum is RFC 1071 done the slow, obvious way.
func naiveChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestChecksumSegs(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.IntN(300))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		from := 0
		if len(b) > 0 {
			from = r.IntN(len(b) + 1)
		}
		// Split b at random points into segments.
		var segs [][]byte
		for rest := b; len(rest) > 0; {
			n := 1 + r.IntN(len(rest))
			segs = append(segs, rest[:n])
			rest = rest[n:]
		}
		want := naiveChecksum(b[from:])
		if want == 0 {
			want = 0xffff
		}
		if got := checksumSegs(segs, from, len(b)); got != want {
			t.Fatalf("len %d from %d in %d segments: %#04x, want %#04x", len(b), from, len(segs), got, want)
		}
	}
}

// pseudoSum is the folded IPv4/IPv6 pseudo-header sum a sender leaves in
// the checksum field of a NEEDS_CSUM packet.
func pseudoSum(src, dst []byte, proto uint8, l4len int) uint16 {
	var ph [4]byte
	binary.BigEndian.PutUint16(ph[0:], uint16(proto))
	binary.BigEndian.PutUint16(ph[2:], uint16(l4len))
	return csumFold(csumAdd(csumAdd(csumAdd(0, src), dst), ph[:]))
}

// tcpFrame builds Ethernet+IPv4 (or IPv6)+TCP with the given payload and a
// partial checksum, as Linux hands a TSO frame to virtio-net.
func tcpFrame(v6 bool, dstMAC, srcMAC []byte, payload []byte, flags byte) (frame []byte, l4 int) {
	tcp := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	binary.BigEndian.PutUint32(tcp[4:], 1_000_000)
	binary.BigEndian.PutUint32(tcp[8:], 7)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	tcp = append(tcp, payload...)
	if !v6 {
		src, dst := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
		ip := ipv4Header(src, dst, protoTCP, len(tcp))
		binary.BigEndian.PutUint16(tcp[16:], pseudoSum(src[:], dst[:], protoTCP, len(tcp)))
		return ether(dstMAC, srcMAC, etherTypeIPv4, append(ip, tcp...)), ethHeaderLen + 20
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
	ip[6], ip[7] = protoTCP, 64
	ip[8], ip[23] = 0xfd, 1
	ip[24], ip[39] = 0xfd, 2
	binary.BigEndian.PutUint16(tcp[16:], pseudoSum(ip[8:24], ip[24:40], protoTCP, len(tcp)))
	return ether(dstMAC, srcMAC, etherTypeIPv6, append(ip, tcp...)), ethHeaderLen + 40
}

// checkTCP verifies a complete segment's checksums and returns its
// sequence number, flags and payload.
func checkTCP(t *testing.T, f []byte) (seq uint32, flags byte, payload []byte) {
	t.Helper()
	ip := f[ethHeaderLen:]
	var l4 int
	var sum uint64
	if binary.BigEndian.Uint16(f[12:]) == etherTypeIPv4 {
		if naiveChecksum(ip[:20]) != 0 {
			t.Fatalf("bad IPv4 header checksum")
		}
		if int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
			t.Fatalf("IPv4 total length %d, packet %d", binary.BigEndian.Uint16(ip[2:]), len(ip))
		}
		l4 = 20
		sum = csumAdd(0, ip[12:20])
	} else {
		if int(binary.BigEndian.Uint16(ip[4:])) != len(ip)-40 {
			t.Fatalf("IPv6 payload length wrong")
		}
		l4 = 40
		sum = csumAdd(0, ip[8:40])
	}
	tcp := ip[l4:]
	var ph [4]byte
	binary.BigEndian.PutUint16(ph[0:], protoTCP)
	binary.BigEndian.PutUint16(ph[2:], uint16(len(tcp)))
	if got := ^csumFold(csumAdd(csumAdd(sum, ph[:]), tcp)); got != 0 {
		t.Fatalf("TCP checksum does not verify (residue %#x)", got)
	}
	return binary.BigEndian.Uint32(tcp[4:]), tcp[13], tcp[20:]
}

func TestChecksumCompletion(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	vlan := mustNetwork(t, sw, "v7", 7)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})                                                                              // GUEST_CSUM: passthrough
	c := newVM(t, sw, "c", lan, macC, vmOpts{features: Offered &^ (FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6)}) // software
	plain, soft := newFakeFrames(), newFakeFrames()
	if _, err := sw.AddFramePort("tap", plain, FrameConfig{Networks: []*Network{lan, vlan}, Trunk: true, Offload: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.AddFramePort("raw", soft, FrameConfig{Networks: []*Network{lan}}); err != nil {
		t.Fatal(err)
	}

	frame, l4 := tcpFrame(false, bcast(), mac(macA), bytes.Repeat([]byte("odd-length payload"), 11), tcpPSH)
	h := netHdr{flags: hdrNeedsCsum, csumStart: uint16(l4), csumOffset: 16}
	// Descriptors split at odd offsets inside the summed area.
	a.sendHdr(h, frame, []int{HeaderLen + 41, 7, 33, len(frame) - 41 - 40})
	a.flushTX()
	waitFor(t, "delivery", func() bool { return c.port.Counters().RxPackets == 1 && b.port.Counters().RxPackets == 1 })

	fb := b.frames()
	if len(fb) != 1 || !bytes.Equal(fb[0].frame, frame) || fb[0].hdr.flags != hdrNeedsCsum || fb[0].hdr.csumStart != uint16(l4) {
		t.Fatalf("b (GUEST_CSUM) got %+v, want the frame and header passed through", fb)
	}
	fc := c.frames()
	if len(fc) != 1 || fc[0].hdr.flags != 0 {
		t.Fatalf("c got %+v", fc)
	}
	checkTCP(t, fc[0].frame)
	if !bytes.Equal(fc[0].frame[:l4+16], frame[:l4+16]) || !bytes.Equal(fc[0].frame[l4+18:], frame[l4+18:]) {
		t.Error("software checksum changed more than the checksum field")
	}
	if out := soft.drain(); len(out) != 1 {
		t.Fatalf("raw port got %d frames", len(out))
	} else {
		checkTCP(t, out[0][HeaderLen:])
	}
	if out := plain.drain(); len(out) != 1 {
		t.Fatalf("tap got %d frames", len(out))
	} else if out[0][0] != hdrNeedsCsum || binary.LittleEndian.Uint16(out[0][6:]) != uint16(l4) {
		t.Errorf("offloading port got header %x, want NEEDS_CSUM at %d", out[0][:HeaderLen], l4)
	}

	// From the trunk, tagged into v7: a VM there gets the tag removed and
	// csum_start moved back by 4 (or the checksum done).
	d := newVM(t, sw, "d", vlan, "52:54:00:00:00:0d", vmOpts{features: Offered &^ FeatureMrgRxbuf})
	in := tagged(7, frame)
	hb := make([]byte, HeaderLen)
	(&netHdr{flags: hdrNeedsCsum, csumStart: uint16(l4 + 4), csumOffset: 16}).encode(hb)
	plain.in <- append(hb, in...)
	waitFor(t, "d", func() bool { return d.port.Counters().RxPackets == 1 })
	fd := d.frames()
	if len(fd) != 1 || !bytes.Equal(fd[0].frame, frame) || fd[0].hdr.csumStart != uint16(l4) {
		t.Fatalf("d got %+v", fd)
	}
}

func TestSegmentation(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		sw := newSwitch(t, Options{})
		lan := mustNetwork(t, sw, "lan", 0)
		a := newVM(t, sw, "a", lan, macA, vmOpts{})
		b := newVM(t, sw, "b", lan, macB, vmOpts{rxBuf: 4096}) // TSO both sides: passthrough
		c := newVM(t, sw, "c", lan, macC, vmOpts{rxBufs: 64, features: Offered &^ (FeatureGuestTSO4 | FeatureGuestTSO6)})
		raw := newFakeFrames()
		if _, err := sw.AddFramePort("raw", raw, FrameConfig{Networks: []*Network{lan}}); err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, 5000)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		frame, l4 := tcpFrame(v6, bcast(), mac(macA), payload, tcpPSH|tcpFIN|tcpCWR)
		gso := uint8(gsoTCPv4)
		if v6 {
			gso = gsoTCPv6
		}
		h := netHdr{flags: hdrNeedsCsum, gsoType: gso, gsoSize: 1448, hdrLen: uint16(l4 + 20), csumStart: uint16(l4), csumOffset: 16}
		a.sendHdr(h, frame, nil)
		a.flushTX()
		waitFor(t, "delivery", func() bool { return c.port.Counters().RxPackets == 4 && b.port.Counters().RxPackets == 1 })

		b.collect(4096)
		if len(b.got) != 1 || !bytes.Equal(b.got[0].frame, frame) || b.got[0].hdr.gsoType != gso || b.got[0].hdr.gsoSize != 1448 {
			t.Fatalf("v6=%v: b got %d frames, want the GSO frame passed through", v6, len(b.got))
		}
		segsOf := func(frames [][]byte) {
			t.Helper()
			if len(frames) != 4 {
				t.Fatalf("v6=%v: %d segments, want 4", v6, len(frames))
			}
			var joined []byte
			for i, f := range frames {
				seq, fl, p := checkTCP(t, f)
				if seq != 1_000_000+uint32(1448*i) {
					t.Errorf("segment %d seq %d", i, seq)
				}
				wantFl := byte(tcpPSH | tcpFIN | tcpCWR)
				if i > 0 {
					wantFl &^= tcpCWR
				}
				if i < 3 {
					wantFl &^= tcpPSH | tcpFIN
				}
				if fl != wantFl {
					t.Errorf("segment %d flags %#x, want %#x", i, fl, wantFl)
				}
				if i < 3 && len(p) != 1448 {
					t.Errorf("segment %d has %d bytes", i, len(p))
				}
				joined = append(joined, p...)
			}
			if !bytes.Equal(joined, payload) {
				t.Error("segments do not reassemble to the payload")
			}
		}
		var cf [][]byte
		for _, f := range c.frames() {
			if f.hdr.gsoType != gsoNone || f.hdr.flags != 0 {
				t.Errorf("segment header %+v", f.hdr)
			}
			cf = append(cf, f.frame)
		}
		segsOf(cf)
		var rf [][]byte
		for _, f := range raw.drain() {
			rf = append(rf, f[HeaderLen:])
		}
		segsOf(rf)
		sw.Close()
	}
}

// TestFrameRefHead: a frame's reads (gather, checksum, a writer's copy)
// take bytes below len(head) from head and the rest from segs, at every
// split of the frame into buffers and every head length, odd offsets
// included; segs' own bytes below len(head) (a guest's rewrite after the
// check) never show.
func TestFrameRefHead(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		size := 1 + rng.IntN(300)
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		hl := rng.IntN(size + 1)
		head := append([]byte(nil), want[:hl]...)
		// segs: the same bytes but for a rewritten head, split anywhere.
		guest := append([]byte(nil), want...)
		for i := range hl {
			guest[i] ^= 0x5a
		}
		var segs [][]byte
		for rest := guest; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			segs = append(segs, rest[:n])
			rest = rest[n:]
		}
		f := &frameRef{segs: segs, head: head, size: size}
		from := rng.IntN(size)
		to := from + rng.IntN(size-from+1)
		got := make([]byte, to-from)
		if n := f.gather(got, from); n != to-from || !bytes.Equal(got, want[from:to]) {
			t.Fatalf("size %d head %d: gather [%d,%d) = %d bytes % x, want % x", size, hl, from, to, n, got[:n], want[from:to])
		}
		if c, w := f.checksum(from, to), checksumSegs([][]byte{want}, from, to); c != w {
			t.Fatalf("size %d head %d: checksum [%d,%d) = %#x, want %#x", size, hl, from, to, c, w)
		}
		out := make([]byte, to-from)
		var w writer
		w.reset([][]byte{out})
		w.copyFrame(f, from, to)
		if !bytes.Equal(out, want[from:to]) {
			t.Fatalf("size %d head %d: copyFrame [%d,%d) = % x, want % x", size, hl, from, to, out, want[from:to])
		}
	}
}
