package vswitch

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"
)

const (
	macA = "52:54:00:00:00:0a"
	macB = "52:54:00:00:00:0b"
	macC = "52:54:00:00:00:0c"
	macX = "52:54:00:00:00:99" // nobody's
)

func newSwitch(t testing.TB, o Options) *Switch {
	t.Helper()
	sw := New(o)
	t.Cleanup(func() { sw.Close() })
	return sw
}

func mustNetwork(t testing.TB, sw *Switch, name string, vlan uint16) *Network {
	t.Helper()
	n, err := sw.AddNetwork(name, vlan)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// payloadOf extracts the frames' bodies for comparison.
func bodies(fs []rxFrame) [][]byte {
	var r [][]byte
	for _, f := range fs {
		r = append(r, f.frame)
	}
	return r
}

func TestForwardingLearningFlooding(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	c := newVM(t, sw, "c", lan, macC, vmOpts{})

	// Unknown unicast floods to every other port, never back.
	unknown := ether(mac(macX), mac(macA), 0x88b5, bytes.Repeat([]byte{1}, 50))
	a.send(unknown)
	a.flushTX()
	waitFor(t, "flood", func() bool { return b.port.Counters().RxPackets == 1 && c.port.Counters().RxPackets == 1 })
	if got := a.frames(); len(got) != 0 {
		t.Fatalf("sender got its own frame back (hairpin): %d frames", len(got))
	}
	for _, m := range []*vm{b, c} {
		got := m.frames()
		if len(got) != 1 || !bytes.Equal(got[0].frame, unknown) {
			t.Fatalf("%s got %x, want the flooded frame", m.port.Name(), bodies(got))
		}
		if got[0].hdr.numBuffers != 1 {
			t.Errorf("num_buffers = %d, want 1", got[0].hdr.numBuffers)
		}
	}

	// Known unicast (the VMs' MACs are static entries) goes to one port.
	toB := ether(mac(macB), mac(macA), 0x88b5, []byte("hello b, padded to a minimum frame length.."))
	a.send(toB)
	a.flushTX()
	waitFor(t, "unicast", func() bool { return b.port.Counters().RxPackets == 2 })
	if got := b.frames(); len(got) != 1 || !bytes.Equal(got[0].frame, toB) {
		t.Fatalf("b got %x", bodies(got))
	}
	if got := c.frames(); len(got) != 0 {
		t.Fatalf("c got a frame for b: %x", bodies(got))
	}

	// Broadcast reaches everyone else.
	bc := ether(bcast(), mac(macC), 0x88b5, make([]byte, 46))
	c.send(bc)
	c.flushTX()
	waitFor(t, "broadcast", func() bool {
		return a.port.Counters().RxPackets == 1 && b.port.Counters().RxPackets == 3
	})
	if got := c.frames(); len(got) != 0 {
		t.Fatal("broadcast hairpinned")
	}
	// Interrupts were signalled to the receivers.
	if !a.rx.interrupted() || !b.rx.interrupted() {
		t.Error("receivers were not interrupted")
	}
	if !c.tx.interrupted() {
		t.Error("sender's transmit queue was not interrupted after its chain was used")
	}
	if got := a.port.Counters(); got.TxPackets != 2 || got.TxBytes != uint64(len(unknown)+len(toB)) {
		t.Errorf("a counters %+v", got)
	}
}

func TestLearningFromFramePort(t *testing.T) {
	clk := &fakeClock{}
	sw := newSwitch(t, Options{Clock: clk.now, AgeTime: 10 * time.Second})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	ff := newFakeFrames()
	up, err := sw.AddFramePort("up", ff, FrameConfig{Networks: []*Network{lan}})
	if err != nil {
		t.Fatal(err)
	}
	host := mac(macX)
	ff.in <- append(make([]byte, HeaderLen), ether(bcast(), host, 0x88b5, make([]byte, 46))...) // learned on "up"
	waitFor(t, "learn", func() bool { return lan.Lookup(host) == up.Port })
	// The switch learns the source before it delivers the flood: both
	// VMs have the broadcast before the count below means anything
	// (under the race detector b's delivery came after, once).
	waitFor(t, "flood", func() bool { return a.port.Counters().RxPackets == 1 && b.port.Counters().RxPackets == 1 })

	a.send(ether(host, mac(macA), 0x88b5, make([]byte, 46)))
	a.flushTX()
	waitFor(t, "to uplink", func() bool { return up.Counters().RxPackets == 1 })
	if n := b.port.Counters().RxPackets; n != 1 { // only the first broadcast
		t.Errorf("b received %d frames, want 1 (unicast to a learned address must not flood)", n)
	}
	// Aged out: floods again.
	clk.advance(11 * time.Second)
	if lan.Lookup(host) != nil {
		t.Fatal("entry did not age out")
	}
	a.send(ether(host, mac(macA), 0x88b5, make([]byte, 46)))
	a.flushTX()
	waitFor(t, "flood after aging", func() bool { return b.port.Counters().RxPackets == 2 })
	if got := ff.drain(); len(got) != 2 {
		t.Errorf("uplink wrote %d frames, want 2", len(got))
	}
}

func TestVLANIsolationAndTrunk(t *testing.T) {
	sw := newSwitch(t, Options{})
	red := mustNetwork(t, sw, "red", 0)
	blue := mustNetwork(t, sw, "blue", 10)
	green := mustNetwork(t, sw, "green", 20)
	r := newVM(t, sw, "r", red, macA, vmOpts{})
	b := newVM(t, sw, "b", blue, macB, vmOpts{})
	g := newVM(t, sw, "g", green, macC, vmOpts{})
	ff := newFakeFrames()
	trunk, err := sw.AddFramePort("trunk", ff, FrameConfig{Networks: []*Network{red, blue}, Trunk: true})
	if err != nil {
		t.Fatal(err)
	}

	// A broadcast in blue reaches the trunk tagged 10, nobody else.
	bc := ether(bcast(), mac(macB), 0x88b5, make([]byte, 46))
	b.send(bc)
	b.flushTX()
	waitFor(t, "trunk egress", func() bool { return trunk.Counters().RxPackets == 1 })
	out := ff.drain()
	if len(out) != 1 || !bytes.Equal(out[0][HeaderLen:], tagged(10, bc)) {
		t.Fatalf("trunk got %x, want the frame tagged with VLAN 10", out)
	}
	// Red (native) goes untagged.
	rb := ether(bcast(), mac(macA), 0x88b5, make([]byte, 46))
	r.send(rb)
	r.flushTX()
	waitFor(t, "native egress", func() bool { return trunk.Counters().RxPackets == 2 })
	if out := ff.drain(); len(out) != 1 || !bytes.Equal(out[0][HeaderLen:], rb) {
		t.Fatalf("trunk got %x, want the untagged frame", out)
	}
	// From the trunk, tag 10 reaches blue untagged; an unknown VLAN is dropped.
	in := ether(bcast(), mac(macX), 0x88b5, make([]byte, 46))
	ff.in <- append(make([]byte, HeaderLen), tagged(10, in)...)
	ff.in <- append(make([]byte, HeaderLen), tagged(30, in)...)
	waitFor(t, "trunk ingress", func() bool { return trunk.Counters().Drops[DropMalformed] == 1 })
	waitFor(t, "blue receives", func() bool { return b.port.Counters().RxPackets == 1 })
	if got := b.frames(); len(got) != 1 || !bytes.Equal(got[0].frame, in) {
		t.Fatalf("blue got %x, want the untagged frame", bodies(got))
	}
	if r.port.Counters().RxPackets != 0 || g.port.Counters().RxPackets != 0 {
		t.Fatal("a frame crossed networks")
	}
	// A VM may not send tagged frames into another VLAN.
	b.send(tagged(20, ether(bcast(), mac(macB), 0x88b5, make([]byte, 46))))
	b.flushTX()
	if g.port.Counters().RxPackets != 0 || b.port.Counters().Drops[DropMalformed] != 1 {
		t.Fatalf("tagged frame from an access port: green rx %d, drops %v",
			g.port.Counters().RxPackets, b.port.Counters().Drops)
	}
}

func TestPortSecurity(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{lockIP: true})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	ip := [4]byte{10, 0, 0, 5}
	other := [4]byte{10, 0, 0, 6}
	zero := [4]byte{}
	bcastIP := [4]byte{255, 255, 255, 255}

	for _, tc := range []struct {
		name  string
		frame []byte
		allow bool
		drop  DropReason
	}{
		{"spoofed MAC", ether(mac(macB), mac(macX), 0x88b5, make([]byte, 46)), false, DropSpoofedMAC},
		{"IPv4 before a lease", udp4(mac(macB), mac(macA), ip, other, 1000, 2000, nil), false, DropSpoofedIP},
		{"ARP before a lease", arp(bcast(), mac(macA), ip, other), false, DropSpoofedIP},
		{"DHCP discover from 0.0.0.0", dhcpFrom(mac(macA), mac(macA)), true, 0},
		{"ARP probe from 0.0.0.0", arp(bcast(), mac(macA), zero, ip), true, 0},
		{"UDP from 0.0.0.0 not DHCP", udp4(bcast(), mac(macA), zero, bcastIP, 1000, 67, nil), false, DropSpoofedIP},
		{"rogue DHCP server", udp4(bcast(), mac(macA), zero, bcastIP, 67, 68, make([]byte, 240)), false, DropRogueDHCP},
		{"non-IP traffic on a locked port", ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)), false, DropEtherType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rx := a.port.Counters(), b.port.Counters().RxPackets
			a.send(tc.frame)
			a.flushTX()
			after := a.port.Counters()
			if tc.allow {
				waitFor(t, "delivery", func() bool { return b.port.Counters().RxPackets == rx+1 })
				return
			}
			if after.Drops[tc.drop] != before.Drops[tc.drop]+1 {
				t.Errorf("drops[%v] %d -> %d, want +1", tc.drop, before.Drops[tc.drop], after.Drops[tc.drop])
			}
			if b.port.Counters().RxPackets != rx {
				t.Error("dropped frame was delivered")
			}
		})
	}
	a.port.AllowIP(netip.MustParseAddr("10.0.0.5"))
	rx := b.port.Counters().RxPackets
	a.send(udp4(mac(macB), mac(macA), ip, other, 1000, 2000, nil))
	a.flushTX()
	waitFor(t, "leased address passes", func() bool { return b.port.Counters().RxPackets == rx+1 })
	a.port.DisallowIP(netip.MustParseAddr("10.0.0.5"))
	a.send(udp4(mac(macB), mac(macA), ip, other, 1000, 2000, nil))
	a.flushTX()
	if b.port.Counters().RxPackets != rx+1 {
		t.Error("address still allowed after DisallowIP")
	}
}

func TestLocalAndInject(t *testing.T) {
	type seen struct {
		port  string
		frame []byte
	}
	got := make(chan seen, 16)
	sw := newSwitch(t, Options{Local: func(p *Port, frame []byte) bool {
		got <- seen{p.Name(), append([]byte(nil), frame...)}
		return len(frame) > 34 && frame[23] == protoUDP // consume UDP (DHCP), let ARP through
	}})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})

	discover := udp4(bcast(), mac(macA), [4]byte{}, [4]byte{255, 255, 255, 255}, 68, 67, make([]byte, 240))
	a.send(discover)
	a.flushTX()
	s := <-got
	if s.port != "a" || !bytes.Equal(s.frame, discover) {
		t.Fatalf("Local saw %s %x", s.port, s.frame)
	}
	probe := arp(bcast(), mac(macA), [4]byte{}, [4]byte{10, 0, 0, 9})
	a.send(probe)
	a.flushTX()
	<-got
	waitFor(t, "ARP forwarded", func() bool { return b.port.Counters().RxPackets == 1 })
	if fs := b.frames(); len(fs) != 1 || !bytes.Equal(fs[0].frame, probe) {
		t.Fatalf("b got %x, want only the ARP probe (DHCP consumed)", bodies(fs))
	}
	// Unicast UDP to port 67 is offered to Local too (a DHCP renewal).
	renew := udp4(mac(macB), mac(macA), [4]byte{}, [4]byte{10, 0, 0, 1}, 68, 67, make([]byte, 240))
	a.send(renew)
	a.flushTX()
	if s := <-got; !bytes.Equal(s.frame, renew) {
		t.Fatal("unicast DHCP not offered to Local")
	}

	offer := udp4(mac(macA), mac(macX), [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 50}, 67, 68, make([]byte, 240))
	if err := a.port.Inject(offer); err != nil {
		t.Fatal(err)
	}
	fs := a.frames()
	if len(fs) != 1 || !bytes.Equal(fs[0].frame, offer) || fs[0].hdr != (netHdr{numBuffers: 1}) {
		t.Fatalf("a got %+v, want the injected frame with a zero header", fs)
	}
	if !a.rx.interrupted() {
		t.Error("Inject did not interrupt the receiver")
	}
	if err := a.port.Inject([]byte{1, 2, 3}); err == nil {
		t.Error("Inject accepted a 3-byte frame")
	}
}

func TestMergeableBuffers(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBuf: 1024})
	noMrg := Offered &^ FeatureMrgRxbuf
	c := newVM(t, sw, "c", lan, macC, vmOpts{rxBuf: 1024, features: noMrg})

	big := ether(bcast(), mac(macA), 0x88b5, bytes.Repeat([]byte{0xab, 0xcd, 0xef}, 1000))
	a.send(big)
	a.flushTX()
	waitFor(t, "delivery", func() bool { return b.port.Counters().RxPackets == 1 })
	b.collect(1024)
	if len(b.got) != 1 || b.got[0].bufs != 3 || !bytes.Equal(b.got[0].frame, big) {
		t.Fatalf("b got %d frames (bufs %v), want one frame over 3 buffers", len(b.got), b.got)
	}
	// Without MRG_RXBUF a frame larger than a buffer is dropped and the
	// buffer kept for the next frame.
	if got := c.port.Counters(); got.Drops[DropNoBuffer] != 1 || got.RxPackets != 0 {
		t.Fatalf("c counters %+v, want one no-buffer drop", got)
	}
	small := ether(bcast(), mac(macA), 0x88b5, make([]byte, 100))
	a.send(small)
	a.flushTX()
	waitFor(t, "small delivery", func() bool { return c.port.Counters().RxPackets == 1 })
	c.collect(1024)
	if len(c.got) != 1 || !bytes.Equal(c.got[0].frame, small) {
		t.Fatalf("c got %v", c.got)
	}
}

func TestNoReceiveBuffers(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: 2})
	for i := 0; i < 5; i++ {
		a.send(ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)))
	}
	a.flushTX()
	if got := b.port.Counters(); got.RxPackets != 2 || got.RxQueued != 3 || got.Drops[DropNoBuffer] != 0 {
		t.Fatalf("counters %+v, want 2 delivered and 3 waiting for buffers", got)
	}
	b.rx.reap()
	b.rx.refill(4, 2048)
	waitFor(t, "the waiting frames", func() bool { return b.port.Counters().RxPackets == 5 })
	if got := a.port.Counters(); got.TxPackets != 5 {
		t.Fatalf("sender counted %d, want 5", got.TxPackets)
	}
}

func TestMalformedFromGuest(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	good := udp4(mac(macB), mac(macA), [4]byte{10, 0, 0, 5}, [4]byte{10, 0, 0, 6}, 1000, 2000, []byte("payload"))

	// Short frames, and a chain of only writable buffers.
	a.sendHdr(netHdr{}, good[:10], nil)
	a.sendHdr(netHdr{}, nil, []int{5})
	if !a.tx.post(nil, []int{64}, true) {
		t.Fatal("ring full")
	}
	a.tx.notify()
	// Truncated IPv4 and UDP headers, a GSO frame with gso_size 0, a
	// checksum offset beyond the frame.
	a.send(good[:ethHeaderLen+10])
	a.send(good[:ethHeaderLen+20+4])
	a.sendHdr(netHdr{gsoType: gsoTCPv4}, good, nil)
	a.sendHdr(netHdr{flags: hdrNeedsCsum, csumStart: 34, csumOffset: 200}, good, nil)
	a.sendHdr(netHdr{gsoType: 2, gsoSize: 100}, good, nil) // UFO, never offered
	a.flushTX()
	if got := a.port.Counters().Drops[DropMalformed]; got != 8 {
		t.Errorf("malformed drops = %d, want 8", got)
	}
	// The header split at odd offsets, one byte per descriptor at the
	// start, still forwards.
	a.sendHdr(netHdr{}, good, []int{1, 3, 9, len(good) - 1})
	a.flushTX()
	waitFor(t, "split frame", func() bool { return b.port.Counters().RxPackets == 1 })
	if fs := b.frames(); len(fs) != 1 || !bytes.Equal(fs[0].frame, good) {
		t.Fatalf("b got %x", bodies(fs))
	}
	// A receive chain with a readable buffer, or too short for the
	// header, is given back unwritten and the next chain used.
	c := newVM(t, sw, "c", lan, macC, vmOpts{rxBufs: 1})
	toC := ether(mac(macC), mac(macA), 0x88b5, make([]byte, 46))
	a.send(toC)
	a.flushTX()
	waitFor(t, "first", func() bool { return c.port.Counters().RxPackets == 1 })
	c.rx.reap()
	c.rx.post(nil, []int{64, 2048}, false)
	c.rx.post(nil, []int{8}, true)
	c.rx.post(nil, []int{2048}, true)
	a.send(toC)
	a.flushTX()
	waitFor(t, "second", func() bool { return c.port.Counters().RxPackets == 2 })
	used := c.rx.reap()
	if len(used) != 3 || len(used[0]) != 0 || len(used[1]) != 0 || !bytes.Equal(used[2][HeaderLen:], toC) {
		t.Fatalf("receive chains used as %d entries %x", len(used), used)
	}
	if got := c.port.Counters().Drops[DropMalformed]; got != 2 {
		t.Errorf("receiver malformed drops = %d, want 2", got)
	}
}

func TestRateLimitFakeClock(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rate   Rate
		size   int // frame length
		perSec float64
	}{
		{"packets", Rate{PacketsPerSecond: 500, BurstPackets: 10}, 100, 500},
		{"bits", Rate{BitsPerSecond: 8_000_000, BurstBits: 80_000}, 1000, 1000}, // 1000 frames/s of 1000 bytes
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{}
			sw := newSwitch(t, Options{Clock: clk.now})
			lan := mustNetwork(t, sw, "lan", 0)
			b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: 200, limits: Limits{Rx: tc.rate}})
			ff := newFakeFrames()
			if _, err := sw.AddFramePort("up", ff, FrameConfig{Networks: []*Network{lan}}); err != nil {
				t.Fatal(err)
			}
			frame := append(make([]byte, HeaderLen), ether(mac(macB), mac(macX), 0x88b5, make([]byte, tc.size-ethHeaderLen))...)
			// Offer 4000 frames/s for one second of fake time.
			const offered, span = 4000, time.Second
			for i := 0; i < offered; i++ {
				ff.in <- frame
				waitFor(t, "processed", func() bool {
					c := b.port.Counters()
					return c.RxPackets+c.Drops[DropRateLimit] == uint64(i+1)
				})
				clk.advance(span / offered)
				if i%100 == 99 {
					b.collect(2048)
				}
			}
			got := float64(b.port.Counters().RxPackets)
			want := tc.perSec*span.Seconds() + 10 // plus the burst
			if got < want*0.9 || got > want*1.1 {
				t.Errorf("delivered %v frames in %v at %v/s, want %v ±10%%", got, span, tc.perSec, want)
			}
		})
	}
}

func TestTransmitRateLimitHolds(t *testing.T) {
	clk := &fakeClock{}
	sw := newSwitch(t, Options{Clock: clk.now})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{limits: Limits{Tx: Rate{PacketsPerSecond: 100, BurstPackets: 5}}})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	for i := 0; i < 20; i++ {
		a.send(ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)))
	}
	waitFor(t, "burst", func() bool { return b.port.Counters().RxPackets == 5 })
	time.Sleep(20 * time.Millisecond)
	if n := b.port.Counters().RxPackets; n != 5 {
		t.Fatalf("%d frames passed a burst of 5 without time passing", n)
	}
	a.tx.reap()
	if a.tx.InFlight() != 15 {
		t.Fatalf("%d transmit chains held, want 15 left in the ring (back-pressure, not drops)", a.tx.InFlight())
	}
	clk.advance(50 * time.Millisecond) // refills the bucket of 5
	waitFor(t, "refill", func() bool { return b.port.Counters().RxPackets == 10 })
	time.Sleep(5 * time.Millisecond)
	if n := b.port.Counters().RxPackets; n != 10 {
		t.Fatalf("%d frames passed after a refill of 5", n)
	}
	for _, want := range []uint64{15, 20} {
		clk.advance(time.Second) // any wait refills at most the bucket size
		waitFor(t, "more refills", func() bool { return b.port.Counters().RxPackets == want })
	}
	a.flushTX()
	if c := a.port.Counters(); c.TxPackets != 20 || c.Drops[DropRateLimit] != 0 {
		t.Fatalf("counters %+v", c)
	}
}

func TestStopStartUnderTraffic(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: 48})
	frame := ether(mac(macB), mac(macA), 0x88b5, make([]byte, 200))

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a transmits as fast as the ring allows
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			a.tx.reap()
			for a.tx.post(append(make([]byte, HeaderLen), frame...), []int{HeaderLen + len(frame)}, false) {
			}
			a.tx.notify()
			time.Sleep(50 * time.Microsecond)
		}
	}()
	for i := 0; i < 200; i++ {
		b.port.Stop(RxQueue)
		b.collect(2048) // the driver refills while the queue is stopped
		if err := b.port.Start(RxQueue, b.rx.q, b.rx.kick, b.rx.call); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			a.port.Stop(TxQueue)
			if err := a.port.Start(TxQueue, a.tx.q, a.tx.kick, a.tx.call); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	close(stop)
	<-done
	a.flushTX()
	b.collect(2048)
	c := b.port.Counters()
	if c.RxPackets == 0 {
		t.Fatal("nothing delivered")
	}
	for _, f := range b.got {
		if !bytes.Equal(f.frame, frame) {
			t.Fatalf("corrupted frame %x", f.frame)
		}
	}
	t.Logf("delivered %d, dropped for lack of buffers %d", c.RxPackets, c.Drops[DropNoBuffer])
}

func TestSetFeatures(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	p, err := sw.AddVirtioPort("a", VirtioConfig{Network: lan, MAC: mac(macA)})
	if err != nil {
		t.Fatal(err)
	}
	const v1 = 1 << 32
	for _, tc := range []struct {
		feat uint64
		ok   bool
	}{
		{Offered, true},
		{Offered | featureProtocol, true},
		{v1, true},
		{0, false},                     // no VERSION_1
		{v1 | FeatureMQ, false},        // not offered
		{v1 | FeatureHostTSO4, false},  // needs CSUM
		{v1 | FeatureGuestTSO6, false}, // needs GUEST_CSUM
		{v1 | FeatureCsum | FeatureHostTSO4, true},
	} {
		if err := p.SetFeatures(tc.feat); (err == nil) != tc.ok {
			t.Errorf("SetFeatures(%#x) = %v, want ok=%v", tc.feat, err, tc.ok)
		}
	}
	if _, err := sw.AddVirtioPort("b", VirtioConfig{Network: lan, MAC: bcast()}); err == nil {
		t.Error("a broadcast MAC was accepted for a NIC")
	}
	if _, err := sw.AddVirtioPort("a", VirtioConfig{Network: lan, MAC: mac(macB)}); err == nil {
		t.Error("a duplicate port name was accepted")
	}
	if err := p.Start(5, nil, -1, -1); err == nil {
		t.Error("Start of a missing queue succeeded")
	}
}

func TestRemovePort(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	ff := newFakeFrames()
	up, err := sw.AddFramePort("up", ff, FrameConfig{Networks: []*Network{lan}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.port.Remove(); err != nil {
		t.Fatal(err)
	}
	if lan.Lookup(mac(macB)) != nil {
		t.Error("removed port's address still in the FDB")
	}
	a.send(ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46)))
	a.flushTX()
	waitFor(t, "flood to the uplink", func() bool { return up.Counters().RxPackets == 1 })
	if b.port.Counters().RxPackets != 0 {
		t.Error("removed port received")
	}
	if err := up.Remove(); err != nil {
		t.Fatal(err)
	}
	if up.Err() != errStopped {
		t.Errorf("uplink Err = %v", up.Err())
	}
	if names := slices.Collect(func(yield func(string) bool) {
		for _, p := range *lan.ports.Load() {
			yield(p.Name())
		}
	}); !slices.Equal(names, []string{"a"}) {
		t.Errorf("ports left: %v", names)
	}
}

func TestCapture(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	got := make(chan []byte, 4)
	a.port.Capture(func(f []byte) { got <- append([]byte(nil), f...) })
	b.port.Capture(func(f []byte) { got <- append([]byte(nil), f...) })
	f := ether(mac(macB), mac(macA), 0x88b5, make([]byte, 46))
	a.send(f)
	a.flushTX()
	for i := 0; i < 2; i++ {
		if c := <-got; !bytes.Equal(c, f) {
			t.Fatalf("captured %x", c)
		}
	}
	a.port.Capture(nil)
	b.port.Capture(nil)
	a.send(f)
	a.flushTX()
	waitFor(t, "second frame", func() bool { return b.port.Counters().RxPackets == 2 })
	if len(got) != 0 {
		t.Error("capture still on after Capture(nil)")
	}
}

// TestSetLimitsLive: a port's receive limit replaced while frames flow
// takes effect at once, and lifting it delivers everything.
func TestSetLimitsLive(t *testing.T) {
	clk := &fakeClock{}
	sw := newSwitch(t, Options{Clock: clk.now})
	lan := mustNetwork(t, sw, "lan", 0)
	b := newVM(t, sw, "b", lan, macB, vmOpts{rxBufs: 200, limits: Limits{Rx: Rate{PacketsPerSecond: 500, BurstPackets: 10}}})
	ff := newFakeFrames()
	if _, err := sw.AddFramePort("up", ff, FrameConfig{Networks: []*Network{lan}}); err != nil {
		t.Fatal(err)
	}
	frame := append(make([]byte, HeaderLen), ether(mac(macB), mac(macX), 0x88b5, make([]byte, 100-ethHeaderLen))...)
	sent := uint64(0)
	// offer sends n frames spread over span of fake time and returns how
	// many were delivered.
	offer := func(n int, span time.Duration) uint64 {
		before := b.port.Counters().RxPackets
		for i := 0; i < n; i++ {
			ff.in <- frame
			sent++
			waitFor(t, "processed", func() bool {
				c := b.port.Counters()
				return c.RxPackets+c.Drops[DropRateLimit]+c.Drops[DropNoBuffer] == sent
			})
			clk.advance(span / time.Duration(n))
			if i%50 == 49 {
				b.collect(2048)
			}
		}
		b.collect(2048)
		return b.port.Counters().RxPackets - before
	}
	if got := offer(2000, 500*time.Millisecond); got < 225 || got > 290 {
		t.Errorf("at 500 frames/s: %d frames delivered in 0.5 s, want about 260", got)
	}
	b.port.SetLimits(Limits{Rx: Rate{PacketsPerSecond: 2000, BurstPackets: 10}})
	if got := offer(2000, 500*time.Millisecond); got < 900 || got > 1110 {
		t.Errorf("at 2000 frames/s: %d frames delivered in 0.5 s, want about 1010", got)
	}
	b.port.SetLimits(Limits{})
	if got := offer(500, 50*time.Millisecond); got != 500 {
		t.Errorf("unlimited: %d of 500 frames delivered", got)
	}
}

// TestForwardingAlternatingInBatch: frames of one batch to alternating
// destinations each reach their own receiver: the sender's remembered
// decision (sender.fwdTo) is only reused for the same destination.
func TestForwardingAlternatingInBatch(t *testing.T) {
	sw := newSwitch(t, Options{})
	lan := mustNetwork(t, sw, "lan", 0)
	a := newVM(t, sw, "a", lan, macA, vmOpts{noStart: true})
	b := newVM(t, sw, "b", lan, macB, vmOpts{})
	c := newVM(t, sw, "c", lan, macC, vmOpts{})
	var want [2][][]byte // b's, c's
	for i := range 8 {
		dst := mac(macB)
		if i%2 == 1 {
			dst = mac(macC)
		}
		f := ether(dst, mac(macA), 0x88b5, bytes.Repeat([]byte{byte(i)}, 50))
		want[i%2] = append(want[i%2], f)
		a.send(f)
	}
	a.start() // all eight in one batch
	a.flushTX()
	for i, m := range []*vm{b, c} {
		var got []rxFrame
		waitFor(t, m.port.Name()+"'s frames", func() bool { got = append(got, m.frames()...); return len(got) >= len(want[i]) })
		if !slices.EqualFunc(bodies(got), want[i], bytes.Equal) {
			t.Errorf("%s got %x, want %x", m.port.Name(), bodies(got), want[i])
		}
	}
	// The batch's counters were added before its frames were published.
	if n := b.port.Counters().RxPackets + c.port.Counters().RxPackets; n != 8 {
		t.Errorf("b and c received %d frames, want 8", n)
	}
}
