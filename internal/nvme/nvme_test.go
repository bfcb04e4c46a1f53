package nvme

import (
	"encoding/binary"
	"testing"
)

// The ioctl number as linux/nvme_ioctl.h makes it: _IOWR('N', 0x41,
// struct nvme_admin_cmd), a 72-byte struct.
func TestIoctlNumber(t *testing.T) {
	if ioctlAdminCmd != 0xc0484e41 {
		t.Errorf("NVME_IOCTL_ADMIN_CMD = %#x, want 0xc0484e41", ioctlAdminCmd)
	}
}

func TestParseSecondaries(t *testing.T) {
	b := make([]byte, 4096)
	b[0] = 2
	put := func(i int, id, pcid uint16, online bool, vf, vq, vi uint16) {
		e := b[32+32*i:]
		binary.LittleEndian.PutUint16(e[0:], id)
		binary.LittleEndian.PutUint16(e[2:], pcid)
		if online {
			e[4] = 1
		}
		binary.LittleEndian.PutUint16(e[8:], vf)
		binary.LittleEndian.PutUint16(e[10:], vq)
		binary.LittleEndian.PutUint16(e[12:], vi)
	}
	put(0, 1, 0, false, 1, 0, 0)
	put(1, 2, 0, true, 2, 2, 1)
	got := parseSecondaries(b)
	want := []Secondary{{ID: 1, VF: 1}, {ID: 2, Online: true, VF: 2, VQ: 2, VI: 1}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseSecondaries = %+v, want %+v", got, want)
	}
	// A count the buffer cannot hold is cut to what it holds.
	b[0] = 255
	if n := len(parseSecondaries(b)); n != 127 {
		t.Errorf("a count of 255 in 4 KiB gave %d entries, want 127", n)
	}
	if n := len(parseSecondaries(b[:100])); n != 2 {
		t.Errorf("a count of 255 in 100 bytes gave %d entries, want 2", n)
	}
	if parseSecondaries(b[:10]) != nil {
		t.Error("a buffer shorter than the header gave entries")
	}
}

// FuzzParseSecondaries: whatever a controller answers, parsing it stays in
// bounds.
func FuzzParseSecondaries(f *testing.F) {
	f.Add([]byte{1, 0, 0})
	f.Add(append([]byte{3}, make([]byte, 200)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n := len(parseSecondaries(b)); len(b) >= 32 && n > (len(b)-32)/32 {
			t.Fatalf("%d entries from %d bytes", n, len(b))
		}
	})
}
