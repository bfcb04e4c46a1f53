package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
)

// makeQcow2 writes a 1 MiB qcow2 image at path naming backing (if any).
func makeQcow2(t *testing.T, path, backing, format string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := qcow2.Create(f, 1<<20, qcow2.CreateOptions{BackingFile: backing, BackingFormat: format}); err != nil {
		t.Fatal(err)
	}
}

// TestQcow2Clone: a missing clone is made from its base, named relative
// to it, and opened with the base as its one-link chain; opened again, it
// is the same image.
func TestQcow2Clone(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "bases"), 0o755)
	base := filepath.Join(dir, "bases", "base.qcow2")
	makeQcow2(t, base, "", "")
	// Outside the data directory, a disk's backing files lie beside it
	// or below.
	d := config.Disk{Path: filepath.Join(dir, "web.qcow2"), Base: base, Format: config.FormatQcow2}
	for range 2 {
		f, chain, err := openQcow2Disk(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		h, err := readHeader(f)
		if err != nil {
			t.Fatal(err)
		}
		if h.BackingFile != "bases/base.qcow2" || h.BackingFormat != "qcow2" || h.Size != 1<<20 {
			t.Errorf("clone header: backing %q (%q), size %d", h.BackingFile, h.BackingFormat, h.Size)
		}
		if len(chain) != 1 || chain[0].path != base || !chain[0].qcow2 {
			t.Errorf("chain = %+v, want the base", chain)
		}
		f.Close()
		closeChain(chain)
	}
}

// TestQcow2BadChains: backing chains the supervisor refuses, each with an
// error naming what is wrong, and no descriptor left open.
func TestQcow2BadChains(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	makeQcow2(t, p("loop-a.qcow2"), "loop-b.qcow2", "qcow2")
	makeQcow2(t, p("loop-b.qcow2"), "loop-a.qcow2", "qcow2")
	makeQcow2(t, p("escape.qcow2"), "../../etc/passwd", "raw")
	makeQcow2(t, p("proto.qcow2"), "nbd://10.0.0.1/x", "raw")
	makeQcow2(t, p("missing.qcow2"), "gone.raw", "raw")
	makeQcow2(t, p("vmdk.qcow2"), "x.vmdk", "vmdk")
	os.WriteFile(p("real.raw"), make([]byte, 4096), 0o600)
	os.Symlink(p("real.raw"), p("link.raw"))
	makeQcow2(t, p("symlink.qcow2"), "link.raw", "raw")
	prev := ""
	for i := range 10 {
		name := p("deep" + string(rune('0'+i)) + ".qcow2")
		makeQcow2(t, name, prev, "qcow2")
		prev = filepath.Base(name)
	}
	os.WriteFile(p("trunc.qcow2"), []byte("QFI\xfb\x00\x00\x00\x03"), 0o600)
	for _, tc := range []struct{ name, want string }{
		{"loop-a.qcow2", "backing chain loops: " + p("loop-a.qcow2") + " is " + p("loop-a.qcow2") + " again"},
		{"escape.qcow2", "is outside " + dir},
		{"proto.qcow2", `backing file "nbd://10.0.0.1/x" is a protocol, not a file`},
		{"missing.qcow2", "gone.raw: no such file or directory"},
		{"vmdk.qcow2", `has format "vmdk" (want raw or qcow2)`},
		{"symlink.qcow2", "is a symbolic link"},
		{"deep9.qcow2", "backing chain deeper than 8 images"},
		{"trunc.qcow2", "qcow2: header truncated"},
	} {
		d := config.Disk{Path: p(tc.name), Format: config.FormatQcow2}
		f, chain, err := openQcow2Disk(d, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
		if f != nil || chain != nil {
			t.Errorf("%s: files left open on error", tc.name)
		}
	}
	// A chain naming another VM's disk: refused, whatever the image says.
	os.WriteFile(p("other.img"), make([]byte, 4096), 0o600)
	makeQcow2(t, p("thief.qcow2"), "other.img", "raw")
	if _, _, err := openQcow2Disk(config.Disk{Path: p("thief.qcow2"), Format: config.FormatQcow2}, map[string]string{p("other.img"): "victim"}); err == nil ||
		!strings.Contains(err.Error(), "backing file "+p("other.img")+" is vm victim's disk") {
		t.Errorf("another VM's disk as backing file: %v", err)
	}
	// A base spelled with .. that leaves the directory: refused, and no
	// clone left behind.
	d0 := config.Disk{Path: p("sneaky.qcow2"), Base: dir + "/../../etc/hostname", Format: config.FormatQcow2}
	if _, _, err := openQcow2Disk(d0, nil); err == nil || !strings.Contains(err.Error(), "is outside") {
		t.Errorf("base with ..: %v", err)
	}
	if _, err := os.Stat(p("sneaky.qcow2")); err == nil {
		t.Error("a clone of a base outside was created")
	}
	// A clone made, then refused by its chain: removed again.
	os.Mkdir(p("inner"), 0o700)
	makeQcow2(t, p("inner/base.qcow2"), "../escape-target.raw", "raw")
	os.WriteFile(p("escape-target.raw"), make([]byte, 4096), 0o600)
	d1 := config.Disk{Path: p("inner/clone.qcow2"), Base: p("inner/base.qcow2"), Format: config.FormatQcow2}
	if _, _, err := openQcow2Disk(d1, nil); err == nil || !strings.Contains(err.Error(), "is outside "+p("inner")) {
		t.Errorf("clone whose chain escapes: %v", err)
	}
	if _, err := os.Stat(p("inner/clone.qcow2")); err == nil {
		t.Error("a clone whose chain was refused was left behind")
	}
	// A clone whose base lies outside: refused before anything is made.
	d := config.Disk{Path: p("clone.qcow2"), Base: "/etc/hostname", Format: config.FormatQcow2}
	if _, _, err := openQcow2Disk(d, nil); err == nil || !strings.Contains(err.Error(), "is outside") {
		t.Errorf("base outside: %v", err)
	}
	if _, err := os.Stat(p("clone.qcow2")); err == nil {
		t.Error("a clone of a refused base was created")
	}
	// A raw file configured as qcow2 is refused, and left as it was.
	d = config.Disk{Path: p("real.raw"), Format: config.FormatQcow2}
	if _, _, err := openQcow2Disk(d, nil); err == nil || !strings.Contains(err.Error(), "not a qcow2 image") {
		t.Errorf("raw as qcow2: %v", err)
	}
}
