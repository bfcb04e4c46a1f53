package uplink

import (
	"bytes"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// testType is the IEEE "local experimental" EtherType: no stack in the
// namespace answers it, so test frames are told apart from IPv6 chatter.
const testType = 0x88b5

var (
	foreignMAC = []byte{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee} // nobody's address
	srcMAC     = []byte{0x02, 0x68, 0x72, 0x00, 0x00, 0x09}
)

// pair is a veth pair a <-> b in a fresh namespace, an Uplink on each end.
type pair struct {
	ns   *netnstest.NS
	a, b *Uplink
}

func newPair(t testing.TB) *pair {
	t.Helper()
	ns := netnstest.New(t)
	ns.Veth(t, "hra", "hrb")
	p := &pair{ns: ns}
	p.a = openIn(t, ns, "hra")
	p.b = openIn(t, ns, "hrb")
	ns.WaitCarrier(t, "hra", "hrb")
	warmUp(t, p.a, p.b)
	warmUp(t, p.b, p.a)
	return p
}

// probeType marks warm-up frames; tests filter on testType and never see them.
const probeType = 0x88b6

// warmUp sends probes from one uplink until one reaches the other: carrier
// is reported a moment before the kernel attaches the real queue, and
// until then frames vanish without an error.
func warmUp(t testing.TB, from, to *Uplink) {
	t.Helper()
	r := newReader(to, 8, 2048)
	probe := [][]byte{testFrame(foreignMAC, probeType, 60, 'Z', 0)}
	defer to.SetReadDeadline(time.Time{})
	for try := 0; try < 100; try++ {
		if _, err := from.WriteBatch(probe); err != nil {
			t.Fatal(err)
		}
		to.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		for {
			n, err := to.ReadBatch(r.bufs, r.lens)
			if err != nil {
				break
			}
			for i := 0; i < n; i++ {
				if binary.BigEndian.Uint16(r.bufs[i][HdrLen+12:]) == probeType {
					return
				}
			}
		}
	}
	t.Fatalf("%s -> %s: no probe got through", from.Name(), to.Name())
}

// openIn opens an Uplink on ifname inside ns, closed when t ends.
func openIn(t testing.TB, ns *netnstest.NS, ifname string) *Uplink {
	t.Helper()
	var u *Uplink
	ns.Do(t, func() {
		var err error
		if u, err = Open(ifname, Options{}); err != nil {
			t.Fatalf("Open(%s): %v", ifname, err)
		}
	})
	t.Cleanup(func() { u.Close() })
	return u
}

// testFrame is a v1 header (zero) and an Ethernet frame of size bytes,
// EtherType et, whose payload starts with a marker and a sequence number.
func testFrame(dst []byte, et uint16, size int, marker byte, seq uint16) []byte {
	b := make([]byte, HdrLen+size)
	f := b[HdrLen:]
	copy(f, dst)
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], et)
	f[14] = marker
	binary.BigEndian.PutUint16(f[15:], seq)
	for i := 17; i < len(f); i++ {
		f[i] = byte(i) ^ byte(seq)
	}
	return b
}

type reader struct {
	u    *Uplink
	bufs [][]byte
	lens []int
}

func newReader(u *Uplink, batch, size int) *reader {
	r := &reader{u: u, bufs: make([][]byte, batch), lens: make([]int, batch)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, size)
	}
	return r
}

// until hands every frame of EtherType et (header included) to fn until fn
// says stop, failing after a deadline.
func (r *reader) until(t testing.TB, what string, et uint16, fn func(b []byte) (stop bool)) {
	t.Helper()
	if err := r.u.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := r.u.ReadBatch(r.bufs, r.lens)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		for i := 0; i < n; i++ {
			b := r.bufs[i][:r.lens[i]]
			if binary.BigEndian.Uint16(b[HdrLen+12:]) == et && fn(b) {
				return
			}
		}
	}
}

func TestFramesIntact(t *testing.T) {
	p := newPair(t)
	sizes := []int{60, 64, 65, 128, 1000, 1499, 1514}
	for _, dir := range []struct {
		name     string
		from, to *Uplink
	}{{"a to b", p.a, p.b}, {"b to a", p.b, p.a}} {
		t.Run(dir.name, func(t *testing.T) {
			var sent [][]byte
			for i, size := range sizes {
				sent = append(sent, testFrame(foreignMAC, testType, size, 'T', uint16(i)))
			}
			if n, err := dir.from.WriteBatch(sent); n != len(sent) || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			next := 0
			newReader(dir.to, 4, HdrLen+2048).until(t, "test frames", testType, func(b []byte) bool {
				want := sent[next]
				if b[1] != 0 {
					t.Errorf("frame %d: gso_type %d", next, b[1])
				}
				if !bytes.Equal(b[HdrLen:], want[HdrLen:]) {
					t.Errorf("frame %d: got %d bytes %x..., want %d bytes %x...", next, len(b)-HdrLen, b[HdrLen:HdrLen+20], len(want)-HdrLen, want[HdrLen:HdrLen+20])
				}
				next++
				return next == len(sent)
			})
			if d := dir.from.Dropped() + dir.to.Dropped(); d != 0 {
				t.Errorf("Dropped = %d", d)
			}
		})
	}
}

// promiscuity is the interface's promiscuous-mode reference count, which
// netlink reports (the flags from SIOCGIFFLAGS show only what a user asked
// for with `ip link set promisc on`, not packet-socket memberships).
func promiscuity(t testing.TB, ns *netnstest.NS, ifname string) int {
	t.Helper()
	out := ns.IP(t, "-d", "link", "show", ifname)
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "promiscuity" {
			n, err := strconv.Atoi(f[i+1])
			if err != nil {
				t.Fatalf("promiscuity %q: %v", f[i+1], err)
			}
			return n
		}
	}
	t.Fatalf("no promiscuity in %s", out)
	return 0
}

// TestPromiscuous checks that an open uplink holds the NIC in promiscuous
// mode (and brought it up), that closing it releases the mode, and that
// frames for a MAC nobody owns are delivered.
func TestPromiscuous(t *testing.T) {
	ns := netnstest.New(t)
	ns.Veth(t, "hra", "hrb")
	if n, fl := promiscuity(t, ns, "hra"), ns.Interface(t, "hra").Flags; n != 0 || fl&net.FlagUp != 0 {
		t.Fatalf("fresh veth: promiscuity %d, flags %v", n, fl)
	}
	a := openIn(t, ns, "hra")
	b := openIn(t, ns, "hrb")
	ns.WaitCarrier(t, "hra", "hrb")
	warmUp(t, b, a)
	if n := promiscuity(t, ns, "hra"); n != 1 {
		t.Errorf("open uplink: promiscuity %d, want 1", n)
	}
	if fl := ns.Interface(t, "hra").Flags; fl&net.FlagUp == 0 {
		t.Errorf("open uplink: link not up (%v)", fl)
	}
	f := testFrame(foreignMAC, testType, 100, 'P', 1)
	if _, err := b.WriteBatch([][]byte{f}); err != nil {
		t.Fatal(err)
	}
	newReader(a, 1, 2048).until(t, "frame to a foreign MAC", testType, func(got []byte) bool {
		return bytes.Equal(got[HdrLen:], f[HdrLen:])
	})
	a.Close()
	if n := promiscuity(t, ns, "hra"); n != 0 {
		t.Errorf("closed uplink: promiscuity %d, want 0", n)
	}
}

// tagged returns frame f (v1 header first) with a VLAN tag after its MACs.
func tagged(f []byte, tpid, tci uint16) []byte {
	b := make([]byte, 0, len(f)+4)
	b = append(b, f[:HdrLen+12]...)
	b = binary.BigEndian.AppendUint16(b, tpid)
	b = binary.BigEndian.AppendUint16(b, tci)
	return append(b, f[HdrLen+12:]...)
}

// TestVLANTagsKept sends tagged frames across the pair. The receiving
// kernel always moves the tag out of the frame into metadata before packet
// sockets see it, so the bytes arrive intact only if the uplink puts the
// tag back from PACKET_AUXDATA; and the sender must send them unchanged.
func TestVLANTagsKept(t *testing.T) {
	p := newPair(t)
	tests := []struct {
		name      string
		tpid, tci uint16
	}{
		{"802.1Q vid 42", unix.ETH_P_8021Q, 42},
		{"802.1Q pcp 5 vid 4094", unix.ETH_P_8021Q, 5<<13 | 4094},
		{"802.1ad vid 100", unix.ETH_P_8021AD, 100},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tagged(testFrame(foreignMAC, testType, 200, 'V', uint16(i)), tc.tpid, tc.tci)
			if n, err := p.b.WriteBatch([][]byte{f}); n != 1 || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			newReader(p.a, 4, 2048).until(t, "tagged frame", tc.tpid, func(b []byte) bool {
				if !bytes.Equal(b[HdrLen:], f[HdrLen:]) {
					t.Errorf("got  %x\nwant %x", b[HdrLen:], f[HdrLen:])
				}
				return true
			})
		})
	}
}

// TestOwnTransmissionsIgnored sends frames out of a, then a sentinel from
// b: a must read the sentinel and none of its own frames.
func TestOwnTransmissionsIgnored(t *testing.T) {
	p := newPair(t)
	var own [][]byte
	for i := 0; i < 8; i++ {
		own = append(own, testFrame(foreignMAC, testType, 64, 'O', uint16(i)))
	}
	if _, err := p.a.WriteBatch(own); err != nil {
		t.Fatal(err)
	}
	if _, err := p.b.WriteBatch([][]byte{testFrame(foreignMAC, testType, 64, 'S', 0)}); err != nil {
		t.Fatal(err)
	}
	newReader(p.a, 16, 2048).until(t, "sentinel", testType, func(b []byte) bool {
		switch b[HdrLen+14] {
		case 'O':
			t.Errorf("read back own frame %d", binary.BigEndian.Uint16(b[HdrLen+15:]))
		case 'S':
			return true
		}
		return false
	})
}

func TestWriteDropsRefused(t *testing.T) {
	p := newPair(t)
	badHdr := testFrame(foreignMAC, testType, 100, 'B', 1)
	binary.LittleEndian.PutUint16(badHdr[2:], 60000) // hdr_len past the frame
	frames := [][]byte{
		make([]byte, HdrLen+10),                       // runt: no whole Ethernet header
		testFrame(foreignMAC, testType, 3000, 'B', 2), // above the 1500 MTU, no GSO
		badHdr, // header the kernel rejects
		testFrame(foreignMAC, testType, 100, 'G', 3), // good
	}
	n, err := p.a.WriteBatch(frames)
	if n != len(frames) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(frames))
	}
	if d := p.a.Dropped(); d != 3 {
		t.Errorf("Dropped() = %d, want 3", d)
	}
	newReader(p.b, 4, 4096).until(t, "the good frame", testType, func(b []byte) bool {
		if b[HdrLen+14] != 'G' {
			t.Errorf("refused frame %q arrived", b[HdrLen+14])
		}
		return true
	})
}

func TestReadBatchArguments(t *testing.T) {
	p := newPair(t)
	if _, err := p.a.ReadBatch(make([][]byte, 2), make([]int, 1)); err == nil {
		t.Error("ReadBatch with too few lens succeeded")
	}
	if _, err := p.a.ReadBatch([][]byte{make([]byte, 20)}, []int{0}); err == nil {
		t.Error("ReadBatch with a 20-byte buffer succeeded")
	}
	if n, err := p.a.ReadBatch(nil, nil); n != 0 || err != nil {
		t.Errorf("ReadBatch(nil) = %d, %v", n, err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	p := newPair(t)
	done := make(chan error, 1)
	go func() {
		bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
		for {
			if _, err := p.a.ReadBatch(bufs, lens); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	if err := p.a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !strings.Contains(err.Error(), "closed") {
			t.Errorf("ReadBatch after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReadBatch still blocked 2s after Close")
	}
}

func TestOpenMissingInterface(t *testing.T) {
	if _, err := Open("hr-no-such-if", Options{}); err == nil {
		t.Fatal("Open of a missing interface succeeded")
	}
}
