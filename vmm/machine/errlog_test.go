package machine

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestErrorLogBounded: a guest repeating a faulty access prints a burst of
// lines, then one per interval saying how many it suppressed.
func TestErrorLogBounded(t *testing.T) {
	var now time.Duration
	var out bytes.Buffer
	l := newErrorLog(&out, func() time.Duration { return now })
	for _, tc := range []struct {
		name     string
		errors   int
		advance  time.Duration // before the errors
		lines    int           // printed by this step
		lastLine string        // suffix of the last line, when printed
	}{
		{"a burst", 1000, 0, errorBurst, "FEATURES_OK refused"},
		{"one interval later", 1000, errorInterval, 1, "(990 similar errors suppressed)"},
		{"long after", 3, time.Hour, 3, "FEATURES_OK refused"},
	} {
		out.Reset()
		now += tc.advance
		for range tc.errors {
			l.report(errors.New("virtio-pci: FEATURES_OK refused"))
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if out.Len() == 0 {
			lines = nil
		}
		if len(lines) != tc.lines {
			t.Fatalf("%s: %d lines, want %d:\n%s", tc.name, len(lines), tc.lines, out.String())
		}
		if !strings.HasSuffix(lines[len(lines)-1], tc.lastLine) {
			t.Errorf("%s: last line %q, want it to end %q", tc.name, lines[len(lines)-1], tc.lastLine)
		}
	}
}
