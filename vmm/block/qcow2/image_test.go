package qcow2

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// The tests here hold the package to QEMU's own tools: every image is
// compared, byte for byte, with an in-memory model of its virtual disk and
// with what `qemu-img convert` reads from it, and every image the package
// wrote must pass `qemu-img check` with no corruption and no leak.

// needQemu stops the test without qemu-img and qemu-io (qemu-utils).
func needQemu(t testing.TB) {
	t.Helper()
	testenv.NeedTool(t, "qemu-img", "qemu-utils")
	testenv.NeedTool(t, "qemu-io", "qemu-utils")
}

// qemu runs a qemu-utils tool and returns its output; failing fails the
// test, since every call here is expected to succeed.
func qemu(t testing.TB, tool string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkResult is what `qemu-img check --output=json` reports, with its
// exit status: 0 clean, 2 corruptions, 3 leaks only.
type checkResult struct {
	Exit        int
	Corruptions int `json:"corruptions"`
	Leaks       int `json:"leaks"`
	CheckErrors int `json:"check-errors"`
	Out         string
}

// qemuCheck runs qemu-img check on path.
func qemuCheck(t testing.TB, path string) checkResult {
	t.Helper()
	cmd := exec.Command("qemu-img", "check", "--output=json", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	r := checkResult{Out: string(out) + stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Exit = ee.ExitCode()
	case err != nil:
		t.Fatalf("qemu-img check %s: %v", path, err)
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("qemu-img check %s (exit %d): %v\n%s", path, r.Exit, err, r.Out)
	}
	return r
}

// mustCheckClean fails unless qemu-img check finds nothing at all wrong.
func mustCheckClean(t testing.TB, path string) {
	t.Helper()
	if r := qemuCheck(t, path); r.Exit != 0 || r.Corruptions+r.Leaks+r.CheckErrors != 0 {
		t.Fatalf("qemu-img check %s: exit %d, %d corruptions, %d leaks, %d errors\n%s",
			path, r.Exit, r.Corruptions, r.Leaks, r.CheckErrors, r.Out)
	}
}

// qemuRaw is the virtual disk of the image at path as QEMU reads it,
// backing chain included.
func qemuRaw(t testing.TB, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "converted.raw")
	qemu(t, "qemu-img", "convert", "-O", "raw", path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// qemuIO runs qemu-io commands on a qcow2 image in one invocation.
func qemuIO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	qemu(t, "qemu-io", append(args, path)...)
}

// qemuCreate makes a qcow2 image of size bytes with qemu-img create -o opts.
func qemuCreate(t testing.TB, path string, size int64, opts string) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	qemu(t, "qemu-img", append(args, path, strconv.FormatInt(size, 10))...)
}

// openFile opens path for Open: read-write unless ro.
func openFile(t testing.TB, path string, ro bool) *os.File {
	t.Helper()
	flag := os.O_RDWR
	if ro {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// backingIn opens backing files by name in dir, as a supervisor would
// hand them over: raw ones as RawBacking, qcow2 ones read-only with Open
// (recursively, so chains work).
func backingIn(t testing.TB, dir string) func(name, format string) (Backing, error) {
	var open func(name, format string) (Backing, error)
	open = func(name, format string) (Backing, error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { f.Close() })
		switch format {
		case "raw":
			return NewRawBacking(f)
		case "qcow2":
			return Open(f, Options{ReadOnly: true, Backing: open})
		}
		return nil, fmt.Errorf("backing format %q", format)
	}
	return open
}

// openImage opens the image at path; dir's files are its backing files.
func openImage(t testing.TB, path string, ro bool) *Image {
	t.Helper()
	im, err := Open(openFile(t, path, ro), Options{ReadOnly: ro, Backing: backingIn(t, filepath.Dir(path))})
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	return im
}

// readAll reads im's whole virtual disk in chunks of random sizes, so
// reads start and end everywhere in clusters and extents.
func readAll(t testing.TB, im *Image, rng *rand.Rand) []byte {
	t.Helper()
	out := make([]byte, im.Size())
	for off := int64(0); off < im.Size(); {
		n := min(im.Size()-off, 1+rng.Int64N(3*im.ClusterSize()))
		if k, err := im.ReadAt(out[off:off+n], off); err != nil || k != int(n) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, k, err)
		}
		off += n
	}
	return out
}

// sameBytes fails the test where got and want differ, naming the first
// differing byte rather than dumping megabytes.
func sameBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if bytes.Equal(got, want) {
		return
	}
	i, n := 0, 0
	for i < len(got) && got[i] == want[i] {
		i++
	}
	for k := i; k < len(got); k++ {
		if got[k] != want[k] {
			n++
		}
	}
	t.Fatalf("%s: %d bytes differ, the first at %d (%#x, want %#x)", what, n, i, got[i], want[i])
}

// randomBytes is n bytes from rng.
func randomBytes(rng *rand.Rand, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// randomSpan picks n bytes at off in a disk of size bytes, biased toward
// where qcow2 code has edges: cluster and L2-table boundaries, unaligned
// starts and ends, runs spanning several clusters.
func randomSpan(rng *rand.Rand, size, cs int64) (off, n int64) {
	switch rng.IntN(4) {
	case 0:
		n = 1 + rng.Int64N(cs)
	case 1:
		n = cs * (1 + rng.Int64N(3))
	case 2:
		n = 1 + rng.Int64N(4*cs)
	default:
		n = 512 * (1 + rng.Int64N(16))
	}
	n = min(n, size)
	l2Span := cs * cs / 8
	switch rng.IntN(4) {
	case 0: // straddle an L2 table boundary
		off = l2Span*(1+rng.Int64N(max(size/l2Span, 1))) - rng.Int64N(n+1)
	case 1: // straddle a cluster boundary
		off = cs*rng.Int64N(size/cs+1) - rng.Int64N(n+1)
	case 2:
		off = cs * rng.Int64N(size/cs+1)
	default:
		off = rng.Int64N(size)
	}
	return min(max(off, 0), size-n), n
}

// disk is an open image and a model of its virtual disk, so that every
// operation can be checked against plain byte slices.
type disk struct {
	im    *Image
	model []byte
	// base is what an unallocated cluster reads: the backing disk, cut or
	// zero-padded to the image's size; nil without a backing file.
	base []byte
}

// newDisk models im, whose disk holds model now.
func newDisk(im *Image, model, base []byte) *disk {
	return &disk{im: im, model: model, base: base}
}

func (d *disk) write(t testing.TB, off int64, p []byte) {
	t.Helper()
	if n, err := d.im.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
	copy(d.model[off:], p)
}

// zero calls Zero and updates the model with what Zero promises: zeros,
// except that a discard (mayDiscard) leaves partial clusters alone and, in
// a version 2 image, drops whole ones to the backing file.
func (d *disk) zero(t testing.TB, off, n int64, mayDiscard bool) {
	t.Helper()
	if err := d.im.Zero(off, n, mayDiscard); err != nil {
		t.Fatalf("Zero(%d bytes at %d, %v): %v", n, off, mayDiscard, err)
	}
	cs := d.im.ClusterSize()
	for end := off + n; off < end; {
		step := min(end-off, cs-off%cs)
		switch {
		case step < cs && mayDiscard:
		case step == cs && mayDiscard && d.im.Header().Version == 2 && d.base != nil:
			copy(d.model[off:off+step], d.base[off:])
		default:
			clear(d.model[off : off+step])
		}
		off += step
	}
}

func (d *disk) read(t testing.TB, off, n int64) {
	t.Helper()
	got := make([]byte, n)
	if k, err := d.im.ReadAt(got, off); err != nil || k != int(n) {
		t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, k, err)
	}
	sameBytes(t, fmt.Sprintf("read of %d bytes at %d", n, off), got, d.model[off:off+n])
}

// random runs ops random writes, zeroings, reads and flushes.
func (d *disk) random(t testing.TB, rng *rand.Rand, ops int) {
	t.Helper()
	size, cs := d.im.Size(), d.im.ClusterSize()
	for range ops {
		off, n := randomSpan(rng, size, cs)
		switch op := rng.IntN(20); {
		case op < 11:
			d.write(t, off, randomBytes(rng, n))
		case op < 13:
			d.zero(t, off, n, false)
		case op < 15:
			d.zero(t, off, n, true)
		case op < 19:
			d.read(t, off, n)
		default:
			if err := d.im.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// check compares the whole disk, as the package and as QEMU read it, with
// the model.
func (d *disk) check(t testing.TB, path string, rng *rand.Rand) {
	t.Helper()
	sameBytes(t, "Image read", readAll(t, d.im, rng), d.model)
	sameBytes(t, "qemu-img convert", qemuRaw(t, path), d.model)
}

// qioOp is a qemu-io write: pattern p (or zeros, p < 0) over n bytes at off.
type qioOp struct {
	p      int
	off, n int64
}

// TestReadQemuImages: images qemu-io wrote read back as QEMU reads them.
func TestReadQemuImages(t *testing.T) {
	needQemu(t)
	const size = 5<<20 + 3*512 // not a whole number of clusters
	ops := []qioOp{
		{0x11, 0, 4096}, {0x22, 1, 3}, {0x33, 4000, 200}, // unaligned, in one cluster
		{0x44, 65536 - 100, 300},        // spanning a 64 KiB boundary
		{0x55, 2<<20 - 5000, 10000},     // spanning a 4 KiB cluster's L2 table
		{0x66, 3 << 20, 1 << 20},        // many whole clusters
		{-1, 3<<20 + 4096, 8192},        // zeros over data
		{-1, 3<<20 + 70000, 100000},     // unaligned zeros over data
		{-1, 4 << 20, 128 << 10},        // zeros over nothing
		{0x77, size - 1000, 1000},       // the end of the disk
		{0x88, 3<<20 + 8000, 300},       // data into zeros
		{-1, 100, 50},                   // sub-sector zeros
		{0x99, 32768 - 1, 2},            // a 512 B cluster's L2 boundary
		{0xaa, 1<<20 + 511, 64<<10 + 2}, // odd everything
	}
	for _, tc := range []struct{ name, opts string }{
		{"64k", ""},
		{"4k", "cluster_size=4096"},
		{"512", "cluster_size=512"},
		{"v2-64k", "compat=0.10"},
		{"v2-4k", "compat=0.10,cluster_size=4096"},
		{"refcount8-4k", "cluster_size=4096,refcount_bits=8"},
		{"refcount32-512", "cluster_size=512,refcount_bits=32"},
		// Every L2 entry points to a cluster before anything is written.
		{"prealloc-4k", "cluster_size=4096,preallocation=metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.qcow2")
			qemuCreate(t, path, size, tc.opts)
			model := make([]byte, size)
			var cmds []string
			for _, op := range ops {
				if op.p < 0 {
					cmds = append(cmds, fmt.Sprintf("write -z %d %d", op.off, op.n))
					clear(model[op.off : op.off+op.n])
					continue
				}
				cmds = append(cmds, fmt.Sprintf("write -P %#x %d %d", op.p, op.off, op.n))
				for i := range op.n {
					model[op.off+i] = byte(op.p)
				}
			}
			qemuIO(t, path, cmds...)
			sameBytes(t, "qemu-img convert", qemuRaw(t, path), model)
			rng := rand.New(rand.NewPCG(1, uint64(len(tc.name))))
			sameBytes(t, "Image read", readAll(t, openImage(t, path, true), rng), model)
			// Then the package writes over what QEMU wrote: data, zero
			// clusters that keep their allocation, preallocated ones.
			d := newDisk(openImage(t, path, false), model, nil)
			d.random(t, rng, 400)
			mustCheckClean(t, path)
			d.check(t, path, rng)
		})
	}
}

// TestReadQemuOverlay: an overlay qemu-io wrote over a raw base reads the
// base where it has no clusters, zeros past the base's end.
func TestReadQemuOverlay(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(2, 2))
	base := randomBytes(rng, 1<<20+512)
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "overlay.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", "cluster_size=4096", path, "2M")
	model := make([]byte, 2<<20)
	copy(model, base)
	qemuIO(t, path, "write -P 0x5a 5000 10000", "write -z 40000 8192", "write -P 0xa5 1048000 4000")
	for i := range 10000 {
		model[5000+i] = 0x5a
	}
	clear(model[40000 : 40000+8192])
	for i := range 4000 {
		model[1048000+i] = 0xa5
	}
	sameBytes(t, "qemu-img convert", qemuRaw(t, path), model)
	sameBytes(t, "Image read", readAll(t, openImage(t, path, true), rng), model)
}

// TestWriteQemuImages: random writes and zeroings by the package into
// images qemu-img made, with clusters small enough that L2 tables fill
// and new refcount blocks are needed, leave images qemu-img check finds
// clean and QEMU reads as the model.
func TestWriteQemuImages(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct {
		name, opts string
		size       int64
		ops        int
		backing    string // "", "raw" or "qcow2" (see makeBase)
		cache      int64  // Options.L2CacheBytes
	}{
		{name: "512", opts: "cluster_size=512", size: 1<<20 + 512, ops: 3000},
		{name: "4k", opts: "cluster_size=4096", size: 6 << 20, ops: 1500},
		{name: "4k-refcount64", opts: "cluster_size=4096,refcount_bits=64", size: 6 << 20, ops: 1500},
		{name: "v2-512", opts: "compat=0.10,cluster_size=512", size: 1 << 20, ops: 3000},
		{name: "v2-4k", opts: "compat=0.10,cluster_size=4096", size: 6 << 20, ops: 1500},
		{name: "64k", size: 16 << 20, ops: 600},
		{name: "2M", opts: "cluster_size=2M", size: 12 << 20, ops: 60},
		// Four L2 tables cached of 32 or more: tables are dropped and
		// read again all the time.
		{name: "512-small-cache", opts: "cluster_size=512", size: 1 << 20, ops: 3000, cache: 1},
		// Discards in version 2 drop clusters to the backing file.
		{name: "v2-4k-raw", opts: "compat=0.10,cluster_size=4096", size: 3 << 20, ops: 1500, backing: "raw"},
		{name: "4k-qcow2", opts: "cluster_size=4096", size: 3 << 20, ops: 1500, backing: "qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "disk.qcow2")
			rng := rand.New(rand.NewPCG(3, uint64(tc.size)))
			model := make([]byte, tc.size)
			var base []byte
			opts := tc.opts
			if tc.backing != "" {
				base = make([]byte, tc.size)
				copy(base, makeBase(t, dir, tc.backing, rng))
				copy(model, base)
				opts += ",backing_file=base." + tc.backing + ",backing_fmt=" + tc.backing
			}
			qemuCreate(t, path, tc.size, strings.TrimPrefix(opts, ","))
			im, err := Open(openFile(t, path, false), Options{Backing: backingIn(t, dir), L2CacheBytes: tc.cache})
			if err != nil {
				t.Fatal(err)
			}
			d := newDisk(im, model, base)
			blocks := refBlocks(d.im)
			d.random(t, rng, tc.ops)
			if err := d.im.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.name == "512" || tc.name == "4k-refcount64" || tc.name == "512-small-cache" {
				if got := refBlocks(d.im); got <= blocks {
					t.Errorf("%d refcount blocks before, %d after: the test allocated none", blocks, got)
				}
			}
			mustCheckClean(t, path)
			d.check(t, path, rng)
			sameBytes(t, "reopened", readAll(t, openImage(t, path, true), rng), d.model)
		})
	}
}

// TestWriteAfterSnapshotDelete: once its snapshots are deleted an image
// is writable again; QEMU left the clusters the snapshot shared with
// refcount 1 and their COPIED flags set again, which the package relies
// on to write them in place.
func TestWriteAfterSnapshotDelete(t *testing.T) {
	needQemu(t)
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	qemuCreate(t, path, 1<<20, "cluster_size=4096")
	qemuIO(t, path, "write -P 0x11 0 512k")
	qemu(t, "qemu-img", "snapshot", "-c", "s1", path)
	qemuIO(t, path, "write -P 0x22 4096 8192")
	qemu(t, "qemu-img", "snapshot", "-d", "s1", path)
	rng := rand.New(rand.NewPCG(12, 12))
	d := newDisk(openImage(t, path, false), qemuRaw(t, path), nil)
	d.random(t, rng, 800)
	mustCheckClean(t, path)
	d.check(t, path, rng)
}

// refBlocks counts the refcount blocks im's table points to.
func refBlocks(im *Image) int {
	n := 0
	for _, e := range im.refTable {
		if e != 0 {
			n++
		}
	}
	return n
}

// createImage makes an image with Create at path.
func createImage(t testing.TB, path string, size int64, o CreateOptions) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Create(f, size, o); err != nil {
		t.Fatalf("Create: %v", err)
	}
}

// TestCreate: images Create makes, alone or over a raw or qcow2 backing
// file, then written by the package, are clean to qemu-img check, name
// their backing file to qemu-img info, and read as the model to QEMU and
// after a reopen.
func TestCreate(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct {
		name    string
		bits    uint32
		backing string // "", "raw" or "qcow2"
	}{
		{"64k", 0, ""},
		{"512", 9, ""},
		{"4k-raw", 12, "raw"},
		{"512-raw", 9, "raw"},
		{"4k-qcow2", 12, "qcow2"},
		{"64k-qcow2", 16, "qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 3<<20 + 512
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(4, uint64(tc.bits)))
			co := CreateOptions{ClusterBits: tc.bits}
			var base []byte
			if tc.backing != "" {
				// A smaller base: the overlay reads zeros past its end.
				base = make([]byte, size)
				copy(base, makeBase(t, dir, tc.backing, rng))
				co.BackingFile, co.BackingFormat = "base."+tc.backing, tc.backing
			}
			path := filepath.Join(dir, "disk.qcow2")
			createImage(t, path, size, co)
			mustCheckClean(t, path)
			model := make([]byte, size)
			copy(model, base)
			d := newDisk(openImage(t, path, false), model, base)
			sameBytes(t, "new image", readAll(t, d.im, rng), model)
			d.random(t, rng, 1500)
			mustCheckClean(t, path)
			d.check(t, path, rng)
			sameBytes(t, "reopened", readAll(t, openImage(t, path, true), rng), d.model)
			var info struct {
				Backing string `json:"backing-filename"`
				Format  string `json:"backing-filename-format"`
				Size    int64  `json:"virtual-size"`
			}
			if err := json.Unmarshal([]byte(qemu(t, "qemu-img", "info", "--output=json", path)), &info); err != nil {
				t.Fatal(err)
			}
			if info.Backing != co.BackingFile || info.Format != co.BackingFormat || info.Size != size {
				t.Errorf("qemu-img info: backing %q format %q size %d, want %q %q %d",
					info.Backing, info.Format, info.Size, co.BackingFile, co.BackingFormat, size)
			}
		})
	}
}

// makeBase writes a base image of random data, smaller than the overlays
// over it, into dir as base.<format> and returns its virtual disk. A
// qcow2 base is written by qemu-io, with holes and zeros.
func makeBase(t testing.TB, dir, format string, rng *rand.Rand) []byte {
	t.Helper()
	const size = 2<<20 + 4096
	data := randomBytes(rng, size)
	raw := filepath.Join(dir, "base.raw")
	if format == "raw" {
		if err := os.WriteFile(raw, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return data
	}
	path := filepath.Join(dir, "base.qcow2")
	qemuCreate(t, path, size, "cluster_size=4096")
	qemuIO(t, path, "write -P 0x3c 0 1M", "write -P 0xc3 1100000 700000", "write -z 200000 10000")
	clear(data)
	for i := range 1 << 20 {
		data[i] = 0x3c
	}
	for i := range 700000 {
		data[1100000+i] = 0xc3
	}
	clear(data[200000:210000])
	sameBytes(t, "qcow2 base", qemuRaw(t, path), data)
	return data
}

// patterned is data that compresses to various degrees: runs, text-like
// repetition, zeros, and random stretches that do not compress at all.
func patterned(rng *rand.Rand, n int) []byte {
	b := make([]byte, 0, n)
	for len(b) < n {
		k := 1 + rng.IntN(20000)
		switch rng.IntN(4) {
		case 0:
			b = append(b, bytes.Repeat([]byte{byte(rng.Uint32())}, k)...)
		case 1:
			b = append(b, bytes.Repeat([]byte(fmt.Sprintf("line %d of the disk\n", rng.IntN(100))), k/20+1)...)
		case 2:
			b = append(b, make([]byte, k)...)
		default:
			b = append(b, randomBytes(rng, int64(k))...)
		}
	}
	return b[:n]
}

// TestCompressed: images qemu-img convert -c compressed read as their
// source, and writes into compressed clusters (which must copy them out
// and drop their share of the host clusters they span) leave images that
// are clean and read right.
func TestCompressed(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct{ name, opts string }{
		{"64k", ""},
		{"4k", "cluster_size=4096"},
		{"512", "cluster_size=512"},
		{"v2-4k", "compat=0.10,cluster_size=4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 2<<20 + 1536 // the last cluster is partial
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(5, uint64(len(tc.opts))))
			raw := patterned(rng, size)
			rawPath, path := filepath.Join(dir, "src.raw"), filepath.Join(dir, "c.qcow2")
			if err := os.WriteFile(rawPath, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"convert", "-c", "-O", "qcow2"}
			if tc.opts != "" {
				args = append(args, "-o", tc.opts)
			}
			qemu(t, "qemu-img", append(args, rawPath, path)...)
			d := newDisk(openImage(t, path, false), raw, nil)
			if n := compressedClusters(t, d.im); n < 8 {
				t.Fatalf("only %d compressed clusters: the test proves little", n)
			}
			sameBytes(t, "Image read", readAll(t, d.im, rng), raw)
			cs := d.im.ClusterSize()
			for range 300 {
				off, n := randomSpan(rng, size, cs)
				switch rng.IntN(6) {
				case 0:
					d.zero(t, off, n, rng.IntN(2) == 0)
				case 1, 2:
					d.read(t, off, n)
				default:
					d.write(t, off, randomBytes(rng, min(n, cs/3)))
				}
			}
			mustCheckClean(t, path)
			d.check(t, path, rng)
		})
	}
}

// compressedClusters counts the compressed L2 entries of im.
func compressedClusters(t testing.TB, im *Image) int {
	t.Helper()
	n := 0
	im.mu.Lock()
	defer im.mu.Unlock()
	for off := int64(0); off < im.Size(); off += im.ClusterSize() {
		e, err := im.entry(off)
		if err != nil {
			t.Fatal(err)
		}
		if e&entryCompressed != 0 {
			n++
		}
	}
	return n
}

// patch rewrites bytes of the file at path.
func patch(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f := openFile(t, path, false)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TestOpenRefuses: images the package cannot serve, or not writably, are
// refused at Open with an error naming why, and the refused Open leaves
// the file as it was.
func TestOpenRefuses(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	// The images are made in the parent test: each case's make runs
	// before its subtest.
	fresh := func(name, opts string) string {
		p := filepath.Join(dir, name)
		qemuCreate(t, p, 1<<20, opts)
		return p
	}
	for _, tc := range []struct {
		name string
		// make returns the image's path.
		make     func() string
		ro       bool   // open read-only
		noBack   bool   // no Backing func
		want     string // in the error
		roWorks  bool   // a read-only Open succeeds
		sentinel error
	}{
		{name: "empty", make: func() string {
			p := filepath.Join(dir, "empty")
			os.WriteFile(p, nil, 0o600)
			return p
		}, want: "header truncated"},
		{name: "truncated header", make: func() string {
			p := fresh("th.qcow2", "")
			os.Truncate(p, 50)
			return p
		}, want: "header truncated"},
		{name: "truncated v3 header", make: func() string {
			p := fresh("tv3.qcow2", "")
			os.Truncate(p, 90)
			return p
		}, want: "version 3 header truncated"},
		{name: "truncated tables", make: func() string {
			p := fresh("tt.qcow2", "cluster_size=4096")
			os.Truncate(p, 4096+100)
			return p
		}, want: "beyond the end of the file"},
		{name: "truncated data", make: func() string {
			// 4 KiB clusters: the header, L1, refcount table and
			// block, the L2 table, then 16 data clusters; the last
			// one cut off, as by a copy that stopped.
			p := fresh("td.qcow2", "cluster_size=4096")
			qemuIO(t, p, "write -P 0x5a 0 64k")
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-4096)
			return p
		}, ro: true, want: "image truncated: a data cluster at 0x"},
		{name: "truncated L2 table", make: func() string {
			p := fresh("tl2.qcow2", "cluster_size=4096")
			qemuIO(t, p, "write -P 0x5a 0 4k")
			os.Truncate(p, 4*4096+100) // into the L2 table, after the refcount block
			return p
		}, want: "image truncated: an L2 table at 0x4000 does not lie within the file (16484 bytes)"},
		{name: "bad magic", make: func() string {
			p := fresh("magic.qcow2", "")
			patch(t, p, 0, []byte("QFI\xfa"))
			return p
		}, want: "bad magic", sentinel: ErrNotQcow2},
		{name: "raw file", make: func() string {
			p := filepath.Join(dir, "raw.img")
			os.WriteFile(p, make([]byte, 4096), 0o600)
			return p
		}, want: "bad magic", sentinel: ErrNotQcow2},
		{name: "version 4", make: func() string {
			p := fresh("v4.qcow2", "")
			patch(t, p, 4, be32(4))
			return p
		}, want: "version 4 not supported"},
		{name: "aes", make: func() string {
			// LUKS creation times its key derivation, and qemu-img
			// 7.2 fails now and then doing so: the old AES format is
			// made by qemu-img, LUKS's crypt method patched in.
			p := filepath.Join(dir, "aes.qcow2")
			qemu(t, "qemu-img", "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
				"-o", "encrypt.format=aes,encrypt.key-secret=sec0", p, "1M")
			return p
		}, want: "encrypted images are not supported (crypt method 1)"},
		{name: "luks", make: func() string {
			p := fresh("luks.qcow2", "")
			patch(t, p, 32, be32(2))
			return p
		}, want: "encrypted images are not supported (crypt method 2)"},
		{name: "unknown incompatible", make: func() string {
			p := fresh("incompat.qcow2", "")
			patch(t, p, 72, be64(1<<40))
			return p
		}, want: "unsupported incompatible features 0x10000000000"},
		{name: "extended l2", make: func() string {
			return fresh("el2.qcow2", "extended_l2=on")
		}, want: "extended L2 entries"},
		{name: "zstd", make: func() string {
			return fresh("zstd.qcow2", "compression_type=zstd")
		}, want: "zstd"},
		{name: "external data file", make: func() string {
			p := fresh("ext.qcow2", "")
			patch(t, p, 72, be64(IncompatExternalData))
			return p
		}, want: "external data file"},
		{name: "dirty", make: func() string {
			p := fresh("dirty.qcow2", "lazy_refcounts=on")
			patch(t, p, 72, be64(IncompatDirty))
			return p
		}, want: "dirty", roWorks: true},
		{name: "corrupt", make: func() string {
			p := fresh("corrupt.qcow2", "")
			patch(t, p, 72, be64(IncompatCorrupt))
			return p
		}, want: "marked corrupt", roWorks: true},
		{name: "refcount order 7", make: func() string {
			p := fresh("rc7.qcow2", "")
			patch(t, p, 96, be32(7))
			return p
		}, want: "128-bit refcounts"},
		{name: "cluster bits 30", make: func() string {
			p := fresh("cb.qcow2", "")
			patch(t, p, 20, be32(30))
			return p
		}, want: "cluster bits 30"},
		{name: "huge size", make: func() string {
			p := fresh("size.qcow2", "")
			patch(t, p, 24, be64(1<<50))
			return p
		}, want: "exceeds"},
		{name: "backing without Backing", make: func() string {
			os.WriteFile(filepath.Join(dir, "b.raw"), make([]byte, 1<<20), 0o600)
			p := filepath.Join(dir, "overlay.qcow2")
			qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw", p)
			return p
		}, noBack: true, want: `backing file "b.raw" but none was given`},
		{name: "backing that fails", make: func() string {
			p := filepath.Join(dir, "overlay2.qcow2")
			qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "missing.raw", "-F", "raw", "-u", p, "1M")
			return p
		}, want: `backing file "missing.raw"`},
		{name: "snapshot", make: func() string {
			p := fresh("snap.qcow2", "cluster_size=4096")
			qemuIO(t, p, "write -P 0x17 0 64k")
			qemu(t, "qemu-img", "snapshot", "-c", "s1", p)
			qemuIO(t, p, "write -P 0x71 4096 8192", "write -z 32768 4096")
			return p
		}, want: "1 internal snapshots", roWorks: true},
		{name: "read-only file is read-only", make: func() string {
			return fresh("rofile.qcow2", "")
		}, ro: true, want: ""},
	} {
		path := tc.make()
		t.Run(tc.name, func(t *testing.T) {
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			o := Options{Backing: backingIn(t, dir)}
			if tc.noBack {
				o.Backing = nil
			}
			im, err := Open(openFile(t, path, tc.ro), o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Open: %v", err)
			case tc.want == "":
				if _, err := im.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
					t.Errorf("write to an image on a read-only file: %v", err)
				}
				if err := im.Zero(0, 512, false); !errors.Is(err, ErrReadOnly) {
					t.Errorf("Zero on an image on a read-only file: %v", err)
				}
			case err == nil:
				t.Fatalf("Open succeeded, want an error with %q", tc.want)
			case !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "qcow2: "):
				t.Errorf("Open: %v, want an error with %q", err, tc.want)
			case tc.sentinel != nil && !errors.Is(err, tc.sentinel):
				t.Errorf("Open: %v, want errors.Is %v", err, tc.sentinel)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("the refused Open changed the file")
			}
			if tc.roWorks {
				im := openImage(t, path, true)
				sameBytes(t, "read-only", readAll(t, im, rand.New(rand.NewPCG(6, 6))), qemuRaw(t, path))
			}
		})
	}
}

// TestBounds: reads and writes outside the virtual disk are refused or
// read as zeros, never panic, and Create refuses what it cannot make.
func TestBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	createImage(t, path, 1<<20, CreateOptions{ClusterBits: 12})
	im := openImage(t, path, false)
	buf := make([]byte, 4096)
	for _, off := range []int64{-1, -4096, -1 << 62, 1<<20 - 4095, 1 << 20, 1 << 62} {
		if _, err := im.WriteAt(buf, off); err == nil {
			t.Errorf("WriteAt(4096 bytes at %d) succeeded", off)
		}
		if err := im.Zero(off, 4096, false); err == nil {
			t.Errorf("Zero(4096 bytes at %d) succeeded", off)
		}
		if _, err := im.ReadAt(buf, off); off < 0 && err == nil {
			t.Errorf("ReadAt(4096 bytes at %d) succeeded", off)
		}
	}
	if err := im.Zero(0, -1, false); err == nil {
		t.Error("Zero of -1 bytes succeeded")
	}
	// Past the end, reads of a backing file read zeros (see ReadAt).
	buf[0] = 1
	if n, err := im.ReadAt(buf, 1<<20-1); err != nil || n != len(buf) || buf[0] != 0 {
		t.Errorf("ReadAt across the end: %d, %v, %#x", n, err, buf[0])
	}
	for _, tc := range []struct {
		size int64
		o    CreateOptions
	}{
		{0, CreateOptions{}},
		{-1, CreateOptions{}},
		{MaxSize + 1, CreateOptions{}},
		{1 << 20, CreateOptions{ClusterBits: 8}},
		{1 << 20, CreateOptions{ClusterBits: 22}},
		{1 << 40, CreateOptions{ClusterBits: 9}},
		{1 << 20, CreateOptions{BackingFile: strings.Repeat("x", 2000)}},
		{1000, CreateOptions{}}, // QEMU would see 512 bytes
	} {
		f, err := os.Create(filepath.Join(t.TempDir(), "x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := Create(f, tc.size, tc.o); err == nil {
			t.Errorf("Create(%d, %+v) succeeded", tc.size, tc.o)
		}
		f.Close()
	}
}

// crashEnv makes the test binary the writer TestCrash kills: its value is
// the image's path, and crashSeedEnv seeds its writes.
const (
	crashEnv     = "HYPERROOT_QCOW2_CRASH_IMAGE"
	crashSeedEnv = "HYPERROOT_QCOW2_CRASH_SEED"
)

// TestCrash: a process writing an image, SIGKILLed at random moments,
// never leaves it corrupt. Leaked clusters (allocated and counted, not
// yet linked when the kill came) are harmless and only logged.
func TestCrash(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashWriter(t, path)
		return
	}
	needQemu(t)
	for _, tc := range []struct {
		name string
		make func(path string)
	}{
		// 64-bit refcounts: a refcount block per 2 MiB of file, so the
		// writer allocates them while it is killed.
		{"qemu-4k-refcount64", func(p string) { qemuCreate(t, p, 32<<20, "cluster_size=4096,refcount_bits=64") }},
		{"create-512", func(p string) { createImage(t, p, 2<<20, CreateOptions{ClusterBits: 9}) }},
		{"qemu-v2-4k", func(p string) { qemuCreate(t, p, 32<<20, "compat=0.10,cluster_size=4096") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.qcow2")
			tc.make(path)
			rng := rand.New(rand.NewPCG(7, uint64(len(tc.name))))
			leaks := 0
			for round := range 4 {
				crashRound(t, path, round, time.Duration(5+rng.IntN(60))*time.Millisecond)
				r := qemuCheck(t, path)
				t.Logf("round %d: qemu-img check exit %d, %d leaked clusters, %d corruptions", round, r.Exit, r.Leaks, r.Corruptions)
				if r.Exit != 0 && r.Exit != 3 || r.Corruptions != 0 || r.CheckErrors != 0 {
					t.Fatalf("qemu-img check after a kill: exit %d\n%s", r.Exit, r.Out)
				}
				// What is left must read without error.
				readAll(t, openImage(t, path, true), rng)
				// A writable open gives back the leaks at the end of
				// the file: all there are, but where a version 2
				// image's discard was killed between dropping an
				// entry and its cluster's count.
				im := openImage(t, path, false)
				after := qemuCheck(t, path)
				t.Logf("round %d: open gave back %d clusters; qemu-img check exit %d, %d leaked clusters", round, im.Reclaimed, after.Exit, after.Leaks)
				if after.Corruptions != 0 || after.CheckErrors != 0 || im.Reclaimed > r.Leaks ||
					after.Leaks != r.Leaks-im.Reclaimed || after.Leaks != 0 && !strings.Contains(tc.name, "v2") {
					t.Fatalf("after the reopen: gave back %d of %d leaks, qemu-img check exit %d\n%s", im.Reclaimed, r.Leaks, after.Exit, after.Out)
				}
				leaks += r.Leaks
			}
			t.Logf("%d leaked clusters in 4 kills", leaks)
		})
	}
}

// crashRound runs a writer on path and SIGKILLs it delay after it said it
// had opened the image.
func crashRound(t *testing.T, path string, round int, delay time.Duration) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path, crashSeedEnv+"="+strconv.Itoa(round))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "writing\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("writer said %q (%v)", line, err)
	}
	time.Sleep(delay)
	cmd.Process.Signal(syscall.SIGKILL)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the writer ended before it was killed: %v", err)
	}
}

// crashWriter is the killed process: it writes and zeroes at random until
// it dies, flushing now and then, and reports an error if any op fails.
func crashWriter(t *testing.T, path string) {
	seed, _ := strconv.Atoi(os.Getenv(crashSeedEnv))
	rng := rand.New(rand.NewPCG(8, uint64(seed)))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("writing\n")
	size, cs := im.Size(), im.ClusterSize()
	for {
		off, n := randomSpan(rng, size, cs)
		var err error
		switch op := rng.IntN(100); {
		case op < 3:
			err = im.Zero(off, n, op == 0)
		case op < 5:
			err = im.Flush()
		default:
			_, err = im.WriteAt(randomBytes(rng, n), off)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestAutoclear: a writable Open clears the autoclear features (here
// QEMU's persistent bitmaps, which the package would leave stale), so
// QEMU knows to distrust them; a read-only Open leaves the header alone.
func TestAutoclear(t *testing.T) {
	needQemu(t)
	path := filepath.Join(t.TempDir(), "bitmap.qcow2")
	qemuCreate(t, path, 1<<20, "")
	qemu(t, "qemu-img", "bitmap", "--add", path, "b0")
	qemuIO(t, path, "write -P 0x42 0 64k")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(before[88:]) == 0 {
		t.Fatal("qemu-img bitmap --add set no autoclear bit: the test proves nothing")
	}
	openImage(t, path, true)
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a read-only Open changed the file")
	}
	im := openImage(t, path, false)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(after[88:]) != 0 || im.Header().Autoclear != 0 {
		t.Errorf("autoclear %#x after a writable Open, want 0", binary.BigEndian.Uint64(after[88:]))
	}
	clear(after[88:96])
	clear(before[88:96])
	if !bytes.Equal(before, after) {
		t.Error("a writable Open changed more than the autoclear features")
	}
	// The bitmaps' clusters are now leaked, as QEMU says; nothing worse.
	if r := qemuCheck(t, path); r.Corruptions != 0 || r.Exit != 0 && r.Exit != 3 {
		t.Fatalf("qemu-img check: exit %d\n%s", r.Exit, r.Out)
	}
}

// TestConcurrent: reads run while another goroutine writes and zeroes
// other clusters under the same L2 tables, allocating tables and refcount
// blocks and evicting cached tables; every read sees what it should. Run
// with -race, this also checks the locking.
func TestConcurrent(t *testing.T) {
	const size = 1 << 20
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(9, 9))
	base := randomBytes(rng, size)
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "disk.qcow2")
	createImage(t, path, size, CreateOptions{ClusterBits: 9, BackingFile: "base.raw", BackingFormat: "raw"})
	im, err := Open(openFile(t, path, false), Options{Backing: backingIn(t, dir), L2CacheBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := newDisk(im, bytes.Clone(base), base)
	const cs = 512
	// The readers' clusters (odd ones): some written, some zero, some
	// left to the backing file.
	for c := int64(1); c < size/cs; c += 2 {
		switch c % 7 {
		case 1, 3:
			d.write(t, c*cs, randomBytes(rng, cs))
		case 5:
			d.zero(t, c*cs, cs, false)
		}
	}
	stop := make(chan struct{})
	errs := make(chan error, 3)
	for r := range 2 {
		go func() {
			rng := rand.New(rand.NewPCG(10, uint64(r)))
			buf := make([]byte, cs)
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				c := 1 + 2*rng.Int64N(size/cs/2)
				in := rng.Int64N(cs)
				n := 1 + rng.Int64N(cs-in)
				if _, err := im.ReadAt(buf[:n], c*cs+in); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], d.model[c*cs+in:c*cs+in+n]) {
					errs <- fmt.Errorf("read of cluster %d at %d: not what it holds", c, in)
					return
				}
			}
		}()
	}
	// The writer's clusters are the even ones, one at a time (the model
	// is not locked: the readers only read the odd ones).
	for range 3000 {
		c := 2 * rng.Int64N(size/cs/2)
		in := rng.Int64N(cs)
		n := 1 + rng.Int64N(cs-in)
		switch rng.IntN(5) {
		case 0:
			d.zero(t, c*cs, cs, rng.IntN(2) == 0)
		default:
			d.write(t, c*cs+in, randomBytes(rng, n))
		}
	}
	close(stop)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	sameBytes(t, "Image read", readAll(t, im, rng), d.model)
}

// TestRefcountBlockInNextRange: when the cluster to count is the last of
// a refcount block's range and that range has no block yet, the new block
// falls in the next range, and the next range's block (new as well)
// counts it. The image starts with unused space up to that cluster, as a
// file extended by a crash of QEMU's may.
func TestRefcountBlockInNextRange(t *testing.T) {
	needQemu(t)
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	qemuCreate(t, path, 1<<20, "cluster_size=512")
	const perBlock = 512 / 2 // 16-bit refcounts
	if err := os.Truncate(path, (2*perBlock-1)*512); err != nil {
		t.Fatal(err)
	}
	mustCheckClean(t, path)
	d := newDisk(openImage(t, path, false), make([]byte, 1<<20), nil)
	// Its L2 table first (cluster 2*perBlock-1), then its data.
	d.write(t, 0, bytes.Repeat([]byte{0xee}, 512))
	if got := refBlocks(d.im); got != 3 {
		t.Errorf("%d refcount blocks, want 3", got)
	}
	if b := int64(d.im.refTable[1]); b != 2*perBlock*512 {
		t.Errorf("range 1's block at %#x, want the first cluster of range 2 (%#x)", b, 2*perBlock*512)
	}
	mustCheckClean(t, path)
	d.random(t, rand.New(rand.NewPCG(13, 13)), 500)
	mustCheckClean(t, path)
	d.check(t, path, rand.New(rand.NewPCG(13, 14)))
}

// TestRefcountTableFull: a qemu-img image's refcount table is one cluster,
// which with 512-byte clusters counts 8 MiB of file, and the package does
// not grow it. Writes past that fail with an error saying so, and leave
// an image QEMU finds clean.
func TestRefcountTableFull(t *testing.T) {
	needQemu(t)
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	qemuCreate(t, path, 16<<20, "cluster_size=512")
	d := newDisk(openImage(t, path, false), make([]byte, 16<<20), nil)
	data := bytes.Repeat([]byte{0x77}, 64<<10)
	var err error
	for off := int64(0); off < 16<<20; off += int64(len(data)) {
		var n int
		if n, err = d.im.WriteAt(data, off); err != nil {
			copy(d.model[off:], data[:n])
			break
		}
		copy(d.model[off:], data)
	}
	if err == nil || !strings.Contains(err.Error(), "growing it is not supported") {
		t.Fatalf("writing 16 MiB through an 8 MiB refcount table: %v", err)
	}
	mustCheckClean(t, path)
	d.check(t, path, rand.New(rand.NewPCG(14, 14)))
}

// TestParseHeader: headers broken in one field each are refused with an
// error naming it; the unbroken one parses.
func TestParseHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	createImage(t, path, 1<<30, CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"})
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	good = good[:4096]
	h, err := ParseHeader(good)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != 3 || h.Size != 1<<30 || h.ClusterBits != 16 || h.BackingFile != "base.qcow2" || h.BackingFormat != "qcow2" || h.RefcountOrder != 4 || h.HeaderLength != 112 {
		t.Fatalf("parsed %+v", h)
	}
	nameAt := int64(binary.BigEndian.Uint64(good[8:]))
	for _, tc := range []struct {
		name string
		off  int64
		b    []byte
		want string
	}{
		{"header length not a multiple of 8", 100, be32(108), "header length 108 invalid"},
		{"header length short", 100, be32(96), "header length 96 invalid"},
		{"header length past the data", 100, be32(8192), "header length 8192 invalid"},
		{"extension past the cluster", 112 + 4, be32(60000), "runs past the first cluster"},
		{"backing name past the cluster", 8, be64(65000), "outside the first cluster"},
		{"backing name running into zeros", 16, be32(1000), "NUL"},
		{"backing name too long", 16, be32(2000), "outside the first cluster"},
		{"backing name with a NUL", nameAt + 2, []byte{0}, "NUL"},
		{"L1 too small", 36, be32(1), "cannot map"},
		{"L1 unaligned", 40, be64(0x30001), "L1 table offset"},
		{"L1 too large", 36, be32(maxL1Bytes/8 + 1), "too large"},
		{"no refcount table", 56, be32(0), "refcount table"},
		{"refcount table unaligned", 48, be64(0x10200), "refcount table"},
		{"refcount table too large", 56, be32(1000), "refcount table"},
		{"refcount order 2", 96, be32(2), "4-bit refcounts"},
		{"cluster bits 8", 20, be32(8), "cluster bits 8"},
		{"zstd", 72, be64(IncompatCompression), ""}, // type 0 (deflate) is fine
	} {
		b := bytes.Clone(good)
		copy(b[tc.off:], tc.b)
		_, err := ParseHeader(b)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	b := bytes.Clone(good)
	copy(b[72:], be64(IncompatCompression))
	b[104] = 1
	if _, err := ParseHeader(b); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("zstd compression type: %v", err)
	}
	for n := range 104 {
		if _, err := ParseHeader(good[:n]); err == nil {
			t.Errorf("a header cut to %d bytes parsed", n)
		}
	}
}

// TestZeroKeepsCluster: in a version 3 image, zeroing a cluster of its
// own keeps the host cluster (as a zero cluster, its space punched out)
// and a later write reuses it in place: a guest that discards and writes
// again does not grow the file.
func TestZeroKeepsCluster(t *testing.T) {
	needQemu(t)
	const size = 1 << 20
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	createImage(t, path, size, CreateOptions{ClusterBits: 12})
	rng := rand.New(rand.NewPCG(15, 15))
	d := newDisk(openImage(t, path, false), make([]byte, size), nil)
	d.write(t, 0, randomBytes(rng, size))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d.zero(t, 0, size, i%2 == 0)
		mustCheckClean(t, path)
		d.check(t, path, rng)
		for range 200 {
			off, n := randomSpan(rng, size, 4096)
			d.write(t, off, randomBytes(rng, n))
		}
		d.write(t, 0, randomBytes(rng, size/2))
	}
	mustCheckClean(t, path)
	d.check(t, path, rng)
	if st2, err := os.Stat(path); err != nil || st2.Size() != st.Size() {
		t.Errorf("the file grew from %d to %d bytes (%v)", st.Size(), st2.Size(), err)
	}
}

// TestReclaimTail: clusters counted but never linked (a writer killed
// between the two) are leaks QEMU reports; a writable Open gives them
// back and cuts the file, a read-only one leaves the file alone, and
// data written before stays.
func TestReclaimTail(t *testing.T) {
	needQemu(t)
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	qemuCreate(t, path, 8<<20, "cluster_size=4096")
	im := openImage(t, path, false)
	want := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := im.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	// A write killed after the count: three clusters, as a new L2 table,
	// its data and a second data cluster would be.
	im.mu.Lock()
	for range 3 {
		host := im.alloc()
		if err := pwriteFull(im.fd, want, host); err != nil {
			t.Fatal(err)
		}
		if err := im.setRefcount(host, 1); err != nil {
			t.Fatal(err)
		}
	}
	im.mu.Unlock()
	im.f.Close()
	if r := qemuCheck(t, path); r.Leaks != 3 || r.Corruptions != 0 {
		t.Fatalf("qemu-img check of the made-up leak: exit %d, %d leaks\n%s", r.Exit, r.Leaks, r.Out)
	}
	st, _ := os.Stat(path)
	before, _ := os.ReadFile(path)
	if ro := openImage(t, path, true); ro.Reclaimed != 0 {
		t.Errorf("a read-only open gave back %d clusters", ro.Reclaimed)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a read-only open changed the file")
	}
	im = openImage(t, path, false)
	if im.Reclaimed != 3 {
		t.Errorf("writable open gave back %d clusters, want 3", im.Reclaimed)
	}
	got := make([]byte, 4096)
	if _, err := im.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, want) {
		t.Errorf("data written before the leak: %v, equal %v", err, bytes.Equal(got, want))
	}
	im.f.Close()
	if r := qemuCheck(t, path); r.Exit != 0 {
		t.Fatalf("qemu-img check after the reopen: exit %d\n%s", r.Exit, r.Out)
	}
	if st2, _ := os.Stat(path); st2.Size() != st.Size()-3*4096 {
		t.Errorf("file is %d bytes, want the leaked clusters cut off: %d", st2.Size(), st.Size()-3*4096)
	}
}

// TestOpenCutWritable: a writable image whose last data cluster lies past
// the end of its file (a writer that crashed before the file system made
// the cluster durable; the guest was never told it was flushed) opens:
// the cluster reads as zeros, and what is written next is allocated past
// it.
func TestOpenCutWritable(t *testing.T) {
	needQemu(t)
	p := filepath.Join(t.TempDir(), "cut.qcow2")
	qemuCreate(t, p, 1<<20, "cluster_size=4096")
	qemuIO(t, p, "write -P 0x5a 0 64k")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, st.Size()-4096); err != nil {
		t.Fatal(err)
	}
	im := openImage(t, p, false)
	got := make([]byte, 64<<10)
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x5a}, 64<<10)
	clear(want[60<<10:])
	if !bytes.Equal(got, want) {
		t.Errorf("the cut cluster does not read as zeros, or the others changed")
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{7}, 4096), 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ReadAt(got[:4096], 60<<10); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Errorf("the new cluster was allocated over the cut one: %v", err)
	}
}
