package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSched is debugfs's sched directory as Linux 6.1 has it, with the
// kernel's defaults for two CPUs.
func fakeSched(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{"min_granularity_ns": "1500000\n", "latency_ns": "12000000\n", "wakeup_granularity_ns": "2000000\n"} {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSetSchedSlice(t *testing.T) {
	dir := fakeSched(t)
	got, old, err := setSchedSlice(dir, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 10*time.Millisecond || got[1] != 40*time.Millisecond || old[0] != 1500*time.Microsecond || old[1] != 12*time.Millisecond {
		t.Errorf("set %v, was %v", got, old)
	}
	for k, want := range map[string]string{"min_granularity_ns": "10000000", "latency_ns": "40000000", "wakeup_granularity_ns": "2000000\n"} {
		if b, _ := os.ReadFile(filepath.Join(dir, k)); string(b) != want {
			t.Errorf("%s holds %q, want %q", k, b, want)
		}
	}
}

// TestSetSchedSliceRefused: a kernel without the knobs (EEVDF, or no
// CONFIG_SCHED_DEBUG), a knob holding something else and one that cannot
// be read are each said, not taken for done.
func TestSetSchedSliceRefused(t *testing.T) {
	if _, _, err := setSchedSlice(t.TempDir(), 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no min_granularity_ns in this kernel") {
		t.Errorf("no knobs: %v", err)
	}
	dir := fakeSched(t)
	os.WriteFile(filepath.Join(dir, "latency_ns"), []byte("soon\n"), 0o644)
	if _, _, err := setSchedSlice(dir, 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "not a count of nanoseconds") {
		t.Errorf("garbage: %v", err)
	}
	dir = fakeSched(t)
	knob := filepath.Join(dir, "min_granularity_ns")
	os.Remove(knob)
	os.Mkdir(knob, 0o755)
	if _, _, err := setSchedSlice(dir, 10*time.Millisecond); err == nil {
		t.Error("an unreadable knob was taken for set")
	}
}

func TestParseSchedSlice(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", defaultSchedSlice, true},
		{"kernel", 0, true},
		{"20ms", 20 * time.Millisecond, true},
		{"1ms", time.Millisecond, true},
		{"500us", defaultSchedSlice, false},
		{"2s", defaultSchedSlice, false},
		{"ten", defaultSchedSlice, false},
	} {
		got, err := parseSchedSlice(tc.in)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("parseSchedSlice(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
