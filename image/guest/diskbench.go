package main

// The disk-bench action: what the appliance's disk benchmark
// (hyperroot-bench disk, tools/bench) asks of the guest. It measures /dev/vda from
// inside the guest, the way a user's workload sees it, with O_DIRECT so
// that the guest's page cache never answers in the device's place:
//
//	seqwrite   1 MiB sequential writes, one job, wrapping over the disk
//	randwrite  4 KiB writes at random aligned offsets, <jobs> goroutines,
//	           once per queue depth asked for
//	randread   4 KiB reads at random aligned offsets, the same way
//	seqread    1 MiB sequential reads, one job
//
// each for a fixed time, and prints one line per test that the host
// parses: "guest: diskbench randread iops=1234 qd=4 p50us=812 p99us=3400
// ..." (the random tests time every request: the median and the 99th
// percentile of their latencies) or "guest: diskbench seqwrite mibps=56.7
// ...". Each goroutine does synchronous pread/pwrite, so <jobs> is the
// queue depth the device sees.
//
// A benchmark of a disk that loses or misplaces data would be a lie, so
// every 4 KiB block written carries a stamp (the run's seed and the
// block's own offset) followed by a fixed body; the reads check the stamp
// of every block they get, and a last pass compares a sample of whole
// blocks. Any mismatch fails the action, which crashes the guest.
//
// Options come from the guest's kernel command line:
// hyperroot.diskbench=time=8s,jobs=1:4:32 (both optional; jobs is one
// queue depth or several, colon-separated).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	benchBlock   = 4096    // the random tests' request size, and the stamp unit
	benchChunk   = 1 << 20 // the sequential tests' request size
	stampLen     = 16      // magic^seed, then the block's byte offset
	stampMagic   = 0x6879706572726f6f
	verifyBlocks = 256 // whole blocks compared after the timed tests
)

// benchOptions is what hyperroot.diskbench= asks for; the zero value means
// the defaults.
type benchOptions struct {
	Time time.Duration // per test; default 8s
	Jobs []int         // the random tests' queue depths (concurrent jobs), each run in turn; default 4
	Dev  string        // the disk; default /dev/vda
}

// parseBenchOptions reads hyperroot.diskbench's value:
// comma-separated time=<duration>, jobs=<n> and dev=<a /dev/vd* or
// /dev/nvme* disk>, all optional.
func parseBenchOptions(s string) (benchOptions, error) {
	o := benchOptions{Time: 8 * time.Second, Jobs: []int{4}, Dev: "/dev/vda"}
	if s == "" {
		return o, nil
	}
	for _, f := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "time":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > time.Hour {
				return o, fmt.Errorf("time %q: want a duration such as 8s, at most 1h", v)
			}
			o.Time = d
		case "jobs":
			o.Jobs = nil
			for _, q := range strings.Split(v, ":") {
				n, err := strconv.Atoi(q)
				if err != nil || n < 1 || n > 256 || len(o.Jobs) == maxDepths {
					return o, fmt.Errorf("jobs %q: want 1 to %d queue depths of 1 to 256, colon-separated", v, maxDepths)
				}
				o.Jobs = append(o.Jobs, n)
			}
		case "dev":
			if !benchDevRE.MatchString(v) {
				return o, fmt.Errorf("dev %q: want a disk such as /dev/vda or /dev/nvme0n1", v)
			}
			o.Dev = v
		default:
			return o, fmt.Errorf("unknown option %q (options: time, jobs, dev)", f)
		}
	}
	return o, nil
}

// maxDepths bounds the queue depths one run measures.
const maxDepths = 8

// cmdlineValue returns the value of key=value on the kernel command line.
func cmdlineValue(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	v := ""
	for _, f := range strings.Fields(string(b)) {
		if s, ok := strings.CutPrefix(f, key+"="); ok {
			v = s
		}
	}
	return v
}

var benchDevRE = regexp.MustCompile(`^/dev/(vd[a-z]|nvme[0-9]+n[0-9]+)$`)

// diskBenchAction runs the benchmark on /dev/vda, or the disk dev= names.
func diskBenchAction(seed uint64) error {
	o, err := parseBenchOptions(cmdlineValue("hyperroot.diskbench"))
	if err != nil {
		return fmt.Errorf("hyperroot.diskbench: %w", err)
	}
	f, size, err := openDirectDev(o.Dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if seed == 0 {
		// A fresh seed per run, so that stale blocks of an earlier run
		// on the same image do not pass for this run's writes.
		seed = uint64(time.Now().UnixNano())
	}
	d, err := newBenchDisk(int(f.Fd()), size, seed)
	if err != nil {
		return err
	}
	fmt.Printf("guest: diskbench start dev=%s size=%d time=%s jobs=%s\n", o.Dev, size, o.Time, depths(o.Jobs))
	return d.run(o)
}

// benchDisk is the device under test and what the run knows about it.
type benchDisk struct {
	fd      int
	area    int64  // the bytes the tests use: the device size in whole MiB
	covered int64  // the prefix of area written by this run (and so stamped)
	magic   uint64 // stampMagic ^ seed
	seed    uint64
	block   []byte    // a block's content after its stamp
	irq0    irqCounts // the interrupts when the current test began
}

func newBenchDisk(fd int, size int64, seed uint64) (*benchDisk, error) {
	area := size / benchChunk * benchChunk
	if area < benchChunk {
		return nil, fmt.Errorf("disk of %d bytes is smaller than 1 MiB", size)
	}
	body := make([]byte, benchBlock-stampLen)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(body)
	return &benchDisk{fd: fd, area: area, magic: stampMagic ^ seed, seed: seed, block: body}, nil
}

// fill makes buf (whole blocks) hold the body of every block; stamp then
// only has to write each block's 16-byte header.
func (d *benchDisk) fill(buf []byte) {
	for i := 0; i < len(buf); i += benchBlock {
		copy(buf[i+stampLen:i+benchBlock], d.block)
	}
}

// stamp writes the header of every block in buf, which is to be written
// at byte offset off.
func (d *benchDisk) stamp(buf []byte, off int64) {
	for i := 0; i < len(buf); i += benchBlock {
		binary.LittleEndian.PutUint64(buf[i:], d.magic)
		binary.LittleEndian.PutUint64(buf[i+8:], uint64(off)+uint64(i))
	}
}

// checkStamps checks the header of every block in buf, read at offset off.
func (d *benchDisk) checkStamps(buf []byte, off int64) error {
	for i := 0; i < len(buf); i += benchBlock {
		m := binary.LittleEndian.Uint64(buf[i:])
		o := binary.LittleEndian.Uint64(buf[i+8:])
		if m != d.magic || o != uint64(off)+uint64(i) {
			return fmt.Errorf("block at %d: stamp (%#x, %d) is not what this run wrote there (%#x, %d)",
				off+int64(i), m, o, d.magic, off+int64(i))
		}
	}
	return nil
}

// checkBlock compares a whole block read at off with what was written.
func (d *benchDisk) checkBlock(buf []byte, off int64) error {
	if err := d.checkStamps(buf[:benchBlock], off); err != nil {
		return err
	}
	if !bytes.Equal(buf[stampLen:benchBlock], d.block) {
		return fmt.Errorf("block at %d: stamp right but data differs from what was written", off)
	}
	return nil
}

// depths prints queue depths as the option takes them.
func depths(qds []int) string {
	s := make([]string, len(qds))
	for i, q := range qds {
		s[i] = strconv.Itoa(q)
	}
	return strings.Join(s, ":")
}

// result is one timed test's outcome.
type result struct {
	ops     int64
	elapsed time.Duration
	lat     []time.Duration // each request's latency, when timed asked for them (up to latCap per job)
}

func (r result) perSecond() float64 { return float64(r.ops) / r.elapsed.Seconds() }

// latCap bounds the latencies one job keeps: at the nested test bed's
// rates (thousands of requests a second in all) a job does far fewer in a
// test; a faster disk keeps its first latCap, still plenty for a 99th
// percentile.
const latCap = 1 << 15

// percentile is the p-th percentile (0 < p < 100) of the latencies, 0
// without any.
func (r result) percentile(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := slices.Clone(r.lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p/100))]
}

// timed runs jobs goroutines calling op (with their own aligned buffer of
// bufSize bytes and random source) until d has passed, and counts the
// operations done, timing each when lat is set. The first error stops
// everything and is returned.
func timed(jobs, bufSize int, dur time.Duration, seed uint64, lat bool, op func(buf []byte, rng *rand.Rand, i int64) error) (result, error) {
	// A P for every job, as fio's psync jobs are threads of their own: with
	// the guest's one P, a job's pread left it in a system call until the
	// runtime's monitor took it back (20 µs to 10 ms, its period growing
	// while the guest idles), and only then could the next job submit or a
	// completed one run. Those waits, not the device, made hyperroot's p99
	// at queue depth 4 20-26 ms (2026-12-07; QEMU's 7-8 ms): with a P per
	// job 3.2-3.7 ms (QEMU's 6.5-8.8).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(jobs + 1))
	var stop atomic.Bool
	counts := make([]int64, jobs)
	errs := make([]error, jobs)
	lats := make([][]time.Duration, jobs)
	bufs := make([][]byte, jobs)
	for j := range bufs {
		b, err := alignedBuf(bufSize)
		if err != nil {
			return result{}, fmt.Errorf("buffer: %w", err)
		}
		defer unix.Munmap(b)
		bufs[j] = b
	}
	var wg sync.WaitGroup
	start := time.Now()
	for j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(j)))
			var l []time.Duration
			if lat {
				l = make([]time.Duration, 0, latCap)
			}
			var n int64
			for !stop.Load() {
				t0 := time.Now()
				if err := op(bufs[j], rng, n); err != nil {
					errs[j] = err
					stop.Store(true)
					break
				}
				if len(l) < cap(l) {
					l = append(l, time.Since(t0))
				}
				n++
			}
			counts[j], lats[j] = n, l
		}()
	}
	t := time.AfterFunc(dur, func() { stop.Store(true) })
	wg.Wait()
	t.Stop()
	r := result{elapsed: time.Since(start)}
	for j, n := range counts {
		r.ops += n
		r.lat = append(r.lat, lats[j]...)
	}
	return r, errors.Join(errs...)
}

// rw does one whole pread or pwrite: a short transfer is an error, since
// the device has whole blocks.
func rw(write bool, fd int, buf []byte, off int64) error {
	var n int
	var err error
	if write {
		n, err = unix.Pwrite(fd, buf, off)
	} else {
		n, err = unix.Pread(fd, buf, off)
	}
	op := "read"
	if write {
		op = "write"
	}
	if err != nil {
		return fmt.Errorf("%s %d bytes at %d: %w", op, len(buf), off, err)
	}
	if n != len(buf) {
		return fmt.Errorf("%s %d bytes at %d: short transfer of %d", op, len(buf), off, n)
	}
	return nil
}

func (d *benchDisk) run(o benchOptions) error {
	// seqwrite: also the write pass that the later tests check against.
	var written atomic.Int64
	d.begin("seqwrite", 1)
	r, err := timed(1, benchChunk, o.Time, d.seed, false, func(buf []byte, _ *rand.Rand, i int64) error {
		if i == 0 {
			d.fill(buf)
		}
		off := i * benchChunk % d.area
		d.stamp(buf, off)
		if err := rw(true, d.fd, buf, off); err != nil {
			return err
		}
		written.Store(min(d.area, (i+1)*benchChunk))
		return nil
	})
	if err != nil {
		return fmt.Errorf("seqwrite: %w", err)
	}
	d.covered = written.Load()
	if d.covered == 0 {
		return errors.New("seqwrite: no write completed")
	}
	if err := unix.Fsync(d.fd); err != nil {
		return fmt.Errorf("flush after seqwrite: %w", err)
	}
	d.report("seqwrite", r, benchChunk, 1)

	blocks := d.covered / benchBlock
	for _, qd := range o.Jobs {
		d.begin("randwrite", qd)
		r, err = timed(qd, benchBlock, o.Time, d.seed+1, true, func(buf []byte, rng *rand.Rand, i int64) error {
			if i == 0 {
				d.fill(buf)
			}
			off := rng.Int64N(blocks) * benchBlock
			d.stamp(buf, off)
			return rw(true, d.fd, buf, off)
		})
		if err != nil {
			return fmt.Errorf("randwrite at QD%d: %w", qd, err)
		}
		if err := unix.Fsync(d.fd); err != nil {
			return fmt.Errorf("flush after randwrite: %w", err)
		}
		d.report("randwrite", r, benchBlock, qd)
	}

	for _, qd := range o.Jobs {
		d.begin("randread", qd)
		r, err = timed(qd, benchBlock, o.Time, d.seed+2, true, func(buf []byte, rng *rand.Rand, _ int64) error {
			off := rng.Int64N(blocks) * benchBlock
			if err := rw(false, d.fd, buf, off); err != nil {
				return err
			}
			return d.checkStamps(buf, off)
		})
		if err != nil {
			return fmt.Errorf("randread at QD%d: %w", qd, err)
		}
		d.report("randread", r, benchBlock, qd)
	}

	chunks := d.covered / benchChunk
	d.begin("seqread", 1)
	r, err = timed(1, benchChunk, o.Time, d.seed+3, false, func(buf []byte, _ *rand.Rand, i int64) error {
		off := i % chunks * benchChunk
		if err := rw(false, d.fd, buf, off); err != nil {
			return err
		}
		return d.checkStamps(buf, off)
	})
	if err != nil {
		return fmt.Errorf("seqread: %w", err)
	}
	d.report("seqread", r, benchChunk, 1)
	return d.verify()
}

// verify compares whole blocks, the first and last written and a random
// sample between, with what the run wrote.
func (d *benchDisk) verify() error {
	buf, err := alignedBuf(benchBlock)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	blocks := d.covered / benchBlock
	rng := rand.New(rand.NewPCG(d.seed, 4))
	for i := range verifyBlocks {
		var off int64
		switch i {
		case 0:
		case 1:
			off = (blocks - 1) * benchBlock
		default:
			off = rng.Int64N(blocks) * benchBlock
		}
		if err := rw(false, d.fd, buf, off); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if err := d.checkBlock(buf, off); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
	}
	fmt.Printf("guest: diskbench verify ok blocks=%d covered-mib=%d\n", verifyBlocks, d.covered>>20)
	return nil
}

// begin says a timed test is about to start (the benchmark opens its CPU
// window on this line) and notes the interrupts so far.
func (d *benchDisk) begin(test string, qd int) {
	fmt.Printf("guest: diskbench begin %s qd=%d\n", test, qd)
	d.irq0 = readIRQs()
}

// report prints a test's line: IOPS, the queue depth and the latencies'
// median and 99th percentile for the 4 KiB tests, MiB/s for the 1 MiB
// ones; then the guest's interrupts per thousand requests by source.
func (d *benchDisk) report(test string, r result, size, jobs int) {
	defer func() {
		if l := irqSplit(d.irq0, readIRQs(), float64(r.ops)/1000, irqSources); l != "" {
			fmt.Printf("guest: diskbench irq %s qd=%d per_1000req %s\n", test, jobs, l)
		}
	}()
	if size == benchBlock {
		fmt.Printf("guest: diskbench %s iops=%.0f qd=%d p50us=%d p99us=%d ops=%d seconds=%.2f jobs=%d\n",
			test, r.perSecond(), jobs, r.percentile(50).Microseconds(), r.percentile(99).Microseconds(),
			r.ops, r.elapsed.Seconds(), jobs)
		return
	}
	fmt.Printf("guest: diskbench %s mibps=%.1f ops=%d seconds=%.2f jobs=%d\n",
		test, r.perSecond()*float64(size)/(1<<20), r.ops, r.elapsed.Seconds(), jobs)
}
