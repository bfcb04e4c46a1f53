package qcow2

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/block"
)

// chanCompleter collects completions on a channel.
type chanCompleter chan block.Completion

func (c chanCompleter) Complete(x block.Completion) { c <- x }

// newTestBackend creates an image of size bytes (an overlay of base when
// base is not nil) and serves it.
func newTestBackend(t testing.TB, size int64, bits uint32, base Backing, o block.Options) (*Backend, *Image, *os.File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	co := CreateOptions{ClusterBits: bits}
	if base != nil {
		co.BackingFile, co.BackingFormat = "base.raw", "raw"
	}
	if err := Create(f, size, co); err != nil {
		t.Fatal(err)
	}
	im, err := Open(f, Options{Backing: func(string, string) (Backing, error) { return base, nil }})
	if err != nil {
		t.Fatal(err)
	}
	o.Size = HostLimit
	fb, err := block.Open(f, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBackend(im, fb, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, im, f
}

// do submits r and waits for its completion.
func do(t testing.TB, b *Backend, r block.Request) block.Completion {
	t.Helper()
	done := make(chanCompleter, 1)
	r.Done = done
	if err := b.Submit(r); err != nil {
		t.Fatalf("submit %v at %d: %v", r.Op, r.Offset, err)
	}
	return <-done
}

// TestBackendModel drives a backend over an overlay of a patterned raw
// base with random reads, writes, discards and flushes, split into
// several buffers as a guest's requests are, and compares every read with
// a model of the disk. Both the io_uring-or-pool path and the inline path
// serve the fast requests.
func TestBackendModel(t *testing.T) {
	for _, inline := range []bool{false, true} {
		name := map[bool]string{false: "async", true: "inline"}[inline]
		t.Run(name, func(t *testing.T) {
			const size = 8 << 20
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range model {
				model[i] = byte(rng.Uint32())
			}
			basePath := filepath.Join(t.TempDir(), "base.raw")
			if err := os.WriteFile(basePath, model[:size-1<<20], 0o600); err != nil {
				t.Fatal(err)
			}
			clear(model[size-1<<20:]) // the overlay is larger than its base
			bf, err := os.Open(basePath)
			if err != nil {
				t.Fatal(err)
			}
			defer bf.Close()
			base, err := NewRawBacking(bf)
			if err != nil {
				t.Fatal(err)
			}
			b, _, _ := newTestBackend(t, size, 12, base, block.Options{NoInline: !inline})
			for i := range 600 {
				off := int64(rng.IntN(size/512-64)) * 512
				n := (1 + rng.IntN(64)) * 512
				switch op := rng.IntN(10); {
				case op < 4: // write
					data := make([]byte, n)
					for k := range data {
						data[k] = byte(rng.Uint32())
					}
					c := submitSplit(t, b, block.Write, off, data, rng)
					if c.Err != nil || c.N != int64(n) {
						t.Fatalf("op %d: write %d at %d: %+v", i, n, off, c)
					}
					copy(model[off:], data)
				case op < 5: // discard or write zeroes
					kind := block.Discard
					if rng.IntN(2) == 0 {
						kind = block.WriteZeroes
					}
					if c := do(t, b, block.Request{Op: kind, Offset: off, Length: int64(n)}); c.Err != nil {
						t.Fatalf("op %d: %v %d at %d: %v", i, kind, n, off, c.Err)
					}
					clear(model[off : off+int64(n)])
				case op < 6:
					if c := do(t, b, block.Request{Op: block.Flush}); c.Err != nil {
						t.Fatalf("flush: %v", c.Err)
					}
				default: // read
					got := make([]byte, n)
					r := block.Request{Op: block.Read, Offset: off, Bufs: [][]byte{got}}
					c, ok := b.Inline(&r)
					if !ok {
						c = submitSplit(t, b, block.Read, off, got, rng)
					}
					if c.Err != nil || c.N != int64(n) {
						t.Fatalf("op %d: read %d at %d: %+v", i, n, off, c)
					}
					if !bytes.Equal(got, model[off:off+int64(n)]) {
						k := 0
						for got[k] == model[off+int64(k)] {
							k++
						}
						t.Fatalf("op %d: read %d at %d differs from the model at %d (got %#x want %#x)", i, n, off, off+int64(k), got[k], model[off+int64(k)])
					}
				}
			}
		})
	}
}

// submitSplit submits a read or write of p at off split into random
// buffers.
func submitSplit(t testing.TB, b *Backend, op block.Op, off int64, p []byte, rng *rand.Rand) block.Completion {
	var bufs [][]byte
	for len(p) > 0 {
		k := min(len(p), 512*(1+rng.IntN(8)))
		bufs = append(bufs, p[:k])
		p = p[k:]
	}
	return do(t, b, block.Request{Op: op, Offset: off, Bufs: bufs})
}

// TestBackendBounds: requests past the virtual disk, writes to a
// read-only image, and requests after Close are refused at Submit.
func TestBackendBounds(t *testing.T) {
	b, _, f := newTestBackend(t, 1<<20, 16, nil, block.Options{})
	buf := make([]byte, 4096)
	for _, r := range []block.Request{
		{Op: block.Read, Offset: 1<<20 - 512, Bufs: [][]byte{buf}},
		{Op: block.Write, Offset: -512, Bufs: [][]byte{buf}},
		{Op: block.Discard, Offset: 1 << 20, Length: 512},
	} {
		if err := b.Submit(r); !errors.Is(err, block.ErrOutOfRange) {
			t.Errorf("%v at %d: %v, want ErrOutOfRange", r.Op, r.Offset, err)
		}
	}
	im, err := Open(f, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	fb, err := block.Open(f, block.Options{Size: HostLimit})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := NewBackend(im, fb, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.Submit(block.Request{Op: block.Write, Bufs: [][]byte{buf}, Done: make(chanCompleter, 1)}); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("write to a read-only image: %v", err)
	}
	ro.Close()
	if err := ro.Submit(block.Request{Op: block.Read, Bufs: [][]byte{buf}, Done: make(chanCompleter, 1)}); !errors.Is(err, block.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

// TestBackendFastPath: once a cluster is written, reads and writes of it
// reach the file's backend directly, with no allocation per request.
func TestBackendFastPath(t *testing.T) {
	b, _, _ := newTestBackend(t, 4<<20, 16, nil, block.Options{NoInline: true})
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	if c := do(t, b, block.Request{Op: block.Write, Offset: 1 << 20, Bufs: [][]byte{data}}); c.Err != nil {
		t.Fatal(c.Err)
	}
	if _, ok := b.fast(block.Write, 1<<20+4096, 4096); !ok {
		t.Fatal("a written cluster is not on the fast path")
	}
	if _, ok := b.fast(block.Read, 2<<20, 4096); ok {
		t.Fatal("an unallocated cluster is on the fast path")
	}
	buf := make([]byte, 4096)
	done := make(chanCompleter, 1)
	r := block.Request{Op: block.Read, Offset: 1<<20 + 8192, Bufs: [][]byte{buf}, Done: done}
	allocs := testing.AllocsPerRun(200, func() {
		if err := b.Submit(r); err != nil {
			t.Fatal(err)
		}
		<-done
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per fast-path read, want 0", allocs)
	}
	if buf[0] != 0xab {
		t.Errorf("read %#x, want 0xab", buf[0])
	}
}

// BenchmarkRead4K compares 4 KiB random reads, one at a time through the
// io_uring (or pool) path, of a fully written qcow2 image with the same
// reads of a raw file on the same file system: the cost of the cluster
// lookup on the fast path. One op is one request.
func BenchmarkRead4K(b *testing.B) {
	const size = 64 << 20
	data := bytes.Repeat([]byte{0x5a}, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	offs := make([]int64, 4096)
	for i := range offs {
		offs[i] = int64(rng.IntN(size/4096)) * 4096
	}
	run := func(b *testing.B, be block.Backend) {
		buf := make([]byte, 4096)
		done := make(chanCompleter, 1)
		r := block.Request{Op: block.Read, Bufs: [][]byte{buf}, Done: done}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			r.Offset = offs[i%len(offs)]
			if err := be.Submit(r); err != nil {
				b.Fatal(err)
			}
			if c := <-done; c.Err != nil {
				b.Fatal(c.Err)
			}
		}
	}
	b.Run("raw", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "disk.raw")
		if err := os.WriteFile(path, bytes.Repeat(data, size>>20), 0o600); err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		be, err := block.Open(f, block.Options{NoInline: true})
		if err != nil {
			b.Fatal(err)
		}
		defer be.Close()
		run(b, be)
	})
	b.Run("qcow2", func(b *testing.B) {
		be, _, _ := newTestBackend(b, size, 16, nil, block.Options{NoInline: true})
		for off := int64(0); off < size; off += int64(len(data)) {
			if c := do(b, be, block.Request{Op: block.Write, Offset: off, Bufs: [][]byte{data}}); c.Err != nil {
				b.Fatal(c.Err)
			}
		}
		run(b, be)
	})
}

// TestTruncatedImageAllocatesPast: an image whose file ends before a
// cluster its tables point to (a writer that crashed, a copy cut short)
// allocates after that cluster, so a new write never lands where another
// guest offset reads.
func TestTruncatedImageAllocatesPast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.qcow2")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Create(f, 1<<20, CreateOptions{ClusterBits: 12}); err != nil {
		t.Fatal(err)
	}
	im, err := Open(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for c := range 2 {
		if _, err := im.WriteAt(bytes.Repeat([]byte{byte(c + 1)}, 4096), int64(c)*4096); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := f.Stat()
	if err := f.Truncate(st.Size() - 4096); err != nil { // cluster 1's data is cut off
		t.Fatal(err)
	}
	im, err = Open(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{9}, 4096), 2*4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := im.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if got[0] == 9 {
		t.Fatal("a new cluster was allocated where a cut-off cluster's entry points: two guest offsets share it")
	}
}

// TestZeroPartialOfZeroCluster: zeroing part of a cluster that already
// reads as zeros (never written, no backing file) allocates nothing.
func TestZeroPartialOfZeroCluster(t *testing.T) {
	b, im, f := newTestBackend(t, 4<<20, 16, nil, block.Options{})
	before, _ := f.Stat()
	for i := range 8 {
		if c := do(t, b, block.Request{Op: block.Discard, Offset: int64(i) * 8192, Length: 4096}); c.Err != nil {
			t.Fatal(c.Err)
		}
	}
	after, _ := f.Stat()
	if after.Size() != before.Size() {
		t.Errorf("discarding never-written sectors grew the image from %d to %d bytes", before.Size(), after.Size())
	}
	got := make([]byte, 4096)
	if _, err := im.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("read %v", err)
	}
}
