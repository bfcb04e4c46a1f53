package qcow2

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The image file is untrusted (see the package comment): these fuzzers
// feed ParseHeader and Open arbitrary bytes, from seeds that are real
// images qemu-img made (testdata/fuzz, written by TestWriteFuzzCorpus),
// and require that nothing panics, allocates without bound or loops.

// FuzzParseHeader: any first cluster either parses into a header whose
// fields keep the promises the rest of the package relies on, or is
// refused.
func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, first []byte) {
		h, err := ParseHeader(first)
		if err != nil {
			return
		}
		cs := uint64(h.ClusterSize())
		switch {
		case h.Version != 2 && h.Version != 3:
			t.Fatalf("version %d", h.Version)
		case h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits:
			t.Fatalf("cluster bits %d", h.ClusterBits)
		case h.Size > MaxSize:
			t.Fatalf("size %d", h.Size)
		case uint64(h.L1Size)*cs*cs/8 < h.Size:
			t.Fatalf("an L1 table of %d entries maps less than %d bytes", h.L1Size, h.Size)
		case uint64(h.L1Size)*8 > maxL1Bytes || uint64(h.RefTableClusters)*cs > maxRefTableBytes:
			t.Fatalf("tables too large: L1 %d entries, refcount table %d clusters", h.L1Size, h.RefTableClusters)
		case h.RefcountOrder < 3 || h.RefcountOrder > 6:
			t.Fatalf("refcount order %d", h.RefcountOrder)
		case h.CryptMethod != 0:
			t.Fatalf("crypt method %d", h.CryptMethod)
		case h.Incompatible&^(IncompatDirty|IncompatCorrupt|IncompatCompression) != 0:
			t.Fatalf("incompatible features %#x", h.Incompatible)
		case len(h.BackingFile) > MaxBackingName || bytes.IndexByte([]byte(h.BackingFile), 0) >= 0:
			t.Fatalf("backing file %q", h.BackingFile)
		}
	})
}

// fuzzBacking is a backing disk of any size that holds a pattern and
// needs no memory.
type fuzzBacking struct{ size int64 }

func (b fuzzBacking) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		if o := off + int64(i); o < b.size {
			p[i] = byte(o*7 + o>>9)
		} else {
			p[i] = 0
		}
	}
	return len(p), nil
}

func (b fuzzBacking) Size() int64 { return b.size }

// maxFuzzOp bounds one read or write of the fuzzer: 2 MiB clusters are
// allowed, and need not be read or written whole to be exercised.
const maxFuzzOp = 256 << 10

// FuzzImage: any file opened writable and read-only, then read, written,
// zeroed and flushed at offsets derived from its bytes, returns errors,
// never panics or hangs.
//
// The seeds are whole images of several KiB, which the fuzzing engine
// spends up to a minute minimizing each time it finds new coverage,
// fuzzing nothing meanwhile: add -fuzzminimizetime=100x to explore.
func FuzzImage(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4<<20 {
			return
		}
		// A memfd: no file system to slow each run down, and no fsync.
		fd, err := unix.MemfdCreate("fuzz.qcow2", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "fuzz.qcow2")
		defer f.Close()
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		h := fnv.New64a()
		h.Write(data)
		rng := rand.New(rand.NewPCG(h.Sum64(), 1))
		backing := func(name, format string) (Backing, error) {
			if len(name)%5 == 0 { // some Backing funcs fail
				return nil, fmt.Errorf("no backing file %q", name)
			}
			return fuzzBacking{int64(len(name)) << 16}, nil
		}
		// Writable, then read-only over what the writes left.
		for _, ro := range []bool{false, true} {
			im, err := Open(f, Options{ReadOnly: ro, Backing: backing, L2CacheBytes: 1 << 16})
			if err != nil {
				continue
			}
			fuzzOps(t, im, rng, 12)
		}
	})
}

// fuzzOps runs n random operations on im, near its start, its end and
// cluster boundaries, where edge cases are.
func fuzzOps(t *testing.T, im *Image, rng *rand.Rand, n int) {
	size, cs := im.Size(), im.ClusterSize()
	if size <= 0 {
		return
	}
	buf := make([]byte, min(size, maxFuzzOp))
	for range n {
		l := 1 + rng.Int64N(min(size, maxFuzzOp))
		var off int64
		switch rng.IntN(4) {
		case 0:
			off = 0
		case 1:
			off = size - l
		case 2:
			off = min(cs*rng.Int64N(size/cs+1)-rng.Int64N(l+1), size-l)
		default:
			off = rng.Int64N(size - l + 1)
		}
		off = max(off, 0)
		p := buf[:l]
		switch rng.IntN(5) {
		case 0, 1:
			if k, err := im.ReadAt(p, off); err == nil && k != len(p) {
				t.Fatalf("ReadAt(%d at %d) = %d, nil", l, off, k)
			}
		case 2:
			for i := range p {
				p[i] = byte(i)
			}
			if k, err := im.WriteAt(p, off); k > len(p) || err == nil && k != len(p) {
				t.Fatalf("WriteAt(%d at %d) = %d, %v", l, off, k, err)
			}
		case 3:
			im.Zero(off, l, rng.IntN(2) == 0)
		default:
			im.Flush()
		}
	}
}

// corpusEnv makes TestWriteFuzzCorpus write the seed corpora.
const corpusEnv = "HYPERROOT_QCOW2_WRITE_CORPUS"

// TestWriteFuzzCorpus writes the fuzzers' seeds, small real images made
// by qemu-img and qemu-io and by Create, into testdata/fuzz when
// HYPERROOT_QCOW2_WRITE_CORPUS=1. They are committed: this only says how
// they were made.
func TestWriteFuzzCorpus(t *testing.T) {
	// It always makes the images (checking that each header parses,
	// or is refused for the feature it was made with, and that the
	// committed corpus has an entry for each) and rewrites the corpus
	// only when asked.
	write := os.Getenv(corpusEnv) == "1"
	needQemu(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), bytes.Repeat([]byte{0xba}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	mk := func(name, opts string, size string, cmds ...string) []byte {
		p := filepath.Join(dir, name)
		args := []string{"create", "-q", "-f", "qcow2"}
		if opts != "" {
			args = append(args, "-o", opts)
		}
		qemu(t, "qemu-img", append(args, p, size)...)
		if len(cmds) > 0 {
			qemuIO(t, p, cmds...)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	writes := []string{"write -P 0x61 0 1k", "write -P 0x62 1500 3000", "write -z 8k 4k", "write -P 0x63 60k 4k"}
	images := map[string][]byte{
		"512":            mk("512", "cluster_size=512", "64k", writes...),
		"512-v2":         mk("512-v2", "compat=0.10,cluster_size=512", "64k", writes...),
		"512-refcount8":  mk("512-refcount8", "cluster_size=512,refcount_bits=8", "64k", writes...),
		"512-refcount64": mk("512-refcount64", "cluster_size=512,refcount_bits=64", "64k", writes...),
		"4k":             mk("4k", "cluster_size=4096", "1M", writes[0], writes[2]),
		"512-backing":    mk("512-backing", "cluster_size=512,backing_file=base.raw,backing_fmt=raw", "64k", writes...),
		"512-prealloc":   mk("512-prealloc", "cluster_size=512,preallocation=metadata", "4k"),
		"64k":            mk("64k", "", "1G", writes...),
		"64k-lazy":       mk("64k-lazy", "lazy_refcounts=on", "1M"),
		"64k-zstd":       mk("64k-zstd", "compression_type=zstd", "1M"),
		"64k-el2":        mk("64k-el2", "extended_l2=on", "1M"),
	}
	// A snapshot, and data written after it.
	snap := filepath.Join(dir, "snap")
	mk("snap", "cluster_size=512", "32k", "write -P 0x71 0 4k")
	qemu(t, "qemu-img", "snapshot", "-c", "s1", snap)
	qemuIO(t, snap, "write -P 0x72 1k 1k")
	images["512-snapshot"], _ = os.ReadFile(snap)
	// Compressed clusters.
	raw := filepath.Join(dir, "src.raw")
	os.WriteFile(raw, patterned(rand.New(rand.NewPCG(11, 11)), 24<<10), 0o600)
	for _, cs := range []string{"512", "4096"} {
		c := filepath.Join(dir, "c"+cs)
		os.Truncate(raw, 8<<10)
		qemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size="+cs, raw, c)
		images["compressed-"+cs], _ = os.ReadFile(c)
	}
	// Create's own.
	own := filepath.Join(dir, "own")
	createImage(t, own, 64<<10, CreateOptions{ClusterBits: 9, BackingFile: "base.raw", BackingFormat: "raw"})
	im := openImage(t, own, false)
	im.WriteAt(bytes.Repeat([]byte{0x55}, 3000), 1000)
	im.Zero(8192, 4096, false)
	images["create-512"], _ = os.ReadFile(own)

	for name, b := range images {
		if len(b) == 0 {
			t.Fatalf("%s: empty", name)
		}
		_, err := ParseHeader(b[:min(len(b), 1024)])
		if refused := strings.HasSuffix(name, "zstd") || strings.HasSuffix(name, "el2"); (err != nil) != refused {
			t.Errorf("%s: ParseHeader: %v", name, err)
		}
		if !write {
			if _, err := os.Stat(filepath.Join("testdata", "fuzz", "FuzzParseHeader", name)); err != nil {
				t.Errorf("the committed corpus lacks %s (%v): rewrite it with %s=1", name, err, corpusEnv)
			}
			continue
		}
		// Headers: the first KiB (the extensions and backing file
		// name lie there).
		writeSeed(t, "FuzzParseHeader", name, b[:min(len(b), 1024)])
		// Images: whole, except those of 64 KiB clusters, which are
		// too large to keep (as text, four bytes a zero byte) and
		// whose headers the other fuzzer has.
		if !strings.HasPrefix(name, "64k") {
			writeSeed(t, "FuzzImage", name, b)
		}
	}
}

// writeSeed writes one seed corpus entry in the go test fuzz v1 format.
func writeSeed(t *testing.T, fuzzer, name string, b []byte) {
	dir := filepath.Join("testdata", "fuzz", fuzzer)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(entry), 0o644); err != nil {
		t.Fatal(err)
	}
}
