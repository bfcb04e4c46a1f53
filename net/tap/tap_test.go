package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

const tapName = "hrtap0"

// setup opens a tap inside a fresh namespace and gives the kernel side
// 198.18.0.1/30, with the test's own address 198.18.0.2 already resolved
// (so the kernel never has to ARP for it).
func setup(t testing.TB, opts Options) (*Tap, *netnstest.NS) {
	t.Helper()
	ns := newNetns(t)
	var tp *Tap
	ns.Do(t, func() {
		var err error
		tp, err = Open(tapName, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
	})
	t.Cleanup(func() { tp.Close() })
	ns.IP(t, "addr", "add", "198.18.0.1/30", "dev", tapName)
	ns.IP(t, "neigh", "replace", peerIP.String(), "lladdr", peerMAC.String(), "dev", tapName, "nud", "permanent")
	return tp, ns
}

// readUntil reads frames until match accepts one (returning a copy of the
// whole buffer, header included) or the deadline passes.
func readUntil(t testing.TB, tp *Tap, what string, match func(hdr, frame []byte) bool) []byte {
	t.Helper()
	if err := tp.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, HdrLen+65550)
	}
	lens := make([]int, len(bufs))
	for {
		n, err := tp.ReadBatch(bufs, lens)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		for i := 0; i < n; i++ {
			b := bufs[i][:lens[i]]
			if len(b) < HdrLen+14 {
				t.Fatalf("short frame of %d bytes", len(b))
			}
			if match(b[:HdrLen], b[HdrLen:]) {
				return bytes.Clone(b)
			}
		}
	}
}

func TestOpenConfiguresLink(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantMTU int
	}{
		{"defaults", Options{}, 1500},
		{"mtu and mac", Options{MTU: 9000, MAC: kernelMAC}, 9000},
		{"offload", Options{Offload: true, MTU: 1400}, 1400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp, ns := setup(t, tc.opts)
			if tp.Name() != tapName {
				t.Errorf("Name() = %q, want %q", tp.Name(), tapName)
			}
			ifi := ns.Interface(t, tapName)
			if ifi.MTU != tc.wantMTU {
				t.Errorf("MTU %d, want %d", ifi.MTU, tc.wantMTU)
			}
			if tc.opts.MAC != nil && !bytes.Equal(ifi.HardwareAddr, tc.opts.MAC) {
				t.Errorf("MAC %v, want %v", ifi.HardwareAddr, tc.opts.MAC)
			}
			if ifi.Flags&net.FlagUp == 0 {
				t.Errorf("link not up: %v", ifi.Flags)
			}
		})
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		tap  string
		opts Options
		want string
	}{
		{"long name", strings.Repeat("x", 16), Options{}, "name longer"},
		{"short mac", "", Options{MAC: net.HardwareAddr{1, 2, 3}}, "not 6 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := Open(tc.tap, tc.opts)
			if err == nil {
				tp.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	t.Run("bad mtu", func(t *testing.T) {
		ns := newNetns(t)
		ns.Do(t, func() {
			tp, err := Open(tapName, Options{MTU: 10})
			if err == nil {
				tp.Close()
				t.Fatal("Open with MTU 10 succeeded")
			}
		})
	})
}

func TestARP(t *testing.T) {
	tp, _ := setup(t, Options{MAC: kernelMAC})
	req := withHdr([HdrLen]byte{}, arpRequest(peerMAC, peerIP, kernelIP))
	if n, err := tp.WriteBatch([][]byte{req}); n != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got := readUntil(t, tp, "ARP reply", func(_, f []byte) bool {
		return binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2
	})
	f := got[HdrLen:]
	if !bytes.Equal(f[0:6], peerMAC) || !bytes.Equal(f[6:12], kernelMAC) {
		t.Errorf("reply Ethernet dst %x src %x", f[0:6], f[6:12])
	}
	if !bytes.Equal(f[22:28], kernelMAC) || !bytes.Equal(f[28:32], kernelIP) {
		t.Errorf("reply says %v is at %x", net.IP(f[28:32]), f[22:28])
	}
	if !bytes.Equal(f[32:38], peerMAC) || !bytes.Equal(f[38:42], peerIP) {
		t.Errorf("reply target %x %v", f[32:38], net.IP(f[38:42]))
	}
}

func TestICMPEcho(t *testing.T) {
	tp, _ := setup(t, Options{MAC: kernelMAC})
	data := []byte("hyperroot tap echo payload")
	var frames [][]byte
	for seq := uint16(1); seq <= 4; seq++ {
		ip := ipv4(1, peerIP, kernelIP, icmpEcho(0x4242, seq, data))
		frames = append(frames, withHdr([HdrLen]byte{}, ether(kernelMAC, peerMAC, 0x0800, ip)))
	}
	if n, err := tp.WriteBatch(frames); n != len(frames) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	// All replies may arrive in one batch, so the matcher checks and
	// records each and accepts once every sequence number was answered.
	seen := map[uint16]bool{}
	readUntil(t, tp, "ICMP echo replies", func(_, f []byte) bool {
		if binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 1 || f[34] != 0 {
			return false
		}
		ip := f[14:]
		if csum(0, ip[:20]) != 0xffff {
			t.Errorf("reply IP header checksum wrong")
		}
		if !bytes.Equal(ip[12:16], kernelIP) || !bytes.Equal(ip[16:20], peerIP) {
			t.Errorf("reply from %v to %v", net.IP(ip[12:16]), net.IP(ip[16:20]))
		}
		icmp := ip[20:]
		if csum(0, icmp) != 0xffff {
			t.Errorf("reply ICMP checksum wrong")
		}
		if id := binary.BigEndian.Uint16(icmp[4:]); id != 0x4242 {
			t.Errorf("reply id %#x", id)
		}
		if !bytes.Equal(icmp[8:], data) {
			t.Errorf("reply data %q", icmp[8:])
		}
		seen[binary.BigEndian.Uint16(icmp[6:])] = true
		return len(seen) == len(frames)
	})
}

func TestWriteDropsMalformed(t *testing.T) {
	tp, _ := setup(t, Options{MAC: kernelMAC})
	// hdr_len beyond the frame makes the kernel refuse the header.
	var bad [HdrLen]byte
	binary.LittleEndian.PutUint16(bad[2:], 60000)
	frames := [][]byte{
		{1, 2, 3, 4, 5}, // shorter than the header itself
		withHdr(bad, arpRequest(peerMAC, peerIP, kernelIP)),
		withHdr([HdrLen]byte{}, arpRequest(peerMAC, peerIP, kernelIP)),
	}
	n, err := tp.WriteBatch(frames)
	if n != 3 || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want 3, nil", n, err)
	}
	if d := tp.Dropped(); d != 2 {
		t.Errorf("Dropped() = %d, want 2", d)
	}
	readUntil(t, tp, "ARP reply to the good frame", func(_, f []byte) bool {
		return binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2
	})
}

func TestCloseUnblocksRead(t *testing.T) {
	tp, _ := setup(t, Options{})
	done := make(chan error, 1)
	go func() {
		bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
		for {
			if _, err := tp.ReadBatch(bufs, lens); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, io.ErrClosedPipe) && !strings.Contains(err.Error(), "closed") {
			t.Errorf("ReadBatch after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReadBatch still blocked 2s after Close")
	}
	if _, err := tp.WriteBatch([][]byte{make([]byte, 60)}); err == nil {
		t.Error("WriteBatch after Close succeeded")
	}
}

func TestReadBatchArguments(t *testing.T) {
	tp, _ := setup(t, Options{})
	if _, err := tp.ReadBatch(make([][]byte, 2), make([]int, 1)); err == nil {
		t.Error("ReadBatch with too few lens succeeded")
	}
	if n, err := tp.ReadBatch(nil, nil); n != 0 || err != nil {
		t.Errorf("ReadBatch(nil) = %d, %v", n, err)
	}
}
