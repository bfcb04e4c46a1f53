package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/vmm/machine"
)

func TestParseDiskSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want diskSpec
		err  string
	}{
		{in: "fd=3", want: diskSpec{FD: 3}},
		{in: "path=/x.img,ro", want: diskSpec{FD: -1, Path: "/x.img", ReadOnly: true}},
		{in: "fd=7,ro,id=web-0,iops=2000,bps=50M", want: diskSpec{FD: 7, ReadOnly: true, ID: "web-0", IOPS: 2000, Bandwidth: 50 << 20}},
		{in: "fd=4,bps=52428800", want: diskSpec{FD: 4, Bandwidth: 52428800}},
		{in: "path=/x.img,direct,io=pool", want: diskSpec{FD: -1, Path: "/x.img", Direct: true, IO: machine.IOPool}},
		{in: "fd=3,io=uring", want: diskSpec{FD: 3, IO: machine.IOUring}},
		{in: "fd=3,io=io_uring", want: diskSpec{FD: 3, IO: machine.IOUring}},
		{in: "fd=3,io=auto", want: diskSpec{FD: 3}},
		{in: "fd=3,io=aio", err: `io "aio": want auto, uring or pool`},
		{in: "fd=3,direct=1", err: "direct takes no value"},
		{in: "", err: `"": want key=value`},
		{in: "ro", err: "want exactly one of fd=N and path=FILE"},
		{in: "fd=3,path=/x", err: "want exactly one of"},
		{in: "fd=2", err: `fd "2": want an inherited descriptor number, 3 or more`},
		{in: "fd=x", err: `fd "x"`},
		{in: "path=x.img", err: `path "x.img": want an absolute path`},
		{in: "fd=3,ro=1", err: "ro takes no value"},
		{in: "fd=3,ro,ro", err: "ro given twice"},
		{in: "fd=3,fd=4", err: "fd given twice"},
		{in: "fd=3,iops=0", err: `iops "0": want a positive number`},
		{in: "fd=3,iops=-5", err: `iops "-5"`},
		{in: "fd=3,bps=fast", err: `bps "fast"`},
		{in: "fd=3,id=abcdefghijklmnopqrstu", err: "longer than 20 bytes"},
		{in: "fd=3,cache=none", err: `unknown key "cache"`},
		{in: "fd=3,id=", err: `"id=": want key=value`},
	} {
		got, err := parseDiskSpec(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseDiskSpec(%q) error = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("parseDiskSpec(%q): %v", tc.in, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("parseDiskSpec(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestDiskArgRoundTrip: what the supervisor writes, the VMM reads back.
func TestDiskArgRoundTrip(t *testing.T) {
	for _, d := range []config.Disk{
		{Path: "/a.img"},
		{Path: "/a.img", ReadOnly: true, ID: "a-0", Limits: config.DiskLimits{IOPS: 5, Bandwidth: 4096}},
	} {
		arg := diskArg(5, d)
		got, err := parseDiskSpec(arg)
		if err != nil {
			t.Fatalf("%q: %v", arg, err)
		}
		want := diskSpec{FD: 5, ReadOnly: d.ReadOnly, ID: d.ID, IOPS: d.Limits.IOPS, Bandwidth: uint64(d.Limits.Bandwidth)}
		if got != want {
			t.Errorf("%q read back as %+v, want %+v", arg, got, want)
		}
	}
	args := strings.Join(vmArgs(config.VM{Name: "v", Kernel: "/k", CPUs: 1, Memory: 128 << 20,
		Disks: []config.Disk{{Path: "/a", ID: "v-0"}, {Path: "/b", ReadOnly: true, ID: "v-1"}}}), " ")
	if !strings.Contains(args, "--disk fd=3,id=v-0 --disk fd=4,ro,id=v-1") {
		t.Errorf("vmArgs = %s", args)
	}
}

func TestOpenDisk(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.img")
	data := []byte(strings.Repeat("user data ", 1000)) // 10000 bytes
	if err := os.WriteFile(existing, data, 0o600); err != nil {
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
		{"not a disk", config.Disk{Path: "/dev/null"}, "neither a regular file nor a block device", -1},
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
	_, err := openDisks(config.VM{Disks: []config.Disk{{Path: filepath.Join(dir, "ok.img"), Size: 4096}, {Path: dir + "/missing.img"}}})
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
