package main

import (
	"debug/elf"
	"os"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// TestQEMUFiles checks that what the bench image gets for QEMU is
// complete: the binary, its dynamic loader at the path the binary names,
// every library it needs by soname, and the firmware, each from a host
// file that exists.
func TestQEMUFiles(t *testing.T) {
	testenv.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	files, err := qemuFiles()
	if err != nil {
		t.Fatal(err)
	}
	dst := map[string]bool{}
	for _, p := range files {
		src, d, ok := strings.Cut(p, ":")
		if !ok || strings.HasPrefix(d, "/") || d == "" {
			t.Fatalf("pair %q: want host:relative-image-path", p)
		}
		if _, err := os.Lstat(src); err != nil {
			t.Errorf("pair %q: %v", p, err)
		}
		dst["/"+d] = true
	}
	bin, err := elf.Open(qemuBinary)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	var interp string
	for _, prog := range bin.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			prog.ReadAt(b, 0)
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	sonames, err := bin.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{qemuBinary, interp}, qemuFirmware...)
	for _, w := range want {
		if !dst[w] {
			t.Errorf("%s missing from the image", w)
		}
	}
	for _, so := range sonames {
		found := false
		for d := range dst {
			found = found || strings.HasSuffix(d, "/"+so)
		}
		if !found {
			t.Errorf("library %s (needed by %s) missing from the image", so, qemuBinary)
		}
	}
	if len(sonames) == 0 || interp == "" {
		t.Fatalf("%s: no interpreter or libraries found; is it dynamically linked?", qemuBinary)
	}
}
