package block

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/uring"
)

// kinds lists both implementations; io_uring is skipped (or failed under
// HYPERROOT_STRICT) where the host forbids it.
var kinds = []struct {
	name string
	open func(*testing.T, *os.File, Options) Backend
}{
	{"io_uring", func(t *testing.T, f *os.File, o Options) Backend {
		b, err := NewUring(f, o)
		if errors.Is(err, uring.ErrUnavailable) {
			testenv.Need(t, false, err.Error())
		}
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
	{"pool", func(t *testing.T, f *os.File, o Options) Backend {
		b, err := NewPool(f, o)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
}

// forEach runs fn against a fresh file of the given contents for each
// backend, closing the backend afterwards.
func forEach(t *testing.T, dir string, content []byte, flag int, o Options, fn func(t *testing.T, b Backend, f *os.File)) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			d := dir
			if d == "" {
				d = t.TempDir()
			}
			path := filepath.Join(d, "disk-"+strings.ReplaceAll(t.Name(), "/", "_"))
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(path) })
			f, err := os.OpenFile(path, flag, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			b := k.open(t, f, o)
			defer func() {
				if err := b.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			fn(t, b, f)
		})
	}
}

// wait collects n completions, failing on a timeout or an error.
func wait(t *testing.T, b Backend, n int) []Completion {
	t.Helper()
	out := make([]Completion, 0, n)
	timeout := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case c, ok := <-b.Completions():
			if !ok {
				t.Fatal("completion channel closed")
			}
			if c.Err != nil {
				t.Fatalf("request %d: %v", c.Cookie, c.Err)
			}
			out = append(out, c)
		case <-timeout:
			t.Fatalf("timed out with %d of %d completions", len(out), n)
		}
	}
	return out
}

// do submits one request and waits for its completion.
func do(t *testing.T, b Backend, r Request) Completion {
	t.Helper()
	if err := b.Submit(r); err != nil {
		t.Fatalf("submit %v: %v", r.Op, err)
	}
	return wait(t, b, 1)[0]
}

// split cuts buf into 1 to 4 pieces of random sizes, like a guest's
// descriptor chain.
func split(rng *rand.Rand, buf []byte) [][]byte {
	var out [][]byte
	for n := rng.IntN(4); n > 0 && len(buf) > 1; n-- {
		k := 1 + rng.IntN(len(buf)-1)
		out = append(out, buf[:k])
		buf = buf[k:]
	}
	return append(out, buf)
}

func TestRandomReadWriteManyInFlight(t *testing.T) {
	const size, inflight, chunk = 4 << 20, 256, 16 << 10
	forEach(t, "", make([]byte, size), os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
		rng := rand.New(rand.NewPCG(1, uint64(len(t.Name()))))
		model := make([]byte, size)
		outOfOrder := 0
		for round := range 4 {
			// Writes: one per 16 KiB chunk, so requests in flight never overlap.
			for i := range inflight {
				n := 1 + rng.IntN(chunk-1)
				off := int64(i*chunk + rng.IntN(chunk-n+1))
				data := make([]byte, n)
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				copy(model[off:], data)
				if err := b.Submit(Request{Op: Write, Offset: off, Bufs: split(rng, data), Cookie: uint64(i)}); err != nil {
					t.Fatalf("round %d write %d: %v", round, i, err)
				}
			}
			seen := make(map[uint64]bool)
			for k, c := range wait(t, b, inflight) {
				if seen[c.Cookie] {
					t.Fatalf("cookie %d completed twice", c.Cookie)
				}
				seen[c.Cookie] = true
				if c.Cookie != uint64(k) {
					outOfOrder++
				}
			}
			// Reads: random ranges over the whole disk, all in flight at once.
			type read struct {
				off int64
				buf []byte
			}
			reads := make([]read, inflight)
			for i := range reads {
				n := 1 + rng.IntN(64<<10)
				reads[i] = read{off: int64(rng.IntN(size - n + 1)), buf: make([]byte, n)}
				if err := b.Submit(Request{Op: Read, Offset: reads[i].off, Bufs: split(rng, reads[i].buf), Cookie: uint64(i)}); err != nil {
					t.Fatalf("round %d read %d: %v", round, i, err)
				}
			}
			for _, c := range wait(t, b, inflight) {
				r := reads[c.Cookie]
				if c.N != int64(len(r.buf)) {
					t.Fatalf("read %d: N=%d, want %d", c.Cookie, c.N, len(r.buf))
				}
				if !bytes.Equal(r.buf, model[r.off:r.off+int64(len(r.buf))]) {
					t.Fatalf("round %d read %d at %d: data differs", round, c.Cookie, r.off)
				}
			}
		}
		t.Logf("%d of %d write completions arrived out of submission order", outOfOrder, 4*inflight)
		got, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatal("file contents differ from the model")
		}
	})
}

func TestFlushMakesWritesVisibleElsewhere(t *testing.T) {
	forEach(t, "", make([]byte, 1<<20), os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
		data := bytes.Repeat([]byte("hyperroot"), 1000)
		if c := do(t, b, Request{Op: Write, Offset: 4096, Bufs: [][]byte{data}}); c.N != int64(len(data)) {
			t.Fatalf("write N=%d", c.N)
		}
		if c := do(t, b, Request{Op: Flush, Cookie: 42}); c.Cookie != 42 || c.N != 0 {
			t.Fatalf("flush completion %+v", c)
		}
		other, err := os.Open(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		got := make([]byte, len(data))
		if _, err := other.ReadAt(got, 4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("data not visible through another descriptor after flush")
		}
	})
}

// fill returns n bytes of a non-zero pattern.
func fill(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251 + 1)
	}
	return b
}

// checkZeroed verifies that the file holds zeros in [off, off+n) and the
// original pattern elsewhere, and still has its size.
func checkZeroed(t *testing.T, path string, orig []byte, off, n int) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(orig) {
		t.Fatalf("file size %d, want %d", len(got), len(orig))
	}
	want := bytes.Clone(orig)
	clear(want[off : off+n])
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("byte %d is %#x, want %#x (zeroed range %d+%d)", i, got[i], want[i], off, n)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func blocks(t *testing.T, f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func TestDiscardZeroesAndKeepsSize(t *testing.T) {
	orig := fill(1 << 20)
	forEach(t, "", orig, os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
		before := blocks(t, f)
		const off, n = 64 << 10, 256 << 10
		if c := do(t, b, Request{Op: Discard, Offset: off, Length: n}); c.N != n {
			t.Fatalf("discard N=%d", c.N)
		}
		checkZeroed(t, f.Name(), orig, off, n)
		if after := blocks(t, f); after >= before {
			t.Errorf("blocks %d -> %d: discard deallocated nothing", before, after)
		}
	})
}

func TestWriteZeroes(t *testing.T) {
	orig := fill(256 << 10)
	// ext4 (t.TempDir) has FALLOC_FL_ZERO_RANGE; tmpfs does not, which
	// exercises the fallback to PUNCH_HOLE.
	for _, dir := range []string{"", "/dev/shm"} {
		name := "tempdir"
		if dir != "" {
			name = "tmpfs"
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				testenv.Need(t, false, dir+" (tmpfs) missing")
			}
		}
		t.Run(name, func(t *testing.T) {
			forEach(t, dir, orig, os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
				const off, n = 1234, 70000 // unaligned on purpose
				if c := do(t, b, Request{Op: WriteZeroes, Offset: off, Length: n}); c.N != n {
					t.Fatalf("write-zeroes N=%d", c.N)
				}
				checkZeroed(t, f.Name(), orig, off, n)
			})
		})
	}
}

func TestReadPastEndOfFile(t *testing.T) {
	orig := fill(1000) // not a whole number of sectors
	forEach(t, "", orig, os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
		if b.Size() != 1024 {
			t.Fatalf("Size %d, want 1024 (rounded up to a sector)", b.Size())
		}
		buf := bytes.Repeat([]byte{0xff}, 1024)
		if c := do(t, b, Request{Op: Read, Offset: 0, Bufs: [][]byte{buf[:600], buf[600:]}}); c.N != 1024 {
			t.Fatalf("read N=%d, want 1024", c.N)
		}
		if !bytes.Equal(buf[:1000], orig) || !bytes.Equal(buf[1000:], make([]byte, 24)) {
			t.Fatal("tail past the end of the file is not zero-filled")
		}
		// The file shrinks behind the backend's back: reads are short and
		// must still come back whole, zero-filled.
		if err := os.Truncate(f.Name(), 100); err != nil {
			t.Fatal(err)
		}
		clear(buf)
		buf[500] = 0xff
		if c := do(t, b, Request{Op: Read, Offset: 0, Bufs: [][]byte{buf}}); c.N != 1024 {
			t.Fatalf("read after truncate N=%d", c.N)
		}
		if !bytes.Equal(buf[:100], orig[:100]) || firstDiff(buf[100:], make([]byte, 924)) >= 0 {
			t.Fatal("short read not zero-filled")
		}
	})
}

func TestRequestValidation(t *testing.T) {
	buf := make([]byte, 512)
	type tc struct {
		name string
		req  Request
		want error
	}
	var cases []tc
	for _, c := range []tc{
		{"read past end", Request{Op: Read, Offset: 1 << 20, Bufs: [][]byte{buf}}, ErrOutOfRange},
		{"read straddling end", Request{Op: Read, Offset: 1<<20 - 256, Bufs: [][]byte{buf}}, ErrOutOfRange},
		{"negative offset", Request{Op: Write, Offset: -512, Bufs: [][]byte{buf}}, ErrOutOfRange},
		{"offset overflow", Request{Op: Discard, Offset: math.MaxInt64 - 10, Length: 512}, ErrOutOfRange},
		{"length overflow", Request{Op: WriteZeroes, Offset: 512, Length: math.MaxInt64}, ErrOutOfRange},
		{"zero-length discard", Request{Op: Discard, Offset: 0}, ErrInvalid},
		{"negative length", Request{Op: WriteZeroes, Offset: 0, Length: -1}, ErrInvalid},
		{"unknown op", Request{Op: 99}, ErrInvalid},
		{"zero op", Request{}, ErrInvalid},
		{"too many buffers", Request{Op: Read, Bufs: make([][]byte, 1025)}, ErrInvalid},
	} {
		cases = append(cases, c)
	}
	forEach(t, "", make([]byte, 1<<20), os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
		for _, c := range cases {
			if err := b.Submit(c.req); !errors.Is(err, c.want) {
				t.Errorf("%s: %v, want %v", c.name, err, c.want)
			}
		}
	})
}

func TestReadOnly(t *testing.T) {
	orig := fill(64 << 10)
	for _, c := range []struct {
		name string
		flag int
		opt  Options
	}{
		{"O_RDONLY", os.O_RDONLY, Options{}},
		{"Options.ReadOnly", os.O_RDWR, Options{ReadOnly: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			forEach(t, "", orig, c.flag, c.opt, func(t *testing.T, b Backend, f *os.File) {
				if !b.ReadOnly() {
					t.Fatal("ReadOnly() false")
				}
				buf := make([]byte, 4096)
				for _, r := range []Request{
					{Op: Write, Offset: 0, Bufs: [][]byte{buf}},
					{Op: Discard, Offset: 0, Length: 4096},
					{Op: WriteZeroes, Offset: 0, Length: 4096},
				} {
					if err := b.Submit(r); !errors.Is(err, ErrReadOnly) {
						t.Errorf("%v: %v, want ErrReadOnly", r.Op, err)
					}
				}
				if c := do(t, b, Request{Op: Read, Offset: 4096, Bufs: [][]byte{buf}}); c.N != 4096 || !bytes.Equal(buf, orig[4096:8192]) {
					t.Fatal("read on a read-only disk failed")
				}
				do(t, b, Request{Op: Flush})
			})
		})
	}
}

func TestAlignmentCheck(t *testing.T) {
	d := &disk{size: 8 << 20, align: Alignment{Memory: 512, Offset: 512}}
	big := make([]byte, 8192)
	base := (512 - int(addr(big)%512)) % 512
	aligned := big[base : base+4096]
	for _, c := range []struct {
		name   string
		req    Request
		want   error
		bounce bool
	}{
		{"aligned", Request{Op: Read, Offset: 4096, Bufs: [][]byte{aligned}}, nil, false},
		{"offset", Request{Op: Read, Offset: 100, Bufs: [][]byte{aligned}}, ErrMisaligned, false},
		{"length", Request{Op: Read, Offset: 0, Bufs: [][]byte{aligned[:100]}}, ErrMisaligned, false},
		{"address", Request{Op: Write, Offset: 0, Bufs: [][]byte{big[base+1 : base+513]}}, nil, true},
		{"split sector", Request{Op: Read, Offset: 0, Bufs: [][]byte{aligned[:100], aligned[100:512]}}, nil, true},
		{"too big to bounce", Request{Op: Read, Offset: 0, Bufs: [][]byte{big[base+1 : base+513], make([]byte, maxBounce)}}, ErrMisaligned, false},
		{"discard", Request{Op: Discard, Offset: 512, Length: 1000}, ErrMisaligned, false},
	} {
		_, bounce, err := d.check(&c.req)
		if !errors.Is(err, c.want) || bounce != c.bounce {
			t.Errorf("%s: bounce %v, %v; want bounce %v, %v", c.name, bounce, err, c.bounce, c.want)
		}
	}
}

// TestDirectIOUnalignedBuffers writes and reads through O_DIRECT with guest
// buffers O_DIRECT refuses (an odd address, a sector split over two
// buffers): the backends must bounce them, and the file and the read-back
// must match byte for byte.
func TestDirectIOUnalignedBuffers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "direct")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	testenv.Need(t, err == nil, "O_DIRECT on the temp directory's file system")
	defer f.Close()
	for _, k := range []struct {
		name string
		open func() (Backend, error)
	}{
		{"io_uring", func() (Backend, error) { return NewUring(f, Options{Depth: 4}) }},
		{"pool", func() (Backend, error) { return NewPool(f, Options{Depth: 4}) }},
	} {
		t.Run(k.name, func(t *testing.T) {
			b, err := k.open()
			if err != nil {
				testenv.Need(t, false, err.Error())
			}
			defer b.Close()
			a := b.Alignment().Offset
			if a == 0 {
				t.Fatal("O_DIRECT descriptor reports no alignment")
			}
			data := fill(2 * a)
			raw := make([]byte, 4*a+1)
			odd := raw[1 : 1+2*a] // at an odd address
			copy(odd, data)
			// One sector split 100/rest over two buffers, the other odd.
			bufs := [][]byte{odd[:100], odd[100:a], odd[a:]}
			off := int64(3 * a)
			if c := do(t, b, Request{Op: Write, Offset: off, Bufs: bufs}); c.Err != nil || c.N != int64(2*a) {
				t.Fatalf("unaligned write: %+v", c)
			}
			clear(odd)
			if c := do(t, b, Request{Op: Read, Offset: off, Bufs: bufs}); c.Err != nil || c.N != int64(2*a) {
				t.Fatalf("unaligned read: %+v", c)
			}
			if !bytes.Equal(odd, data) {
				t.Fatalf("read-back differs at byte %d", firstDiff(odd, data))
			}
			onDisk, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(onDisk[off:off+int64(2*a)], data) {
				t.Fatalf("file differs at byte %d", firstDiff(onDisk[off:off+int64(2*a)], data))
			}
		})
	}
}

// TestDeferredSubmitWaitsForCommit checks the batching contract on
// io_uring: deferred requests do not start before Commit, and all of them
// complete after it.
func TestDeferredSubmitWaitsForCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	content := fill(1 << 16)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u, err := NewUring(f, Options{Depth: 8})
	if err != nil {
		testenv.Need(t, false, err.Error())
	}
	defer u.Close()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
		if err := u.Submit(Request{Op: Read, Offset: int64(i) * 4096, Bufs: [][]byte{bufs[i]}, Cookie: uint64(i), Defer: true}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case c := <-u.Completions():
		t.Fatalf("deferred request %d completed before Commit", c.Cookie)
	case <-time.After(100 * time.Millisecond):
	}
	u.Commit()
	for _, c := range wait(t, u, 4) {
		if c.Err != nil || c.N != 4096 {
			t.Fatalf("completion %+v", c)
		}
		if i := c.Cookie; !bytes.Equal(bufs[i], content[i*4096:(i+1)*4096]) {
			t.Fatalf("request %d read wrong data", i)
		}
	}
}

func TestDirectIOAlignmentReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "direct")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	testenv.Need(t, err == nil, "O_DIRECT on the temp directory's file system")
	defer f.Close()
	b, err := NewPool(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a := b.Alignment()
	if a.Offset < 512 || a.Memory < 1 {
		t.Fatalf("O_DIRECT alignment %+v", a)
	}
	t.Logf("O_DIRECT alignment %+v", a)
	if err := b.Submit(Request{Op: Read, Offset: 1, Bufs: [][]byte{make([]byte, 512)}}); !errors.Is(err, ErrMisaligned) {
		t.Fatalf("misaligned read: %v", err)
	}
}

func TestOpenChoosesAndFallsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	unavailable := func(*os.File, Options) (Backend, error) {
		return nil, fmtUnavailable()
	}
	b, err := open(f, Options{}, unavailable)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.Kind(), "pool (") || !strings.Contains(b.Kind(), "io_uring unavailable") {
		t.Errorf("fallback kind %q", b.Kind())
	}
	do(t, b, Request{Op: Write, Offset: 0, Bufs: [][]byte{[]byte("fallback works")}})
	b.Close()

	b, err = Open(f, Options{NoUring: true})
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != "pool" {
		t.Errorf("NoUring kind %q", b.Kind())
	}
	b.Close()

	b, err = Open(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t.Logf("Open chose %s", b.Kind())
	if _, err := uring.Setup(4); err == nil && b.Kind() != "io_uring" {
		t.Errorf("io_uring works here but Open chose %q", b.Kind())
	}
}

func fmtUnavailable() error {
	return errors.Join(uring.ErrUnavailable, unix.EPERM)
}

func TestCloseWithRequestsInFlight(t *testing.T) {
	before := runtime.NumGoroutine()
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk")
			if err := os.WriteFile(path, make([]byte, 8<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for range 5 {
				b := k.open(t, f, Options{Depth: 256, Workers: 4})
				bufs := make([][]byte, 256)
				for i := range bufs {
					bufs[i] = make([]byte, 32<<10)
					op := Read
					if i%2 == 1 {
						op = Write
					}
					if err := b.Submit(Request{Op: op, Offset: int64(i) * 32 << 10, Bufs: bufs[i : i+1], Cookie: uint64(i)}); err != nil {
						t.Fatal(err)
					}
				}
				b.Submit(Request{Op: Flush})
				// Nobody reads completions: Close must not wait for a reader.
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				if err := b.Close(); err != nil {
					t.Fatalf("second close: %v", err)
				}
				if err := b.Submit(Request{Op: Flush}); !errors.Is(err, ErrClosed) {
					t.Fatalf("submit after close: %v", err)
				}
				n := 0
				for range b.Completions() { // closed: the loop ends
					n++
				}
				if n > 256+1 {
					t.Fatalf("%d completions for 257 requests", n)
				}
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
