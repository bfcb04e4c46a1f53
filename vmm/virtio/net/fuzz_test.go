package virtionet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/memory"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

// scriptedBackend is a vhost-user backend that answers each request
// wanting a reply as its script says: well-formed, for another request,
// without the reply flag, with a short payload, or by hanging up. What it
// says (the feature words, the acks) comes from the script too.
func scriptedBackend(t *testing.T, c *net.UnixConn, script []byte, done chan<- struct{}) {
	defer close(done)
	defer c.Close()
	le := binary.LittleEndian
	hdr := make([]byte, 12)
	oob := make([]byte, unix.CmsgSpace(8*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(hdr, oob)
		if err != nil || n != 12 {
			return
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
			}
		}
		req, flags, size := le.Uint32(hdr), le.Uint32(hdr[4:]), le.Uint32(hdr[8:])
		if size > 4096 {
			return
		}
		payload := make([]byte, size)
		if _, err := readFull(c, payload); err != nil {
			return
		}
		hasReply := req == uint32(vhostuser.GetFeatures) || req == uint32(vhostuser.GetProtocolFeatures)
		if !hasReply && flags&vhostuser.FlagNeedReply == 0 {
			continue
		}
		var sel byte
		var val uint64
		if len(script) >= 9 {
			sel, val = script[0], le.Uint64(script[1:])
			script = script[9:]
		}
		rf, rlen, rreq := vhostuser.Version|vhostuser.FlagReply, uint32(8), req
		switch sel % 8 {
		case 1:
			rreq = req + 1
		case 2:
			rf = vhostuser.Version
		case 3:
			rlen = 4
		case 4:
			return // hang up
		case 5:
			rf = 2 | vhostuser.FlagReply // another protocol version
		}
		out := le.AppendUint32(nil, rreq)
		out = le.AppendUint32(out, rf)
		out = le.AppendUint32(out, rlen)
		out = le.AppendUint64(out, val)
		if _, err := c.Write(out[:12+rlen]); err != nil {
			return
		}
	}
}

func readFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// FuzzFrontend runs New against a backend whose answers come from the
// input (the peer), then drives the configuration space and feature
// negotiation with the rest of it (the guest), and checks: no panic, no
// hang; New fails or offers the driver only what the device implements
// (the backend's pass-through bits, VERSION_1 always, never the
// backend's own protocol bit, MQ or control queue); Ack takes exactly
// the subsets of that offer with VERSION_1; the configuration space reads
// the MAC, one queue pair and the MTU, zeros past it, and ignores writes.
//
// Input: a byte saying how many 9-byte backend answers follow, those
// answers (a selector and a value), then 10-byte guest steps (kind, offset,
// 8 bytes of value).
func FuzzFrontend(f *testing.F) {
	le := binary.LittleEndian
	ans := func(sel byte, v uint64) []byte { return le.AppendUint64([]byte{sel}, v) }
	step := func(kind, off byte, v uint64) []byte { return le.AppendUint64([]byte{kind, off}, v) }
	cat := func(s ...[]byte) (out []byte) {
		for _, b := range s {
			out = append(out, b...)
		}
		return out
	}
	good := uint64(virtio.FeatureVersion1 | virtio.FeatureRingEventIdx | FeatureMrgRxbuf | FeatureCsum | vhostuser.FeatureProtocolFeatures | 1<<22 | 1<<17)
	f.Add(cat([]byte{3}, ans(0, good), ans(0, vhostuser.ProtocolReplyAck), ans(0, 0),
		step(0, 0, 0), step(0, 6, 0), step(1, 0, 0xFFFF_FFFF_FFFF), step(2, 0, virtio.FeatureVersion1|FeatureMAC), step(2, 0, 1<<22)))
	f.Add(cat([]byte{2}, ans(0, virtio.FeatureVersion1), ans(0, 0), step(0, 10, 0)))
	f.Add(cat([]byte{1}, ans(0, FeatureCsum))) // no VERSION_1: refused
	f.Add(cat([]byte{2}, ans(0, good), ans(3, 1)))
	f.Add(cat([]byte{1}, ans(1, good)))
	f.Add(cat([]byte{1}, ans(4, good)))
	f.Add(cat([]byte{4}, ans(0, good), ans(0, vhostuser.ProtocolReplyAck), ans(0, 0), ans(0, 1))) // SET_MEM_TABLE refused
	mem, err := memory.New(1<<20, memory.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		n := int(in[0]%8) * 9
		in = in[1:]
		script := in[:min(n, len(in))]
		in = in[len(script):]
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		conn := func(fd int) *net.UnixConn {
			f := os.NewFile(uintptr(fd), "vhost-user")
			defer f.Close()
			c, err := net.FileConn(f)
			if err != nil {
				t.Fatal(err)
			}
			return c.(*net.UnixConn)
		}
		front, back := conn(fds[0]), conn(fds[1])
		done := make(chan struct{})
		go scriptedBackend(t, back, script, done)
		dialed := false
		dial := func() (*net.UnixConn, error) {
			if dialed {
				return nil, errors.New("no backend")
			}
			dialed = true
			return front, nil
		}
		d, err := New(Options{Dial: dial, Memory: mem, MAC: mac, MTU: 1500, Retry: time.Hour})
		if err != nil {
			front.Close()
			<-done
			return
		}
		defer func() {
			d.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("backend still connected after Close")
			}
		}()
		offer := d.Features()
		if extra := offer &^ (passThrough | FeatureMAC | FeatureStatus | FeatureMTU); extra != 0 {
			t.Fatalf("offers %#x beyond what the device implements", extra)
		}
		if offer&(virtio.FeatureVersion1|FeatureMAC|FeatureStatus|FeatureMTU) != virtio.FeatureVersion1|FeatureMAC|FeatureStatus|FeatureMTU {
			t.Fatalf("offer %#x lacks VERSION_1, MAC, STATUS or MTU", offer)
		}
		var want [16]byte
		copy(want[:], mac)
		le.PutUint16(want[cfgPairs:], 1)
		le.PutUint16(want[cfgMTU:], 1500)
		for ; len(in) >= 10; in = in[10:] {
			kind, off, v := in[0], uint64(in[1]), le.Uint64(in[2:])
			width := 1 << (kind >> 4 & 3)
			switch kind % 3 {
			case 0:
				got := make([]byte, width)
				d.ReadConfig(off, got)
				for i, b := range got {
					o := off + uint64(i)
					w := byte(0)
					if o < uint64(len(want)) {
						w = want[o]
					}
					if o == cfgStatus || o == cfgStatus+1 {
						continue // the link may go down when the script hangs up
					}
					if b != w {
						t.Fatalf("config byte %d = %#x, want %#x", o, b, w)
					}
				}
			case 1:
				d.WriteConfig(off, le.AppendUint64(nil, v)[:width])
				var after [16]byte
				d.ReadConfig(0, after[:])
				after[cfgStatus], after[cfgStatus+1] = 0, 0
				if !bytes.Equal(after[:], want[:]) {
					t.Fatalf("a config write changed it: % x", after)
				}
			case 2:
				err := d.Ack(v)
				ok := v&^offer == 0 && v&virtio.FeatureVersion1 != 0
				if (err == nil) != ok {
					t.Fatalf("Ack(%#x) of offer %#x = %v", v, offer, err)
				}
			}
		}
	})
}
