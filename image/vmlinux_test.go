package image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/boot"
)

// tinyVmlinux is an ELF vmlinux with one executable segment at 16 MiB,
// entered at its start.
func tinyVmlinux() []byte {
	le := binary.LittleEndian
	b := make([]byte, 0x200)
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 16<<20)
	le.PutUint64(b[32:], 64)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 1)
	ph := b[64:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[8:], 0x100)
	le.PutUint64(ph[24:], 16<<20)
	le.PutUint64(ph[32:], 0x100)
	le.PutUint64(ph[40:], 0x180)
	for i := 0x100; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// tinyBzImage wraps payload (already compressed, size trailer included) in
// the least bzImage boot.ParseBzImage accepts.
func tinyBzImage(payload []byte) []byte {
	le := binary.LittleEndian
	const setup = 2 * 512
	code := append(make([]byte, 0x40), payload...)
	img := append(make([]byte, setup), code...)
	img[0x1F1] = 1
	le.PutUint32(img[0x1F4:], uint32((len(code)+15)/16))
	le.PutUint16(img[0x1FE:], 0xAA55)
	img[0x200], img[0x201] = 0xEB, 0x6A
	copy(img[0x202:], "HdrS")
	le.PutUint16(img[0x206:], 0x020F)
	img[0x211] = 1 // LOADED_HIGH
	le.PutUint32(img[0x230:], 2<<20)
	img[0x234] = 1
	le.PutUint16(img[0x236:], 1) // XLF_KERNEL_64
	le.PutUint32(img[0x238:], 2047)
	le.PutUint32(img[0x248:], 0x40)
	le.PutUint32(img[0x24C:], uint32(len(payload)))
	le.PutUint64(img[0x258:], 16<<20)
	le.PutUint32(img[0x260:], 32<<20)
	img = append(img, make([]byte, 16)...) // syssize rounds up
	return img
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return binary.LittleEndian.AppendUint32(buf.Bytes(), uint32(len(b)))
}

// TestUnpackVmlinuxGzip: the payload unpacked, the relocation table after
// the ELF cut off, the result a vmlinux the VMM boots; a wrong size trailer
// and an unknown compression are errors.
func TestUnpackVmlinuxGzip(t *testing.T) {
	elf := tinyVmlinux()
	relocs := bytes.Repeat([]byte{0xAB}, 300)
	got, err := UnpackVmlinux(tinyBzImage(gzipped(t, append(bytes.Clone(elf), relocs...))))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, elf) {
		t.Fatalf("unpacked %d bytes, want the %d of the ELF", len(got), len(elf))
	}
	bad := gzipped(t, elf)
	binary.LittleEndian.PutUint32(bad[len(bad)-4:], uint32(len(elf)+1))
	if _, err := UnpackVmlinux(tinyBzImage(bad)); err == nil || !strings.Contains(err.Error(), "trailer says") {
		t.Errorf("wrong size trailer: %v", err)
	}
	if _, err := UnpackVmlinux(tinyBzImage(append([]byte("\xfd7zXZ\x00 not really xz"), 1, 2, 3, 4))); err == nil || !strings.Contains(err.Error(), "only LZ4 and gzip") {
		t.Errorf("xz payload: %v", err)
	}
	notELF := gzipped(t, bytes.Repeat([]byte("not an ELF "), 20))
	if _, err := UnpackVmlinux(tinyBzImage(notELF)); err == nil {
		t.Error("a payload that is not an ELF was accepted")
	}
}

// TestUnpackDebianVmlinux: Debian's kernel (LZ4) unpacks to the vmlinux the
// VMM boots: linked at 16 MiB, entered there, its segments where the
// decompressor would have put them.
func TestUnpackDebianVmlinux(t *testing.T) {
	dir := os.Getenv("HYPERROOT_IMAGE")
	if dir == "" {
		dir = "../out/image"
	}
	bz, err := os.ReadFile(filepath.Join(dir, "vmlinuz"))
	testenv.Need(t, err == nil, "no built kernel in "+dir+": run ./build.sh build")
	img, err := UnpackVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	k, err := boot.ParseVmlinux(img)
	if err != nil {
		t.Fatal(err)
	}
	if k.Entry() != 16<<20 {
		t.Errorf("entry 0x%X, want 16 MiB (phys_startup_64)", k.Entry())
	}
	bzk, err := boot.ParseBzImage(bz)
	if err != nil {
		t.Fatal(err)
	}
	// The decompressor unpacks into init_size bytes at its run address
	// (pref_address): the vmlinux must fit where it would have run.
	if k.End() > bzk.PrefAddress+uint64(bzk.InitSize) {
		t.Errorf("vmlinux ends at 0x%X, beyond the bzImage's init_size from 0x%X", k.End(), bzk.PrefAddress)
	}
	t.Logf("%d MB bzImage -> %d MB vmlinux, kernel memory [16 MiB, %d MiB)", len(bz)>>20, len(img)>>20, k.End()>>20)
}
