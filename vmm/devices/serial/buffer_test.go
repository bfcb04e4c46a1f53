package serial

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingWriter counts Write calls (each one a write(2) on a real
// console) and keeps what it was given.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
	block  chan struct{} // when non-nil, each Write waits for a receive
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.block != nil {
		<-c.block
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.buf.Write(p)
}

func (c *countingWriter) stats() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.buf.String()
}

// TestConsoleWritesPerLine: a guest printing lines through the UART costs
// one write per line with a Buffer, not one per byte.
func TestConsoleWritesPerLine(t *testing.T) {
	const line = "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)\n"
	const lines = 100
	for _, tc := range []struct {
		name     string
		buffered bool
		maxPer   float64 // writes per line
	}{
		{"unbuffered", false, float64(len(line))},
		{"buffered", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cw := &countingWriter{}
			var out io.Writer = cw
			var b *Buffer
			if tc.buffered {
				b = NewBuffer(cw, BufferOptions{})
				out = b
			}
			d := New(Options{Out: out})
			for range lines {
				for i := range len(line) {
					d.Write(regData, []byte{line[i]})
				}
				if b != nil {
					// Let the writer take the line, as a guest's
					// console is rarely faster than the pipe.
					waitFor(t, func() bool { n, _ := cw.stats(); return n > 0 && b.idleNow() })
				}
			}
			if b != nil {
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
			}
			n, got := cw.stats()
			if got != strings.Repeat(line, lines) {
				t.Fatalf("output differs: %d bytes, want %d", len(got), lines*len(line))
			}
			per := float64(n) / lines
			t.Logf("%s: %.2f writes per %d-byte line", tc.name, per, len(line))
			if per > tc.maxPer {
				t.Errorf("%.2f writes per line, want at most %.0f", per, tc.maxPer)
			}
		})
	}
}

// idleNow reports whether nothing is held or being written.
func (b *Buffer) idleNow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.writing && len(b.buf) == 0
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met after 5s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// TestBufferPartialLine: a line without its newline (a prompt, the last
// words of a crashing guest) is written after Idle, and by Flush or Close
// at once.
func TestBufferPartialLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*Buffer) error
	}{
		{"idle", func(*Buffer) error { return nil }},
		{"flush", (*Buffer).Flush},
		{"close", (*Buffer).Close},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cw := &countingWriter{}
			b := NewBuffer(cw, BufferOptions{Idle: 50 * time.Millisecond})
			defer b.Close()
			b.Write([]byte("Kernel panic - not syncing"))
			if err := tc.end(b); err != nil {
				t.Fatal(err)
			}
			if tc.name != "idle" {
				if _, got := cw.stats(); got != "Kernel panic - not syncing" {
					t.Fatalf("after %s: %q", tc.name, got)
				}
				return
			}
			if _, got := cw.stats(); got != "" {
				t.Fatalf("written before Idle: %q", got)
			}
			waitFor(t, func() bool { _, got := cw.stats(); return got == "Kernel panic - not syncing" })
		})
	}
}

// TestBufferSlowReader: a reader that never reads blocks a Write for at
// most MaxBlock once, then bytes are dropped and counted without waiting;
// once the reader catches up, output resumes in order.
func TestBufferSlowReader(t *testing.T) {
	cw := &countingWriter{block: make(chan struct{})}
	b := NewBuffer(cw, BufferOptions{Size: 64, FlushSize: 16, MaxBlock: 20 * time.Millisecond})
	start := time.Now()
	for i := range 1000 {
		b.Write([]byte{byte('a' + i%26)})
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("1000 writes to a stuck reader took %v", el)
	}
	// The writer holds one buffer (blocked in Write), the other is full.
	if got := b.Dropped(); got < 1000-128 || got > 1000-64 {
		t.Errorf("dropped %d", got)
	}
	close(cw.block) // the reader wakes up
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	_, got := cw.stats()
	if uint64(len(got))+b.Dropped() != 1000 {
		t.Errorf("%d written + %d dropped, want 1000", len(got), b.Dropped())
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 && !(got[i-1] == 'z' && got[i] == 'a') && b.Dropped() == 0 {
			t.Fatalf("out of order at %d", i)
		}
	}
}

// TestBufferConcurrent: writers, the idle timer and Flush interleave
// without losing or reordering bytes of one writer (meaningful under
// -race).
func TestBufferConcurrent(t *testing.T) {
	cw := &countingWriter{}
	b := NewBuffer(cw, BufferOptions{Size: 256, FlushSize: 32, Idle: time.Millisecond, MaxBlock: time.Second})
	var want bytes.Buffer
	for i := range 20000 {
		c := byte('0' + i%10)
		if i%97 == 0 {
			c = '\n'
		}
		want.WriteByte(c)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, c := range want.Bytes() {
			b.Write([]byte{c})
		}
	})
	wg.Go(func() {
		for range 50 {
			b.Flush()
			time.Sleep(100 * time.Microsecond)
		}
	})
	wg.Wait()
	b.Close()
	if _, got := cw.stats(); got != want.String() {
		t.Fatalf("output differs (%d bytes, want %d); dropped %d", len(got), want.Len(), b.Dropped())
	}
}

func BenchmarkBufferWrite(b *testing.B) {
	buf := NewBuffer(io.Discard, BufferOptions{})
	defer buf.Close()
	data := []byte{'x'}
	nl := []byte{'\n'}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i++; i%80 == 0 {
			buf.Write(nl)
		} else {
			buf.Write(data)
		}
	}
}

// TestBetweenLines: the reader gets whole lines (the start of the next one
// waits for its end, or for Idle); a note waits for the guest to end a
// line whose first part Idle wrote, and gives up after its wait for a
// line that never ends.
func TestBetweenLines(t *testing.T) {
	var out countingWriter
	b := NewBuffer(&out, BufferOptions{Idle: 30 * time.Millisecond})
	defer b.Close()
	b.Write([]byte("one\ntw"))
	time.Sleep(5 * time.Millisecond)
	if _, got := out.stats(); got != "one\n" {
		t.Errorf("after a line and the start of the next: %q written, want the whole line only", got)
	}
	b.Write([]byte("o\nguest: a long li"))
	for _, got := out.stats(); !strings.HasSuffix(got, "li"); _, got = out.stats() { // Idle wrote it
		time.Sleep(time.Millisecond)
	}
	noted := make(chan struct{})
	go b.BetweenLines(5*time.Second, func() { out.Write([]byte("NOTE\n")); close(noted) })
	time.Sleep(20 * time.Millisecond)
	select {
	case <-noted:
		t.Fatal("the note went into the middle of a line")
	default:
	}
	b.Write([]byte("ne\n"))
	<-noted
	b.Write([]byte("next"))
	b.Flush()
	if _, got := out.stats(); got != "one\ntwo\nguest: a long line\nNOTE\nnext" {
		t.Errorf("output %q", got)
	}
	start := time.Now()
	b.BetweenLines(30*time.Millisecond, func() { out.Write([]byte("LATE\n")) })
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("a note after a line that never ends waited %s, want its wait", d)
	}
	if _, got := out.stats(); !strings.HasSuffix(got, "\nnext\nLATE\n") {
		t.Errorf("a note after a line that never ended: %q, want the line ended first", got)
	}
}

// TestEndLine: at the machine's end, a partial last line is written and
// ended, so the VMM's report of the exit starts a line; a whole last
// line gets nothing more.
func TestEndLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"one\n[", "one\n[\n"},
		{"one\n", "one\n"},
		{"", ""},
	} {
		var out countingWriter
		b := NewBuffer(&out, BufferOptions{Idle: time.Hour})
		b.Write([]byte(tc.in))
		if err := b.EndLine(); err != nil {
			t.Fatal(err)
		}
		b.Close()
		if _, got := out.stats(); got != tc.want {
			t.Errorf("%q then EndLine: %q written, want %q", tc.in, got, tc.want)
		}
	}
}
