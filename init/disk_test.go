package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

func TestOpenDisk(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.img")
	data := []byte(strings.Repeat("user data ", 1000)) // 10000 bytes
	if err := os.WriteFile(existing, data, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(existing, link); err != nil {
		t.Fatal(err)
	}
	linkDir := filepath.Join(dir, "linkdir")
	if err := os.Symlink(dir, linkDir); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		disk config.Disk
		err  string
		size int64 // of the file afterwards
	}{
		{"missing without size", config.Disk{Path: filepath.Join(dir, "none.img")}, "does not exist, and no size is configured", -1},
		{"missing read-only", config.Disk{Path: filepath.Join(dir, "none.img"), Size: 1 << 20, ReadOnly: true}, "never created", -1},
		{"missing directory", config.Disk{Path: filepath.Join(dir, "no/such/dir.img"), Size: 1 << 20}, "create: no such file or directory", -1},
		{"created sparse", config.Disk{Path: filepath.Join(dir, "new.img"), Size: 1 << 30}, "", 1 << 30},
		{"directory", config.Disk{Path: dir}, "is a directory", -1},
		{"directory read-only", config.Disk{Path: dir, ReadOnly: true}, "is a directory", -1},
		{"not a disk", config.Disk{Path: "/dev/null"}, "is a character device (such as /dev/kvm), neither a regular file nor a block device", -1},
		{"symlink", config.Disk{Path: link}, "is a symbolic link, or a path through one", 10000},
		{"through a symlink", config.Disk{Path: filepath.Join(linkDir, "existing.img")}, "is a symbolic link, or a path through one", 10000},
		{"created through a symlink", config.Disk{Path: filepath.Join(linkDir, "new2.img"), Size: 1 << 20}, "is a symbolic link, or a path through one", -1},
		{"proc", config.Disk{Path: "/proc/self/environ", ReadOnly: true}, "is one of the appliance's own files (/proc)", -1},
		{"proc, not clean", config.Disk{Path: "/tmp/../proc/kcore", ReadOnly: true}, "is one of the appliance's own files (/proc)", -1},
		{"the configuration", config.Disk{Path: "/etc/hyperroot/config.yaml"}, "is one of the appliance's own files (/etc/hyperroot)", -1},
		{"a downloaded image", config.Disk{Path: "/var/lib/hyperroot/images/" + strings.Repeat("a", 64) + ".raw"}, "is one of the appliance's own files (/var/lib/hyperroot/images)", -1},
		{"the switch's leases", config.Disk{Path: "/run/hyperroot/switch/lan.leases"}, "is one of the appliance's own files (/run/hyperroot)", -1},
		{"sysfs", config.Disk{Path: "/sys/kernel/notes", ReadOnly: true}, "is one of the appliance's own files (/sys)", -1},
		{"never truncated", config.Disk{Path: existing, Size: 4096}, "size 4K is smaller than the existing file (10000 bytes): refusing to truncate it", 10000},
		{"existing as is", config.Disk{Path: existing}, "", 10000},
		{"existing read-only", config.Disk{Path: existing, ReadOnly: true}, "", 10000},
		{"read-only cannot grow", config.Disk{Path: existing, ReadOnly: true, Size: 1 << 20}, "cannot grow", 10000},
		{"grown", config.Disk{Path: existing, Size: 1 << 20}, "", 1 << 20},
		{"empty", config.Disk{Path: empty}, "is empty", 0},
	} {
		f, err := openDisk(tc.disk)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error = %v, want %q", tc.name, err, tc.err)
			}
			if f != nil {
				f.Close()
			}
		} else if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		} else {
			f.Close()
		}
		if tc.size >= 0 {
			fi, err := os.Stat(tc.disk.Path)
			if err != nil || fi.Size() != tc.size {
				t.Errorf("%s: file size afterwards %v, %v; want %d", tc.name, fi.Size(), err, tc.size)
			}
		}
	}
	// The user's bytes survive every attempt above.
	got, err := os.ReadFile(existing)
	if err != nil || string(got[:len(data)]) != string(data) {
		t.Errorf("existing image changed: %v", err)
	}
	// The new image is sparse: created with ftruncate, nothing written.
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "new.img"), &st); err != nil || st.Blocks > 8 {
		t.Errorf("new image uses %d blocks, want a sparse file (%v)", st.Blocks, err)
	}
}

func TestOpenDiskLocks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.img")
	rw := config.Disk{Path: p, Size: 1 << 20}
	ro := config.Disk{Path: p, ReadOnly: true}
	f, err := openDisk(rw)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []config.Disk{rw, ro} {
		if g, err := openDisk(d); err == nil || !strings.Contains(err.Error(), "in use by another VM") {
			t.Errorf("second open (ro=%v) of a disk in use: %v", d.ReadOnly, err)
			if g != nil {
				g.Close()
			}
		}
	}
	f.Close()
	r1, err := openDisk(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := openDisk(ro)
	if err != nil {
		t.Errorf("two read-only users: %v", err)
	} else {
		r2.Close()
	}
	if g, err := openDisk(rw); err == nil {
		g.Close()
		t.Error("writable open of a disk shared read-only succeeded")
	}
}

func TestOpenDisksNamesTheDisk(t *testing.T) {
	dir := t.TempDir()
	_, err := openDisks(config.VM{Disks: []config.Disk{{Path: filepath.Join(dir, "ok.img"), Size: 4096}, {Path: dir + "/missing.img"}}}, nil)
	if err == nil || err.Error() != "disk "+dir+"/missing.img: does not exist, and no size is configured to create it" {
		t.Errorf("err = %v", err)
	}
	// The first disk was opened (created) and closed again: no lock left.
	f, err := openDisk(config.Disk{Path: filepath.Join(dir, "ok.img")})
	if err != nil {
		t.Errorf("first disk still locked: %v", err)
	} else {
		f.Close()
	}
}

// TestDiskOwners: one file is one VM's disk, whatever path names it; only
// read-only disks are shared.
func TestDiskOwners(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	if err := os.WriteFile(a, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(a, b); err != nil { // a second name of the same file
		t.Fatal(err)
	}
	open := func(p string) []*os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return []*os.File{f}
	}
	var o diskOwners
	if err := o.claim("web", []config.Disk{{Path: a}}, open(a)); err != nil {
		t.Fatal(err)
	}
	if err := o.claim("web", []config.Disk{{Path: a}}, open(a)); err != nil {
		t.Errorf("the same VM again (a restart): %v", err)
	}
	err := o.claim("db", []config.Disk{{Path: b, ReadOnly: true}}, open(b))
	if want := "disk " + b + ": is vm web's disk " + a + " (the same file)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("another VM's writable disk through a hard link: %v, want %q", err, want)
	}
	var ro diskOwners
	for _, vm := range []string{"x", "y"} {
		if err := ro.claim(vm, []config.Disk{{Path: a, ReadOnly: true}}, open(a)); err != nil {
			t.Errorf("read-only by vm %s: %v", vm, err)
		}
	}
	if err := ro.claim("z", []config.Disk{{Path: b}}, open(b)); err == nil {
		t.Error("writable by a third VM while two read it: accepted")
	}
}
