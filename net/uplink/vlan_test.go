package uplink

import (
	"bytes"
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hdrFrame is a v1 header with the given flags, hdr_len and csum_start,
// then a 60-byte frame whose bytes count up.
func hdrFrame(flags byte, hdrLen, csumStart uint16) []byte {
	b := make([]byte, HdrLen+60)
	b[0] = flags
	binary.LittleEndian.PutUint16(b[2:], hdrLen)
	binary.LittleEndian.PutUint16(b[6:], csumStart)
	for i := HdrLen; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func TestRetag(t *testing.T) {
	tests := []struct {
		name          string
		in            []byte
		room          int // spare bytes after the frame
		ok            bool
		wantHdrLen    uint16
		wantCsumStart uint16
	}{
		{"plain", hdrFrame(0, 0, 0), 4, true, 0, 0},
		{"needs csum", hdrFrame(flagNeedsCsum, 0, 34), 4, true, 0, 38},
		{"gso hdr_len", hdrFrame(flagNeedsCsum, 54, 34), 100, true, 58, 38},
		{"csum_start ignored without flag", hdrFrame(0, 0, 34), 4, true, 0, 34},
		{"no room", hdrFrame(0, 0, 0), 3, false, 0, 0},
		{"csum_start overflow", hdrFrame(flagNeedsCsum, 0, 0xfffd), 4, false, 0, 0},
		{"hdr_len overflow", hdrFrame(0, 0xfffc, 0), 4, false, 0, 0},
		{"runt", make([]byte, HdrLen+13), 4, false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.in)
			b := append(bytes.Clone(tc.in), make([]byte, tc.room)...)
			got, ok := retag(b, n, unix.ETH_P_8021Q, 0xa02a)
			if ok != tc.ok {
				t.Fatalf("retag ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if got != n+4 {
				t.Errorf("length %d, want %d", got, n+4)
			}
			want := tagged(tc.in, unix.ETH_P_8021Q, 0xa02a)
			if !bytes.Equal(b[HdrLen:got], want[HdrLen:]) {
				t.Errorf("frame\n got %x\nwant %x", b[HdrLen:got], want[HdrLen:])
			}
			if hl := binary.LittleEndian.Uint16(b[2:]); hl != tc.wantHdrLen {
				t.Errorf("hdr_len %d, want %d", hl, tc.wantHdrLen)
			}
			if cs := binary.LittleEndian.Uint16(b[6:]); cs != tc.wantCsumStart {
				t.Errorf("csum_start %d, want %d", cs, tc.wantCsumStart)
			}
		})
	}
}

// cmsg encodes one control message the way the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.SizeofCmsghdr:], data)
	return b
}

func auxdata(status uint32, tci, tpid uint16) []byte {
	a := unix.TpacketAuxdata{Status: status, Len: 60, Snaplen: 60, Vlan_tci: tci, Vlan_tpid: tpid}
	return cmsg(unix.SOL_PACKET, unix.PACKET_AUXDATA, unsafe.Slice((*byte)(unsafe.Pointer(&a)), unsafe.Sizeof(a)))
}

func TestVLANTag(t *testing.T) {
	valid := uint32(unix.TP_STATUS_VLAN_VALID)
	withTPID := valid | unix.TP_STATUS_VLAN_TPID_VALID
	other := cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, []byte{1, 2, 3, 4})
	tests := []struct {
		name      string
		oob       []byte
		ok        bool
		tpid, tci uint16
	}{
		{"empty", nil, false, 0, 0},
		{"no tag", auxdata(0, 0, 0), false, 0, 0},
		{"tag, tpid not reported", auxdata(valid, 42, 0), true, unix.ETH_P_8021Q, 42},
		{"tag with 802.1ad tpid", auxdata(withTPID, 7, unix.ETH_P_8021AD), true, unix.ETH_P_8021AD, 7},
		{"tpid valid but zero", auxdata(withTPID, 7, 0), true, unix.ETH_P_8021Q, 7},
		{"after another message", append(other, auxdata(valid, 99, 0)...), true, unix.ETH_P_8021Q, 99},
		{"truncated", auxdata(valid, 42, 0)[:unix.SizeofCmsghdr+10], false, 0, 0},
		{"wrong type", cmsg(unix.SOL_PACKET, unix.PACKET_AUXDATA+1, make([]byte, 20)), false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tpid, tci, ok := vlanTag(tc.oob)
			if ok != tc.ok || tpid != tc.tpid || tci != tc.tci {
				t.Errorf("vlanTag = %#x, %#x, %v; want %#x, %#x, %v", tpid, tci, ok, tc.tpid, tc.tci, tc.ok)
			}
		})
	}
}

// FuzzVLANTag feeds arbitrary control bytes to the auxdata parser: it must
// never read out of bounds, and a tag it reports must have a TPID.
func FuzzVLANTag(f *testing.F) {
	f.Add([]byte{})
	f.Add(auxdata(unix.TP_STATUS_VLAN_VALID, 42, 0))
	f.Add(auxdata(unix.TP_STATUS_VLAN_VALID|unix.TP_STATUS_VLAN_TPID_VALID, 7, unix.ETH_P_8021AD))
	f.Fuzz(func(t *testing.T, oob []byte) {
		tpid, _, ok := vlanTag(oob)
		if ok && tpid == 0 {
			t.Fatal("tag reported with TPID 0")
		}
	})
}

// FuzzRetag retags arbitrary frames in buffers with arbitrary spare room:
// no panic, and on success the frame is exactly the old one with the tag
// after the MACs.
func FuzzRetag(f *testing.F) {
	f.Add(hdrFrame(flagNeedsCsum, 54, 34), uint16(unix.ETH_P_8021Q), uint16(42), uint8(4))
	f.Add(hdrFrame(0, 0, 0), uint16(unix.ETH_P_8021AD), uint16(0xffff), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, tpid, tci uint16, room uint8) {
		b := append(bytes.Clone(in), make([]byte, room)...)
		n, ok := retag(b, len(in), tpid, tci)
		if !ok {
			return
		}
		if n != len(in)+4 {
			t.Fatalf("length %d from %d", n, len(in))
		}
		if !bytes.Equal(b[HdrLen:n], tagged(in, tpid, tci)[HdrLen:]) {
			t.Fatal("frame not the original plus tag")
		}
	})
}
