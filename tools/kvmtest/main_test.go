package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRun: the driver runs each manifest entry in its own directory with
// its environment and arguments, reports each, and fails if any failed.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	script := func(pkg, body string) {
		p := filepath.Join(dir, pkg)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "pkg.test"), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script("a", `[ "$(basename "$PWD")" = a ] && [ "$WHO" = tester ] && [ "$1" = -test.v ] && echo a-ran`)
	script("b/c", `echo b-ran; exit 3`)
	manifest := filepath.Join(dir, "manifest")
	if err := os.WriteFile(manifest, []byte("a WHO=tester -test.v\n# comment\n\nb/c -x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := capture(t, func() {
		if code := run(manifest); code != 1 {
			t.Errorf("run = %d, want 1 (b/c failed)", code)
		}
	})
	for _, want := range []string{"kvmtest: start a\na-ran\nkvmtest: end a ok code=0", "kvmtest: start b/c\nb-ran\nkvmtest: end b/c FAIL code=3", "kvmtest: done packages=2 failed=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if err := os.WriteFile(manifest, []byte("a WHO=tester -test.v\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	capture(t, func() {
		if code := run(manifest); code != 0 {
			t.Errorf("run = %d, want 0", code)
		}
	})
}

// capture returns what f printed on stdout (where the driver's children
// print too).
func capture(t *testing.T, f func()) string {
	t.Helper()
	tmp, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = tmp
	defer func() { os.Stdout = old }()
	f()
	b, err := os.ReadFile(tmp.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
