package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// record is one packet as read back from a capture.
type record struct {
	ts   time.Time
	orig int
	data []byte
}

// frame returns a deterministic frame of n bytes tagged with writer g and
// sequence i in its first 8 bytes (when it has room).
func frame(g, i, n int) []byte {
	f := make([]byte, n)
	for j := range f {
		f[j] = byte(j*7 + g*13 + i)
	}
	if n >= 8 {
		binary.BigEndian.PutUint32(f[0:], uint32(g))
		binary.BigEndian.PutUint32(f[4:], uint32(i))
	}
	return f
}

func TestWriteAndReadBack(t *testing.T) {
	base := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	tests := []struct {
		name    string
		snaplen int
		sizes   []int
	}{
		{"small frames", 1514, []int{60, 64, 1, 0, 1514}},
		{"truncated to snaplen", 128, []int{60, 128, 129, 1514, 9000}},
		{"default snaplen keeps super-frames", 0, []int{65535 + 26, 1514}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out testenv.Buffer
			w, err := New(&out, tc.snaplen)
			if err != nil {
				t.Fatal(err)
			}
			var frames [][]byte
			var times []time.Time
			for i, n := range tc.sizes {
				f := frame(0, i, n)
				ts := base.Add(time.Duration(i) * 1001 * time.Nanosecond)
				if err := w.WriteFrame(f, ts); err != nil {
					t.Fatal(err)
				}
				frames, times = append(frames, f), append(times, ts)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.WriteFrame(frames[0], base); !errors.Is(err, ErrClosed) {
				t.Errorf("WriteFrame after Close = %v", err)
			}
			snap, recs := readCapture(t, out.Bytes())
			wantSnap := tc.snaplen
			if wantSnap == 0 {
				wantSnap = DefaultSnaplen
			}
			if snap != wantSnap {
				t.Errorf("snaplen %d, want %d", snap, wantSnap)
			}
			if len(recs) != len(frames) {
				t.Fatalf("read %d records, wrote %d", len(recs), len(frames))
			}
			for i, r := range recs {
				want := frames[i][:min(len(frames[i]), wantSnap)]
				if !bytes.Equal(r.data, want) || r.orig != len(frames[i]) {
					t.Errorf("record %d: %d bytes (orig %d), want %d (orig %d)", i, len(r.data), r.orig, len(want), len(frames[i]))
				}
				if !r.ts.Equal(times[i]) {
					t.Errorf("record %d: time %v, want %v", i, r.ts, times[i])
				}
			}
		})
	}
}

func TestConcurrentWriters(t *testing.T) {
	const writers, perWriter = 8, 400
	base := time.Unix(1_900_000_000, 0)
	var out testenv.Buffer
	w, err := New(&out, 2048)
	if err != nil {
		t.Fatal(err)
	}
	stamp := func(g, i int) time.Time { return base.Add(time.Duration(g*perWriter+i) * time.Microsecond) }
	size := func(g, i int) int { return 8 + (g*31+i*17)%3000 }
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if err := w.WriteFrame(frame(g, i, size(g, i)), stamp(g, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, recs := readCapture(t, out.Bytes())
	if got, want := uint64(len(recs))+w.Dropped(), uint64(writers*perWriter); got != want {
		t.Fatalf("%d records + %d dropped != %d written", len(recs), w.Dropped(), want)
	}
	last := make([]int, writers)
	for g := range last {
		last[g] = -1
	}
	for k, r := range recs {
		g, i := int(binary.BigEndian.Uint32(r.data[0:])), int(binary.BigEndian.Uint32(r.data[4:]))
		if g >= writers || i >= perWriter {
			t.Fatalf("record %d: bad tag %d/%d", k, g, i)
		}
		n := size(g, i)
		if want := frame(g, i, n)[:min(n, 2048)]; !bytes.Equal(r.data, want) || r.orig != n {
			t.Fatalf("record %d (writer %d seq %d): content differs", k, g, i)
		}
		if !r.ts.Equal(stamp(g, i)) {
			t.Fatalf("record %d: time %v, want %v", k, r.ts, stamp(g, i))
		}
		if i <= last[g] {
			t.Fatalf("writer %d: seq %d after %d", g, i, last[g])
		}
		last[g] = i
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	testenv.Buffer
	header bool
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	if b.header { // let the file header through so New returns
		<-b.release
	}
	b.header = true
	return b.Buffer.Write(p)
}

func TestSlowOutputDropsInsteadOfBlocking(t *testing.T) {
	bw := &blockingWriter{release: make(chan struct{})}
	w, err := New(bw, 1514)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000 // 5000 x 1530 bytes is far more than the ring
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			if err := w.WriteFrame(frame(0, i, 1514), time.Unix(int64(i), 0)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WriteFrame blocked on a stuck output")
	}
	dropped := w.Dropped()
	if dropped == 0 {
		t.Fatal("nothing dropped although the output never drained")
	}
	close(bw.release)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, recs := readCapture(t, bw.Bytes())
	if uint64(len(recs))+dropped != n {
		t.Fatalf("%d records + %d dropped != %d", len(recs), dropped, n)
	}
	for k, r := range recs { // the ones kept are the first ones, intact
		if !bytes.Equal(r.data, frame(0, k, 1514)) || !r.ts.Equal(time.Unix(int64(k), 0)) {
			t.Fatalf("record %d differs", k)
		}
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, io.ErrShortWrite
	}
	f.n--
	return len(p), nil
}

func TestOutputErrorIsReported(t *testing.T) {
	if _, err := New(&failWriter{}, 100); err == nil {
		t.Fatal("New ignored a failing file header write")
	}
	if _, err := New(io.Discard, MaxSnaplen+1); err == nil {
		t.Fatal("New accepted an oversized snaplen")
	}
	w, err := New(&failWriter{n: 1}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(make([]byte, 60), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("Flush = %v, want the output error", err)
	}
	if err := w.WriteFrame(make([]byte, 60), time.Now()); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("WriteFrame after an output error = %v", err)
	}
	if err := w.Close(); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("Close = %v", err)
	}
}

func TestWriteFrameDoesNotAllocate(t *testing.T) {
	w, err := New(io.Discard, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f := make([]byte, 1514)
	now := time.Now()
	if a := testing.AllocsPerRun(1000, func() { w.WriteFrame(f, now) }); a != 0 {
		t.Errorf("WriteFrame allocates %v times", a)
	}
}

// BenchmarkWriteFrame measures a 1514-byte frame into io.Discard.
// "drained" flushes every 256 frames so none is dropped: the cost of a
// captured frame, ring copy and output included. "overload" never waits
// for the output, as a switch port does: beyond what the flusher keeps up
// with, frames take the cheaper drop path.
func BenchmarkWriteFrame(b *testing.B) {
	for _, bc := range []struct {
		name  string
		flush bool
	}{{"drained", true}, {"overload", false}} {
		b.Run(bc.name, func(b *testing.B) {
			w, err := New(io.Discard, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			f := make([]byte, 1514)
			now := time.Now()
			b.ReportAllocs()
			b.SetBytes(int64(len(f)))
			n := 0
			for b.Loop() {
				w.WriteFrame(f, now)
				if n++; bc.flush && n%256 == 0 {
					w.Flush()
				}
			}
			b.ReportMetric(float64(w.Dropped())/float64(n), "dropped/op")
		})
	}
}
