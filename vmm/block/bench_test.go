package block

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// BenchmarkRandRead4K measures 4 KiB random reads with 32 in flight from a
// page-cached file, on tmpfs (/dev/shm) and on the temp directory's file
// system, through each backend: the cost of the request path itself, not of
// a disk. One op is one request.
func BenchmarkRandRead4K(b *testing.B) {
	st, err := os.Stat("/dev/shm")
	testenv.Need(b, err == nil && st.IsDir(), "/dev/shm (tmpfs)")
	b.Run("tmpfs", func(b *testing.B) { benchRandRead(b, "/dev/shm") })
	b.Run("tempdir", func(b *testing.B) { benchRandRead(b, os.TempDir()) })
}

func benchRandRead(b *testing.B, parent string) {
	const size, depth = 64 << 20, 32
	dir, err := os.MkdirTemp(parent, "blockbench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk")
	if err := os.WriteFile(path, fill(size), 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(7, 7))
	offs := make([]int64, 4096)
	for i := range offs {
		offs[i] = int64(rng.IntN(size/4096)) * 4096
	}
	for _, k := range []struct {
		name  string
		batch bool // resubmit everything completed, deferred, then Commit once (as virtio-blk does per kick)
		open  func() (Backend, error)
	}{
		{"io_uring", false, func() (Backend, error) { return NewUring(f, Options{Depth: depth}) }},
		{"io_uring-batched", true, func() (Backend, error) { return NewUring(f, Options{Depth: depth}) }},
		{"pool", false, func() (Backend, error) { return NewPool(f, Options{Depth: depth, Workers: 8}) }},
	} {
		b.Run(k.name, func(b *testing.B) {
			be, err := k.open()
			if err != nil {
				testenv.Need(b, false, err.Error())
			}
			defer be.Close()
			bufs := make([][]byte, depth)
			iov := make([][][]byte, depth) // one Bufs slice per slot, reused
			for i := range bufs {
				bufs[i] = make([]byte, 4096)
				iov[i] = [][]byte{bufs[i]}
			}
			next := 0
			submit := func(slot int) {
				r := Request{Op: Read, Offset: offs[next%len(offs)], Bufs: iov[slot], Cookie: uint64(slot), Defer: k.batch}
				if err := be.Submit(r); err != nil {
					b.Fatal(err)
				}
				next++
			}
			b.ReportAllocs()
			b.ResetTimer()
			inflight, submitted := 0, 0
			for submitted < min(depth, b.N) {
				submit(submitted)
				submitted++
				inflight++
			}
			be.Commit()
			for inflight > 0 {
				c := <-be.Completions()
				for {
					if c.Err != nil {
						b.Fatal(c.Err)
					}
					inflight--
					if submitted < b.N {
						submit(int(c.Cookie))
						submitted++
						inflight++
					}
					if !k.batch {
						break
					}
					select {
					case c = <-be.Completions():
						continue
					default:
					}
					break
				}
				be.Commit()
			}
		})
	}
}
