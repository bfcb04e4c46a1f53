package block

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"
)

// TestIdleDiskHeap: a backend the guest has not used yet costs its slots,
// its completion channel and little else. Each slot's buffer and iovec
// lists grow with the requests that need them. (Depths are large: the
// heap statistics count small allocations a span at a time.)
func TestIdleDiskHeap(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	perSlot := uint64(unsafe.Sizeof(slot{}) + unsafe.Sizeof(int32(0)) + unsafe.Sizeof(Completion{}))
	for _, tc := range []struct {
		name  string
		open  func(*os.File, Options) (Backend, error)
		depth int
	}{
		{"pool", func(f *os.File, o Options) (Backend, error) { return NewPool(f, o) }, 2048},
		{"pool", func(f *os.File, o Options) (Backend, error) { return NewPool(f, o) }, 4096},
		{"auto", Open, 1024},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b, err := tc.open(f, Options{Depth: tc.depth})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		got := after.TotalAlloc - before.TotalAlloc
		if limit := uint64(tc.depth)*perSlot + 32<<10; got > limit {
			t.Errorf("%s with depth %d: %d bytes of heap, want at most %d (%d per slot)", tc.name, tc.depth, got, limit, perSlot)
		}
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	}
}
