package tap

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// tcpPeer is the test's end of a TCP connection with a listener in the
// namespace, spoken in raw frames through the tap.
type tcpPeer struct {
	tp           *Tap
	sport, dport uint16
	seq, ack     uint32 // next to send; next expected from the kernel
}

func (p *tcpPeer) frame(flags byte, data []byte) []byte {
	seg := tcpSeg{sport: p.sport, dport: p.dport, seq: p.seq, ack: p.ack, flags: flags, data: data}
	if flags&tcpSYN != 0 {
		seg.mss = 1460
	}
	return withHdr([HdrLen]byte{}, ether(kernelMAC, peerMAC, 0x0800, ipv4(6, peerIP, kernelIP, tcp(seg, peerIP, kernelIP, false))))
}

// gsoFrame is one TCP super-segment carrying data, to be cut by the kernel
// into gsoSize pieces; its checksum is left partial, as a virtio driver
// with VIRTIO_NET_F_CSUM would leave it.
func (p *tcpPeer) gsoFrame(data []byte, gsoSize uint16) []byte {
	seg := tcpSeg{sport: p.sport, dport: p.dport, seq: p.seq, ack: p.ack, flags: tcpACK | tcpPSH, data: data}
	var h [HdrLen]byte
	h[0] = hdrFlagNeedsCsum
	h[1] = gsoTCPv4
	binary.LittleEndian.PutUint16(h[2:], 14+20+20) // hdr_len
	binary.LittleEndian.PutUint16(h[4:], gsoSize)
	binary.LittleEndian.PutUint16(h[6:], 14+20) // csum_start
	binary.LittleEndian.PutUint16(h[8:], 16)    // csum_offset
	return withHdr(h, ether(kernelMAC, peerMAC, 0x0800, ipv4(6, peerIP, kernelIP, tcp(seg, peerIP, kernelIP, true))))
}

// ours reports whether f is a TCP segment of this connection from the kernel.
func (p *tcpPeer) ours(f []byte) bool {
	return len(f) >= 14+40 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 6 &&
		binary.BigEndian.Uint16(f[34:]) == p.dport && binary.BigEndian.Uint16(f[36:]) == p.sport
}

// tcpPayload returns the TCP flags, sequence number and payload of frame f.
func tcpPayload(f []byte) (flags byte, seq uint32, data []byte) {
	ip := f[14:]
	th := ip[int(ip[0]&0xf)*4:]
	return th[13], binary.BigEndian.Uint32(th[4:]), th[int(th[12]>>4)*4:]
}

// connect opens a TCP connection from the test to a listener in ns and
// returns both ends.
func connect(t *testing.T, tp *Tap, ns *netnstest.NS) (*tcpPeer, net.Conn) {
	t.Helper()
	var ln net.Listener
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", kernelIP.String()+":0"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	p := &tcpPeer{tp: tp, sport: 40001, dport: uint16(ln.Addr().(*net.TCPAddr).Port), seq: 0x1000}
	if _, err := tp.WriteBatch([][]byte{p.frame(tcpSYN, nil)}); err != nil {
		t.Fatal(err)
	}
	p.seq++
	synack := readUntil(t, tp, "SYN-ACK", func(_, f []byte) bool {
		fl, _, _ := tcpPayload(f)
		return p.ours(f) && fl&(tcpSYN|tcpACK) == tcpSYN|tcpACK
	})
	_, iss, _ := tcpPayload(synack[HdrLen:])
	p.ack = iss + 1
	if _, err := tp.WriteBatch([][]byte{p.frame(tcpACK, nil)}); err != nil {
		t.Fatal(err)
	}
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { c.Close() })
		return p, c
	case <-time.After(5 * time.Second):
		t.Fatal("listener never accepted the connection")
	}
	return nil, nil
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestGSOToKernel writes one 20000-byte TCP frame, far above the 1500-byte
// MTU, with gso_type TCPV4: the kernel must accept it, segment it and
// deliver every byte to the socket.
func TestGSOToKernel(t *testing.T) {
	tp, ns := setup(t, Options{MAC: kernelMAC, MTU: 1500, Offload: true})
	p, conn := connect(t, tp, ns)
	data := pattern(20000)
	f := p.gsoFrame(data, 1448)
	if len(f) <= HdrLen+1514 {
		t.Fatalf("test frame of %d bytes is not above the MTU", len(f))
	}
	if n, err := tp.WriteBatch([][]byte{f}); n != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	if d := tp.Dropped(); d != 0 {
		t.Fatalf("kernel refused the GSO frame (Dropped = %d)", d)
	}
	got := make([]byte, len(data))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("socket read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("socket received different bytes")
	}
}

// TestGSOFromKernel has the kernel send a first flight of TCP data: with
// Options.Offload it must arrive as GSO super-frames (the kernel no longer
// segments for the tap), without it as MTU-sized frames. Either way the
// bytes must be the ones written.
func TestGSOFromKernel(t *testing.T) {
	for _, offload := range []bool{true, false} {
		name := "offload"
		if !offload {
			name = "no offload"
		}
		t.Run(name, func(t *testing.T) {
			tp, ns := setup(t, Options{MAC: kernelMAC, MTU: 1500, Offload: offload})
			p, conn := connect(t, tp, ns)
			data := pattern(60000)
			go conn.Write(data)
			// Without ACKs the kernel sends its initial window (10 segments)
			// and waits; read until those bytes are in.
			const flight = 10 * 1460
			got := make([]byte, len(data))
			var (
				have, maxLen int
				gsoSeen      bool
			)
			readUntil(t, tp, "first flight", func(h, f []byte) bool {
				if !p.ours(f) {
					return false
				}
				_, seq, payload := tcpPayload(f)
				off := int(seq - p.ack)
				if off < 0 || off+len(payload) > len(got) {
					t.Fatalf("segment at offset %d len %d outside the data", off, len(payload))
				}
				if h[1] != 0 {
					gsoSeen = true
					if h[1] != gsoTCPv4 || h[0]&hdrFlagNeedsCsum == 0 {
						t.Errorf("GSO header flags %#x type %d", h[0], h[1])
					}
					if gs := binary.LittleEndian.Uint16(h[4:]); gs != 1460 {
						t.Errorf("gso_size %d, want 1460", gs)
					}
				}
				maxLen = max(maxLen, len(f))
				copy(got[off:], payload)
				have = max(have, off+len(payload))
				return have >= flight
			})
			if !bytes.Equal(got[:have], data[:have]) {
				t.Error("frames carried different bytes than the socket wrote")
			}
			if offload && (!gsoSeen || maxLen <= 1514) {
				t.Errorf("offload: no GSO frame (largest %d bytes)", maxLen)
			}
			if !offload && (gsoSeen || maxLen > 1514) {
				t.Errorf("no offload: got GSO %v, largest frame %d bytes", gsoSeen, maxLen)
			}
		})
	}
}
