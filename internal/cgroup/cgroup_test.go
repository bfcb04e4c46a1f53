package cgroup

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStalled reads a pressure file as the kernel writes it; a file
// without a "some" total is an error, not zero.
func TestStalled(t *testing.T) {
	g := &Group{Path: t.TempDir()}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(g.Path, "memory.pressure"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("some avg10=1.50 avg60=0.30 avg300=0.06 total=2345678\nfull avg10=1.20 avg60=0.25 avg300=0.05 total=2000000\n")
	d, err := g.Stalled("memory")
	if err != nil || d != 2345678*time.Microsecond {
		t.Errorf("Stalled = %v, %v; want 2.345678s", d, err)
	}
	for _, bad := range []string{"", "full avg10=0.00 total=5\n", "some avg10=0.00 total=x\n"} {
		write(bad)
		if d, err := g.Stalled("memory"); err == nil {
			t.Errorf("Stalled of %q = %v, want an error", bad, d)
		}
	}
	if _, err := g.Stalled("io"); err == nil {
		t.Error("Stalled of a missing file: no error")
	}
}
