package child

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzRelay: a child's output is what a guest controls (a VMM relays its
// serial console), so any bytes must come through the relay as lines
// without their line ends, no piece longer than MaxLine, nothing lost,
// duplicated or reordered, and the tail bounded, whatever the line lengths
// and carriage returns.
func FuzzRelay(f *testing.F) {
	// The output is a pattern repeated: the fuzzer is slow with inputs
	// of 64 KiB, and lines that long are what the pieces are about.
	f.Add([]byte("hello\nworld\n"), uint16(0), 4)
	f.Add([]byte("no newline at the end"), uint16(0), 1)
	f.Add([]byte("crlf\r\n\r\r\n\n\nlast\r"), uint16(3), 2)
	f.Add([]byte("0123456789abcdef0123456789abcdef0123456789"), uint16(2000), 3)
	f.Add([]byte("0123456789abcdef0123456789abcdef0123456\r\n"), uint16(4000), 5)
	f.Fuzz(func(t *testing.T, pattern []byte, reps uint16, keep int) {
		out := bytes.Repeat(pattern, 1+int(reps))
		if len(out) > 4*MaxLine {
			out = out[:4*MaxLine]
		}
		keep = keep & 7
		p := &Process{keep: keep}
		var pieces []string
		relayed := make(chan struct{})
		p.relay(bytes.NewReader(out), func(s string) { pieces = append(pieces, s) }, relayed)
		<-relayed
		for _, s := range pieces {
			if len(s) > MaxLine || strings.Contains(s, "\n") {
				t.Fatalf("piece of %d bytes (newline: %v)", len(s), strings.Contains(s, "\n"))
			}
		}
		// Line ends and trailing carriage returns go; everything else
		// arrives, in order.
		strip := func(s string) string { return strings.NewReplacer("\r", "", "\n", "").Replace(s) }
		if got, want := strip(strings.Join(pieces, "")), strip(string(out)); got != want {
			t.Fatalf("relayed %q, want %q", got, want)
		}
		if len(p.tail) > keep || (len(pieces) >= keep && len(p.tail) != keep) {
			t.Fatalf("tail of %d lines, keep %d, %d pieces", len(p.tail), keep, len(pieces))
		}
		if keep > 0 && len(pieces) > 0 && p.tail[len(p.tail)-1] != pieces[len(pieces)-1] {
			t.Fatalf("tail ends with %q, last piece %q", p.tail[len(p.tail)-1], pieces[len(pieces)-1])
		}
	})
}
