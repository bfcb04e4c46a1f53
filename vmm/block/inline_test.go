package block

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// tmpfsDir is a fresh directory on /dev/shm, where Inline treats the file
// as memory.
func tmpfsDir(t testing.TB) string {
	st, err := os.Stat("/dev/shm")
	testenv.Need(t, err == nil && st.IsDir(), "/dev/shm (tmpfs)")
	dir, err := os.MkdirTemp("/dev/shm", "blockinline")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestInline checks what Inline takes and what it declines, on tmpfs
// (plain preadv/pwritev) and on the temp directory's file system
// (RWF_NOWAIT), and that what it takes lands exactly like Submit would.
func TestInline(t *testing.T) {
	const size = 64 << 10
	content := fill(size - 100) // the last sector is partial: it reads as zeros past EOF
	dirs := []struct {
		name string
		dir  func(testing.TB) string
	}{
		{"tmpfs", tmpfsDir},
		{"tempdir", func(tb testing.TB) string { return tb.(*testing.T).TempDir() }},
	}
	for _, dd := range dirs {
		t.Run(dd.name, func(t *testing.T) {
			forEach(t, dd.dir(t), content, os.O_RDWR, Options{}, func(t *testing.T, b Backend, f *os.File) {
				memory := dd.name == "tmpfs"
				// A read of cached data (just written by WriteFile).
				buf := make([]byte, 4096)
				c, ok := b.Inline(&Request{Op: Read, Offset: 8192, Bufs: [][]byte{buf[:1000], buf[1000:]}, Cookie: 7})
				if memory && !ok {
					t.Fatal("tmpfs read declined")
				}
				if ok {
					if c.Cookie != 7 || c.N != 4096 || c.Err != nil {
						t.Fatalf("read completion %+v", c)
					}
					if !bytes.Equal(buf, content[8192:8192+4096]) {
						t.Fatal("read returned the wrong data")
					}
				}
				// The tail past the end of the file reads as zeros.
				tail := bytes.Repeat([]byte{0xAA}, 512)
				if c, ok := b.Inline(&Request{Op: Read, Offset: size - 512, Bufs: [][]byte{tail}}); ok {
					want := append(bytes.Clone(content[size-512:]), make([]byte, 100)...)
					if c.N != 512 || !bytes.Equal(tail, want) {
						t.Fatalf("tail read: n=%d, zeros past EOF wrong", c.N)
					}
				} else if memory {
					t.Fatal("tmpfs tail read declined")
				}
				// A write, then a read through Submit sees it.
				data := bytes.Repeat([]byte{0x5C}, 4096)
				_, ok = b.Inline(&Request{Op: Write, Offset: 4096, Bufs: [][]byte{data}})
				if memory && !ok {
					t.Fatal("tmpfs write declined")
				}
				if !ok {
					do(t, b, Request{Op: Write, Offset: 4096, Bufs: [][]byte{data}})
				}
				got := make([]byte, 4096)
				do(t, b, Request{Op: Read, Offset: 4096, Bufs: [][]byte{got}})
				if !bytes.Equal(got, data) {
					t.Fatal("data written inline not read back")
				}
				// A sequential read's scatter list: the whole file in
				// 512-byte pieces (128 of them; Linux's 1 MiB requests
				// come as 256 pages), taken at once on tmpfs.
				pieces := make([][]byte, size/512)
				for i := range pieces {
					pieces[i] = make([]byte, 512)
				}
				if c, ok := b.Inline(&Request{Op: Read, Offset: 0, Bufs: pieces}); ok {
					all := bytes.Join(pieces, nil)
					if c.N != size || !bytes.Equal(all[4096:8192], data) || !bytes.Equal(all[8192:size-100], content[8192:]) {
						t.Fatalf("read of %d pieces: n=%d or data wrong", len(pieces), c.N)
					}
				} else if memory {
					t.Fatalf("tmpfs read of %d pieces declined", len(pieces))
				}
				// Declined: out of range, not a transfer, too many buffers.
				for _, r := range []Request{
					{Op: Read, Offset: size, Bufs: [][]byte{buf}},
					{Op: Read, Offset: -512, Bufs: [][]byte{buf}},
					{Op: Flush},
					{Op: Discard, Offset: 0, Length: 512},
					{Op: Read, Offset: 0, Bufs: make([][]byte, inlineIovecs+1)},
				} {
					if _, ok := b.Inline(&r); ok {
						t.Errorf("Inline took %v at %d with %d buffers", r.Op, r.Offset, len(r.Bufs))
					}
				}
				// Closed: declined, so Submit reports ErrClosed.
				b.Close()
				if _, ok := b.Inline(&Request{Op: Read, Offset: 0, Bufs: [][]byte{buf}}); ok {
					t.Error("Inline took a request after Close")
				}
			})
		})
	}
}

// TestInlineDeclines: the options and file modes where every request must
// take the asynchronous path.
func TestInlineDeclines(t *testing.T) {
	dir := tmpfsDir(t)
	path := filepath.Join(dir, "disk")
	if err := os.WriteFile(path, fill(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for _, tc := range []struct {
		name string
		flag int
		o    Options
		op   Op
	}{
		{"NoInline", os.O_RDWR, Options{NoInline: true}, Read},
		{"read-only file", os.O_RDONLY, Options{}, Write},
		{"ReadOnly option", os.O_RDWR, Options{ReadOnly: true}, Write},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(path, tc.flag, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, err := NewPool(f, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if _, ok := b.Inline(&Request{Op: tc.op, Offset: 0, Bufs: [][]byte{buf}}); ok {
				t.Errorf("Inline took a %v", tc.op)
			}
		})
	}
}

// TestInlineAllocs: the inline path allocates nothing.
func TestInlineAllocs(t *testing.T) {
	path := filepath.Join(tmpfsDir(t), "disk")
	if err := os.WriteFile(path, fill(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := NewPool(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	buf := make([]byte, 4096)
	r := Request{Op: Read, Offset: 4096, Bufs: [][]byte{buf}}
	if n := testing.AllocsPerRun(1000, func() {
		if _, ok := b.Inline(&r); !ok {
			t.Fatal("declined")
		}
	}); n != 0 {
		t.Errorf("%v allocations per inline read", n)
	}
}

// TestAdvance checks the iovec cursor Inline uses after short transfers.
func TestAdvance(t *testing.T) {
	a, b := make([]byte, 10), make([]byte, 20)
	mk := func() []unix.Iovec {
		iov := make([]unix.Iovec, 2)
		iov[0].Base, iov[1].Base = &a[0], &b[0]
		iov[0].SetLen(10)
		iov[1].SetLen(20)
		return iov
	}
	for _, tc := range []struct {
		n, left int
		base    *byte
		len     uint64
	}{
		{0, 2, &a[0], 10},
		{4, 2, &a[4], 6},
		{10, 1, &b[0], 20},
		{15, 1, &b[5], 15},
		{30, 0, nil, 0},
	} {
		iov := mk()
		left := advance(iov, tc.n)
		if left != tc.left {
			t.Errorf("advance(%d): %d iovecs left, want %d", tc.n, left, tc.left)
			continue
		}
		if left > 0 && (iov[0].Base != tc.base || iov[0].Len != tc.len) {
			t.Errorf("advance(%d): first iovec len %d at the wrong base, want len %d", tc.n, iov[0].Len, tc.len)
		}
	}
}

// collector is a Completer recording what it receives.
type collector struct {
	mu   sync.Mutex
	got  map[uint64]Completion
	dups int
	more chan struct{}
}

func newCollector() *collector {
	return &collector{got: map[uint64]Completion{}, more: make(chan struct{}, 1)}
}

func (c *collector) Complete(comp Completion) {
	c.mu.Lock()
	if _, ok := c.got[comp.Cookie]; ok {
		c.dups++
	}
	c.got[comp.Cookie] = comp
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *collector) count() (n, dups int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got), c.dups
}

// TestCompleter: requests with Done set complete through it, not the
// channel; after Close, every accepted request has had exactly one
// completion (ErrClosed for those the backend never ran).
func TestCompleter(t *testing.T) {
	const n = 128
	forEach(t, "", make([]byte, 4<<20), os.O_RDWR, Options{Depth: n, Workers: 2}, func(t *testing.T, b Backend, f *os.File) {
		c := newCollector()
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, 32<<10)
			op := Read
			if i%2 == 1 {
				op = Write
			}
			if err := b.Submit(Request{Op: op, Offset: int64(i) * 32 << 10, Bufs: bufs[i : i+1], Cookie: uint64(i), Done: c}); err != nil {
				t.Fatal(err)
			}
		}
		// Half of them complete normally...
		deadline := time.After(20 * time.Second)
		for {
			if got, _ := c.count(); got >= n/2 {
				break
			}
			select {
			case <-c.more:
			case <-deadline:
				t.Fatal("completions did not arrive")
			}
		}
		select {
		case comp := <-b.Completions():
			t.Fatalf("completion %d on the channel", comp.Cookie)
		default:
		}
		// ...the rest, at the latest, when the backend closes.
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		got, dups := c.count()
		if got != n || dups != 0 {
			t.Fatalf("%d distinct completions (%d duplicates) for %d requests", got, dups, n)
		}
		for i, comp := range c.got {
			if comp.Err != nil && !errors.Is(comp.Err, ErrClosed) {
				t.Errorf("request %d: %v", i, comp.Err)
			}
			if comp.Err == nil && comp.N != 32<<10 {
				t.Errorf("request %d: %d bytes", i, comp.N)
			}
		}
	})
}
