package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestClocksource: a clock read in the vDSO is named alone; another is
// flagged, since each time read then costs a system call; none readable
// is "unknown".
func TestClocksource(t *testing.T) {
	dir := t.TempDir()
	for cs, want := range map[string]string{
		"tsc\n":       "tsc",
		"kvm-clock\n": "kvm-clock",
		"hpet\n":      "hpet (not in the vDSO: each time read is a system call)",
	} {
		p := filepath.Join(dir, "current_clocksource")
		if err := os.WriteFile(p, []byte(cs), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := clocksource(p); got != want {
			t.Errorf("%q: %q, want %q", cs, got, want)
		}
	}
	if got := clocksource(filepath.Join(dir, "none")); got != "unknown" {
		t.Errorf("no file: %q", got)
	}
}
