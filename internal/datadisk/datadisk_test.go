package datadisk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// newDisk is an empty (sparse) disk image of size bytes.
func newDisk(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFormat: an empty disk gets a GPT with one partition named
// hyperroot-data and an ext4 filesystem labelled so, which e2fsprogs finds
// clean; a disk with anything at either end is refused untouched. The
// smallest disk formats too (one block group), and disks whose last block
// group is short.
func TestFormat(t *testing.T) {
	// 386 MiB: a short last block group (the fourth) holding a backup.
	for _, size := range []int64{256 << 20, MinSize, 386 << 20} {
		t.Run(fmt.Sprintf("%dM", size>>20), func(t *testing.T) { testFormat(t, size) })
	}
}

func testFormat(t *testing.T, size int64) {
	f := newDisk(t, size)
	if err := format(f, size, Label); err != nil {
		t.Fatal(err)
	}
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, 2048*512+superblockOffset); err != nil {
		t.Fatal(err)
	}
	if l, ok := ext4Label(sb); !ok || l != Label {
		t.Fatalf("partition 1's superblock: label %q (ext4: %v), want %q", l, ok, Label)
	}
	// The partition table: a protective MBR and a GPT whose entry names
	// the partition (UTF-16LE) from 1 MiB on.
	hdr := make([]byte, 1024)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if hdr[450] != 0xee || !bytes.Equal(hdr[512:520], []byte("EFI PART")) {
		t.Errorf("no protective MBR and GPT header: % x / %q", hdr[450], hdr[512:520])
	}
	entry := make([]byte, 128)
	if _, err := f.ReadAt(entry, 1024); err != nil {
		t.Fatal(err)
	}
	if first := binary.LittleEndian.Uint64(entry[32:]); first != 2048 {
		t.Errorf("partition 1 starts at sector %d, want 2048", first)
	}
	e2fsck := testenv.NeedTool(t, "e2fsck", "e2fsprogs")
	part := filepath.Join(t.TempDir(), "part.img")
	// The partition exactly: a copy cut short makes e2fsck -n complain
	// and still exit 0.
	sectors := int64(size / 512)
	out, err := exec.Command("dd", "if="+f.Name(), "of="+part, "bs=512", "skip=2048", fmt.Sprintf("count=%d", sectors-34-2048+1), "conv=sparse", "status=none").CombinedOutput()
	if err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	if out, err := exec.Command(e2fsck, "-fn", part).CombinedOutput(); err != nil || bytes.Contains(out, []byte("Abort")) || bytes.Contains(out, []byte("physical size")) {
		t.Errorf("e2fsck -fn of the new filesystem: %v\n%s", err, out)
	}

	// Formatting again: the disk holds something now.
	if err := format(f, size, Label); !errors.Is(err, ErrNotEmpty) {
		t.Errorf("second format: %v, want ErrNotEmpty", err)
	}
	for _, off := range []int64{0, size/2 - 1, size - 1} {
		g := newDisk(t, size)
		if _, err := g.WriteAt([]byte{1}, off); err != nil {
			t.Fatal(err)
		}
		err := format(g, size, Label)
		middle := off == size/2-1 // not looked at: see the package comment
		if middle != (err == nil) {
			t.Errorf("a byte at %d: format says %v", off, err)
		}
		if !middle {
			b := make([]byte, 1)
			g.ReadAt(b, off)
			if st, _ := g.Stat(); b[0] != 1 || st.Size() != size {
				t.Errorf("a refused disk changed")
			}
		}
	}
	if err := format(newDisk(t, MinSize-512), MinSize-512, Label); err == nil || !strings.Contains(err.Error(), "want at least") {
		t.Errorf("a disk under %d MiB: %v", MinSize>>20, err)
	}
}

// TestFind: the device with the label is found among others, none is "",
// two are an error naming both.
func TestFind(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	write := func(name string, sb []byte) {
		if err := os.Mkdir(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		img := make([]byte, superblockOffset+superblockSize)
		copy(img[superblockOffset:], sb)
		if err := os.WriteFile(filepath.Join(dev, name), img, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vda", nil)
	write("vdb", superblock("other"))
	write("vdb1", superblock(Label+"\x00junk"))
	write("loop0", superblock(Label))
	if got, err := Find(sys, dev); err != nil || got != filepath.Join(dev, "vdb1") {
		t.Errorf("Find: %q, %v; want vdb1", got, err)
	}
	if got := Labelled(filepath.Join(dev, "vdb")); got != filepath.Join(dev, "vdb1") {
		t.Errorf("Labelled(vdb): %q, want its partition vdb1", got)
	}
	if got := Labelled(filepath.Join(dev, "vda")); got != "" {
		t.Errorf("Labelled(vda): %q, want none", got)
	}
	write("vdc", superblock(Label))
	if _, err := Find(sys, dev); err == nil || !strings.Contains(err.Error(), "vdb1") || !strings.Contains(err.Error(), "vdc") {
		t.Errorf("two data disks: %v", err)
	}
	if got, err := Find(t.TempDir(), dev); got != "" || err != nil {
		t.Errorf("no devices: %q, %v", got, err)
	}
}

func TestPartitionPath(t *testing.T) {
	for dev, want := range map[string]string{"/dev/vda": "/dev/vda1", "/dev/nvme0n1": "/dev/nvme0n1p1", "/dev/mmcblk0": "/dev/mmcblk0p1", "": ""} {
		if got := partitionPath(dev, 1); got != want {
			t.Errorf("%q: %q, want %q", dev, got, want)
		}
	}
}

// superblock is an ext4 superblock's first bytes with label.
func superblock(label string) []byte {
	sb := make([]byte, superblockSize)
	binary.LittleEndian.PutUint16(sb[magicOffset:], ext4Magic)
	copy(sb[labelOffset:labelOffset+labelSize], label)
	return sb
}

// FuzzExt4Label: any bytes a disk holds are read without a panic, and a
// label comes only from a superblock with the magic number.
func FuzzExt4Label(f *testing.F) {
	f.Add(superblock(Label))
	f.Add(superblock("0123456789abcdefXYZ"))
	f.Add([]byte{})
	f.Add(make([]byte, labelOffset+labelSize-1))
	f.Fuzz(func(t *testing.T, sb []byte) {
		l, ok := ext4Label(sb)
		if ok && (len(sb) < labelOffset+labelSize || binary.LittleEndian.Uint16(sb[magicOffset:]) != ext4Magic) {
			t.Fatalf("label %q from no superblock", l)
		}
		if len(l) > labelSize || strings.Contains(l, "\x00") {
			t.Fatalf("label %q", l)
		}
	})
}
