package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

// TestMakeFromImages: a missing disk with an image is downloaded once and
// copied with its holes; a second disk from the same image reuses the
// download; an existing disk is never overwritten; a wrong digest makes
// no disk.
func TestMakeFromImages(t *testing.T) {
	old := imagesDir
	imagesDir = filepath.Join(t.TempDir(), "images")
	t.Cleanup(func() { imagesDir = old })
	img := make([]byte, 8<<20)
	copy(img, "boot sector")
	copy(img[6<<20:], "data at 6 MiB")
	sum := sha256.Sum256(img)
	digest := hex.EncodeToString(sum[:])
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(img))
	}))
	defer srv.Close()
	dir := t.TempDir()
	var out syncBuffer
	c := newConsole(&out)
	im := &config.Image{URL: srv.URL + "/img", SHA256: digest}
	vm := config.VM{Name: "web", Disks: []config.Disk{
		{Path: filepath.Join(dir, "vms/a.img"), Image: im},
		{Path: filepath.Join(dir, "b.img"), Image: im},
		{Path: filepath.Join(dir, "plain.img")},
	}}
	if err := os.WriteFile(filepath.Join(dir, "b.img"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := makeFromImages(c, vm, true, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(vm.Disks[0].Path); err != nil || !bytes.Equal(b, img) {
		t.Errorf("disk a: %d bytes (%v), want the image", len(b), err)
	}
	if b, _ := os.ReadFile(vm.Disks[1].Path); string(b) != "mine" {
		t.Errorf("an existing disk was overwritten: %q", b)
	}
	if _, err := os.Stat(vm.Disks[2].Path); err == nil {
		t.Error("a disk without an image was made")
	}
	// The copy keeps the image's holes: the file has far fewer blocks
	// than its size (the image has 2 small extents of data).
	var st unix.Stat_t
	if err := unix.Stat(vm.Disks[0].Path, &st); err != nil || st.Blocks*512 > 1<<20 {
		t.Errorf("the 8 MiB disk of two small extents uses %d bytes (%v): its holes were filled", st.Blocks*512, err)
	}
	vm2 := config.VM{Name: "db", Disks: []config.Disk{{Path: filepath.Join(dir, "c.img"), Image: im}}}
	if err := makeFromImages(c, vm2, true, nil); err != nil {
		t.Fatal(err)
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d downloads for two disks of one image, want 1", n)
	}
	bad := config.VM{Name: "bad", Disks: []config.Disk{{Path: filepath.Join(dir, "d.img"), Image: &config.Image{URL: srv.URL + "/img", SHA256: strings.Repeat("0", 64)}}}}
	if err := makeFromImages(c, bad, true, nil); err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("wrong digest: %v", err)
	}
	if _, err := os.Stat(bad.Disks[0].Path); err == nil {
		t.Error("a disk was made from an image with the wrong digest")
	}
	// Not fetched again at the VM's next start.
	before := gets.Load()
	if err := makeFromImages(c, bad, true, nil); err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("wrong digest, again: %v", err)
	}
	if gets.Load() != before {
		t.Error("an image whose digest did not match was fetched again")
	}
	// Without a data disk, no image is fetched into RAM.
	nodata := config.VM{Name: "ram", Disks: []config.Disk{{Path: filepath.Join(dir, "e.img"), Image: im}}}
	if err := makeFromImages(c, nodata, false, nil); err == nil || !strings.Contains(err.Error(), "needs a data disk") {
		t.Errorf("no data disk: %v", err)
	}
	c.Flush(5 * time.Second)
	for _, want := range []string{"vm web: image " + digest[:12] + ": downloading " + srv.URL, "sha256 verified", "vm web: disk " + vm.Disks[0].Path + " made from image " + digest[:12]} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCopyRange: a range copies whole between two files, across
// filesystems too (the kernel refuses copy_file_range between some; the
// copy then goes through memory).
func TestCopyRange(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	src, err := os.Create(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Write(data)
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		dst, err := os.CreateTemp(dir, "dst-*")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(dst.Name())
		defer dst.Close()
		if n, err := copyRange(dst, src, 4096, int64(len(data))-4096); err != nil || n != int64(len(data))-4096 {
			t.Fatalf("%s: copied %d, %v", dir, n, err)
		}
		got := make([]byte, len(data))
		dst.ReadAt(got, 0)
		if !bytes.Equal(got[4096:], data[4096:]) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
			t.Errorf("%s: the copy differs", dir)
		}
	}
}
