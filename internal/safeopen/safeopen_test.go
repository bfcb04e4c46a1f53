package safeopen

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A link as the last component, and one on the way.
	if err := os.Symlink(file, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(dir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"link", "dirlink/file"} {
		if f, err := Open(filepath.Join(dir, p), os.O_RDONLY); !errors.Is(err, unix.ELOOP) {
			if f != nil {
				f.Close()
			}
			t.Errorf("open %s: %v, want ELOOP", p, err)
		}
	}

	// A FIFO with no writer: the open returns (a blocking open would
	// hang the test), and the file is in blocking mode afterwards.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(fifo, os.O_RDONLY)
	if err != nil {
		t.Fatalf("open fifo: %v", err)
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	f.Close()
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("fifo flags %#x (%v): O_NONBLOCK left set", fl, err)
	}

	// A file it creates is the owner's alone.
	made := filepath.Join(dir, "made")
	f, err = Open(made, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	f.Close()
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("created with mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if _, err := Open(made, os.O_RDWR|os.O_CREATE|os.O_EXCL); !errors.Is(err, os.ErrExist) {
		t.Errorf("O_EXCL on an existing file: %v", err)
	}
}
