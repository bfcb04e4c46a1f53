package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
)

func TestParseDiskBenchLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []diskValue
	}{
		{"guest: diskbench randread iops=1234 qd=4 p50us=812 p99us=3400 ops=9872 seconds=8.00 jobs=4",
			[]diskValue{{"randread-qd4", 1234}, {"randread-qd4-p50", 812}, {"randread-qd4-p99", 3400}}},
		{"guest: diskbench randwrite iops=0 qd=32 p50us=0 p99us=0", []diskValue{{"randwrite-qd32", 0}, {"randwrite-qd32-p50", 0}, {"randwrite-qd32-p99", 0}}},
		{"guest: diskbench seqwrite mibps=56.7 ops=453", []diskValue{{"seqwrite", 56.7}}},
		{"guest: diskbench seqread mibps=1e3", []diskValue{{"seqread", 1000}}},
		{"bench| [  3.1] guest: diskbench seqread mibps=12.5\r", []diskValue{{"seqread", 12.5}}}, // prefixed, CR
		{"guest: diskbench randread iops=1234 ops=9872 seconds=8.00 jobs=4", nil},                // no qd, no latencies (an old guest)
		{"guest: diskbench randread iops=12 qd=8 p50us=1 p99us=2", nil},                          // a depth not asked for
		{"guest: diskbench randread iops=12 qd=4.5 p50us=1 p99us=2", nil},
		{"guest: diskbench randread iops=12 qd=4 p50us=-1 p99us=2", nil},
		{"guest: diskbench randread iops=12 qd=4 p50us=1 p99us=NaN", nil},
		{"guest: diskbench randread qd=4 iops=12 p50us=1 p99us=2", nil}, // the figure not first
		{"guest: diskbench randread mibps=12", nil},                     // wrong unit
		{"guest: diskbench seqread iops=12", nil},
		{"guest: diskbench seqread mibps=-1", nil},
		{"guest: diskbench seqread mibps=+Inf", nil},
		{"guest: diskbench seqread mibps=1e999", nil},
		{"guest: diskbench seqread mibps=", nil},
		{"guest: diskbench randread", nil},
		{"guest: diskbench trim iops=5", nil},
		{"guest: diskbench start dev=/dev/vda size=268435456", nil},
		{"guest: diskbench verify ok blocks=256", nil},
		{"guest: iops vda serial=x 1000", nil},
		{"", nil},
	} {
		if got := parseDiskBenchLine(tc.line); !slices.Equal(got, tc.want) {
			t.Errorf("parseDiskBenchLine(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

// FuzzParseDiskBenchLine: guest output never panics the parser, and what
// it accepts are known figures with usable values.
func FuzzParseDiskBenchLine(f *testing.F) {
	f.Add("guest: diskbench randread iops=1234 qd=4 p50us=812 p99us=3400 ops=9872 seconds=8.00 jobs=4")
	f.Add("guest: diskbench randread iops=1234 ops=9872 seconds=8.00 jobs=4")
	f.Add("guest: diskbench seqwrite mibps=56.7")
	f.Add("guest: diskbench seqread mibps=0x1p-2")
	f.Add("guest: diskbench ")
	f.Fuzz(func(t *testing.T, line string) {
		for _, v := range parseDiskBenchLine(line) {
			known := false
			for _, dt := range diskTests() {
				known = known || dt.name == v.test
			}
			if !known || v.value < 0 || math.IsNaN(v.value) || math.IsInf(v.value, 0) {
				t.Fatalf("accepted %q as %q = %v", line, v.test, v.value)
			}
		}
	})
}

const goodTranscript = `hyperroot vmm: disk 0: io_uring
[    0.000000] Linux version 6.1.0
guest: booted nproc=1 memtotal_kb=93920
guest: action disk-bench
guest: diskbench start dev=/dev/vda size=268435456 time=6s jobs=1:4:32
guest: diskbench seqwrite mibps=100.5 ops=804 seconds=8.00 jobs=1
guest: diskbench randwrite iops=1000 qd=1 p50us=900 p99us=2000 ops=6000 seconds=6.00 jobs=1
guest: diskbench randwrite iops=2000 qd=4 p50us=1900 p99us=5000 ops=12000 seconds=6.00 jobs=4
guest: diskbench randwrite iops=2500 qd=32 p50us=12000 p99us=40000 ops=15000 seconds=6.00 jobs=32
guest: diskbench randread iops=1500 qd=1 p50us=600 p99us=1500 ops=9000 seconds=6.00 jobs=1
guest: diskbench randread iops=3000 qd=4 p50us=1300 p99us=4000 ops=18000 seconds=6.00 jobs=4
guest: diskbench randread iops=3500 qd=32 p50us=9000 p99us=30000 ops=21000 seconds=6.00 jobs=32
guest: diskbench seqread mibps=200.0 ops=1600 seconds=8.00 jobs=1
guest: diskbench verify ok blocks=256 covered-mib=256
[    9.1] reboot: Power down
`

func TestCollectDiskBench(t *testing.T) {
	for _, tc := range []struct {
		name, transcript string
		wantErr          string
	}{
		{"complete", goodTranscript, ""},
		{"crlf", strings.ReplaceAll(goodTranscript, "\n", "\r\n"), ""},
		{"guest failed", strings.Replace(goodTranscript, "guest: diskbench verify ok blocks=256 covered-mib=256",
			"guest: FAIL disk-bench: verify: block at 4096: stamp wrong", 1), "guest failed: guest: FAIL disk-bench: verify"},
		{"no verify", strings.Replace(goodTranscript, "guest: diskbench verify ok", "guest: something else", 1), "no verify"},
		{"a test missing", strings.Replace(goodTranscript, "guest: diskbench randread", "guest: diskbnch randread", 1), "no randread-qd1, randread-qd1-p50, randread-qd1-p99"},
		{"nothing", "hyperroot vmm: bench: kernel: no such file\n", "no randread-qd1, "},
		{"triple fault", strings.Replace(goodTranscript, "guest: diskbench randread iops=1500",
			"hyperroot vmm: bench: crash after 24.123s (vCPU 0: triple fault)\nguest: x", 1), "the guest triple-faulted (hyperroot vmm: bench: crash after 24.123s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, err := collectDiskBench(strings.NewReader(tc.transcript))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if errors.Is(err, errGuestTripleFault) != (tc.name == "triple fault") {
					t.Errorf("error %v: a triple fault = %v", err, errors.Is(err, errGuestTripleFault))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]float64{"seqwrite": 100.5, "randwrite-qd4": 2000, "randread-qd4": 3000, "seqread": 200,
				"randread-qd32-p99": 30000, "randwrite-qd1-p50": 900}
			for k, v := range want {
				if run.values[k] != v {
					t.Errorf("%s = %v, want %v", k, run.values[k], v)
				}
			}
			if run.kind != "io_uring" {
				t.Errorf("kind %q, want io_uring", run.kind)
			}
		})
	}
}

func TestDiskTable(t *testing.T) {
	run := func(rr, rw, sr, sw float64) diskRun {
		return diskRun{values: map[string]float64{"randread-qd1": rr, "randread-qd1-p50": rr / 2, "randwrite-qd1": rw, "seqread": sr, "seqwrite": sw}}
	}
	runs := map[string][]diskRun{
		// medians: uring 2000/1000/300/100, pool 1000/500/150/50, qemu 4000/1000/600/0
		"uring": {run(2000, 1000, 300, 100), run(9000, 900, 310, 90), run(1000, 1100, 290, 110)},
		"pool":  {run(1000, 500, 150, 50), run(1000, 500, 150, 50), run(1000, 500, 150, 50)},
		"qemu":  {run(4000, 1000, 600, 0), run(3000, 1000, 600, 0), run(5000, 1000, 600, 0)},
	}
	got := diskTable([]string{"uring", "pool", "qemu"}, runs)
	want := [][]string{
		{"test", "unit", "uring", "pool", "qemu", "uring/qemu", "pool/qemu", "uring/pool", "(medians", "of", "3"},
		{"randread-qd1", "iops", "2000", "1000", "4000", "0.50", "0.25", "2.00"},
		{"randread-qd1-p50", "us", "1000", "500", "2000", "0.50", "0.25", "2.00"},
		{"randwrite-qd1", "iops", "1000", "500", "1000", "1.00", "0.50", "2.00"},
		{"seqread", "MiB/s", "300.0", "150.0", "600.0", "0.50", "0.25", "2.00"},
		{"seqwrite", "MiB/s", "100.0", "50.0", "0.0", "-", "-", "2.00"}, // no ratio over zero
	}
	if len(got) != len(diskTests())+1 {
		t.Fatalf("got %d lines, want a head and one per test (%d):\n%s", len(got), len(diskTests()), strings.Join(got, "\n"))
	}
	byTest := map[string]string{}
	for _, l := range got[1:] {
		byTest[strings.Fields(l)[0]] = l
	}
	for i, w := range want {
		l := got[0]
		if i > 0 {
			l = byTest[w[0]]
		}
		f := strings.Fields(l)
		if len(f) < len(w) || strings.Join(f[:len(w)], " ") != strings.Join(w, " ") {
			t.Errorf("line %q, want fields %q", l, w)
		}
	}
	// Without io= backends: one hyperroot column, no uring/pool ratio.
	got = diskTable([]string{"hyperroot", "qemu"}, map[string][]diskRun{"hyperroot": runs["pool"], "qemu": runs["qemu"]})
	if f := strings.Fields(got[1]); strings.Join(f, " ") != "randread-qd1 iops 1000 4000 0.25" {
		t.Errorf("two-backend line %q", got[1])
	}
}

func TestMedianFloat(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{5}, 5}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 3},
	} {
		if got := medianFloat(tc.in); got != tc.want {
			t.Errorf("medianFloat(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestDiskBackends(t *testing.T) {
	all := diskBackends("/bin/hyperroot", "/tmp/d.img", "/tmp/c.qcow2")
	bs := standardBackends(all)
	var names []string
	for _, b := range bs {
		names = append(names, b.name)
		args := strings.Join(b.argv, " ")
		if !strings.Contains(args, "hyperroot.guest=disk-bench") {
			t.Errorf("%s: guest not asked for disk-bench: %s", b.name, args)
		}
		switch b.name {
		case "uring", "pool":
			io := map[string]string{"uring": "io_uring", "pool": "pool"}[b.name]
			if !strings.Contains(args, "--disk path=/tmp/d.img,io="+io) || !strings.Contains(args, "--cpus 1 --memory 256M") {
				t.Errorf("%s: %s", b.name, args)
			}
		case "qemu":
			for _, want := range []string{"-enable-kvm", "-smp 1 -m 256", "file=/tmp/d.img,", "format=raw", "cache=writeback", "virtio-blk-pci,drive=d"} {
				if !strings.Contains(args, want) {
					t.Errorf("qemu argv lacks %q: %s", want, args)
				}
			}
		case "qcow2":
			if !strings.Contains(args, "--disk path=/tmp/c.qcow2,io=io_uring,format=qcow2") || b.prepare == nil {
				t.Errorf("%s: %s", b.name, args)
			}
		case "qemu-qcow2":
			if !strings.Contains(args, "file=/tmp/c.qcow2,if=none,id=d,format=qcow2,aio=io_uring") || b.prepare == nil {
				t.Errorf("%s: %s", b.name, args)
			}
		}
	}
	for _, b := range bs {
		if ours := !strings.HasPrefix(b.name, "qemu"); b.peer == ours || b.dumps != ours {
			t.Errorf("%s: peer=%v dumps=%v", b.name, b.peer, b.dumps)
		}
	}
	// Both of our backends are measured, then QEMU, then both on a clone.
	if strings.Join(names, " ") != "uring pool qemu qcow2 qemu-qcow2" {
		t.Errorf("backends %v, want uring pool qemu qcow2 qemu-qcow2", names)
	}
	// The extra contender, named: io_uring with the disk's poll off.
	picked, err := pickBackends(all, []string{"uring-nopoll", "qemu"})
	if err != nil || len(picked) != 2 || picked[0].name != "uring-nopoll" || picked[1].name != "qemu" {
		t.Fatalf("pickBackends: %v %v", picked, err)
	}
	if args := strings.Join(picked[0].argv, " "); !strings.Contains(args, "--disk path=/tmp/d.img,io=io_uring,poll=off") {
		t.Errorf("uring-nopoll: %s", args)
	}
	if _, err := pickBackends(all, []string{"uring", "vmware"}); err == nil || !strings.Contains(err.Error(), `no disk contender "vmware"`) {
		t.Errorf("an unknown contender: %v", err)
	}
	// The guest RAM contenders: hugetlbfs pages with a pool to take them
	// from, and shmem without huge pages; each undoes its setting.
	picked, err = pickBackends(all, []string{"uring-huge", "uring-4k"})
	if err != nil || len(picked) != 2 {
		t.Fatalf("pickBackends: %v %v", picked, err)
	}
	if args := strings.Join(picked[0].argv, " "); !strings.Contains(args, "--hugepages 2M") || picked[0].prepare == nil || picked[0].done == nil {
		t.Errorf("uring-huge: %s", args)
	}
	if picked[1].prepare == nil || picked[1].done == nil {
		t.Error("uring-4k: no setting made and undone")
	}
}

// TestSysctlFor: prepare writes the value, done writes back the one
// before, read from a setting that shows its choice in brackets or plain.
func TestSysctlFor(t *testing.T) {
	for _, tc := range []struct{ before, restored string }{
		{"always within_size [advise] never deny force\n", "advise"},
		{"0\n", "0"},
	} {
		path := filepath.Join(t.TempDir(), "setting")
		if err := os.WriteFile(path, []byte(tc.before), 0o600); err != nil {
			t.Fatal(err)
		}
		prepare, done := sysctlFor(path, "never")
		if err := prepare(); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != "never" {
			t.Errorf("after prepare: %q", b)
		}
		if err := done(); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != tc.restored {
			t.Errorf("after done: %q, want %q", b, tc.restored)
		}
	}
	if prepare, _ := sysctlFor(filepath.Join(t.TempDir(), "none"), "1"); prepare() == nil {
		t.Error("prepare of a missing setting succeeded")
	}
	path := filepath.Join(t.TempDir(), "broken")
	os.WriteFile(path, []byte("always [advise never"), 0o600)
	if prepare, _ := sysctlFor(path, "never"); prepare() == nil {
		t.Error("prepare of a setting with an unclosed [ succeeded")
	}
}

// TestHugePoolFor: a pool with pages enough to spare is left alone; one
// short of them is grown by what is missing (never shrunk) and given
// back after; a pool the kernel did not grow is an error.
func TestHugePoolFor(t *testing.T) {
	pool := func(nr, free string) string {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "nr_hugepages"), []byte(nr), 0o600)
		os.WriteFile(filepath.Join(dir, "free_hugepages"), []byte(free), 0o600)
		return dir
	}
	read := func(dir string) string {
		b, _ := os.ReadFile(filepath.Join(dir, "nr_hugepages"))
		return string(b)
	}
	dir := pool("200\n", "150\n")
	prepare, done := hugePoolFor(dir, 128)
	if err := prepare(); err != nil || read(dir) != "200\n" {
		t.Errorf("enough free: %v, nr_hugepages %q", err, read(dir))
	}
	if err := done(); err != nil || read(dir) != "200\n" {
		t.Errorf("enough free, done: %v, nr_hugepages %q", err, read(dir))
	}
	// A test file's free count does not follow nr_hugepages as the
	// kernel's does: the grown pool reads as still short.
	dir = pool("40\n", "10\n")
	prepare, done = hugePoolFor(dir, 128)
	if err := prepare(); err == nil || !strings.Contains(err.Error(), "10 free 2 MiB pages") || read(dir) != "158" {
		t.Errorf("short: %v, nr_hugepages %q (want 40+118)", err, read(dir))
	}
	if err := done(); err != nil || read(dir) != "40" {
		t.Errorf("short, done: %v, nr_hugepages %q", err, read(dir))
	}
}

// TestMakeClone: the clone reads as its raw base, which it names
// relative to itself; a second call starts it afresh.
func TestMakeClone(t *testing.T) {
	dir := t.TempDir()
	base, clone := filepath.Join(dir, "d.img"), filepath.Join(dir, "c.qcow2")
	if err := makeBenchImage(base, 1<<20); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := makeClone(clone, base); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(clone, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		im, err := qcow2.Open(f, qcow2.Options{Backing: func(name, format string) (qcow2.Backing, error) {
			if name != "d.img" || format != "raw" {
				t.Errorf("backing %q (%q), want d.img (raw)", name, format)
			}
			bf, err := os.Open(base)
			if err != nil {
				return nil, err
			}
			return qcow2.NewRawBacking(bf)
		}})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		if _, err := im.ReadAt(got, 8192); err != nil || got[0] != byte(8192%255+1) {
			t.Errorf("clone reads %#x (%v), want the base's %#x", got[0], err, byte(8192%255+1))
		}
		if _, err := im.WriteAt([]byte{0}, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func TestMakeBenchImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "d.img")
	const size = 3<<20 + 4096
	if err := makeBenchImage(p, size); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 < size {
		t.Errorf("size %d with %d bytes allocated, want %d fully allocated", st.Size, st.Blocks*512, size)
	}
	b, _ := os.ReadFile(p)
	for i, c := range b {
		if c == 0 {
			t.Fatalf("byte %d is zero: reads would not tell data from a hole", i)
		}
	}
}

// TestDiskMarks: a test's window opens at its own begin line only (not
// another depth's) and closes at its own figures line, the work being its
// requests in thousands; the sequential tests go by their name.
func TestDiskMarks(t *testing.T) {
	m := diskMarks{"randread", 4}
	for line, want := range map[string]bool{
		"bench| guest: diskbench begin randread qd=4":  true,
		"bench| guest: diskbench begin randread qd=32": false,
		"bench| guest: diskbench begin randwrite qd=4": false,
	} {
		if _, ok, err := m.open(line); ok != want || err != nil {
			t.Errorf("open(%q) = %v, %v; want %v", line, ok, err, want)
		}
	}
	if _, ok, _ := m.close("guest: diskbench randread iops=900 qd=32 p50us=30 p99us=90 ops=5400 seconds=6.00 jobs=32", 0); ok {
		t.Error("closed at another depth's figures")
	}
	work, ok, err := m.close("bench| guest: diskbench randread iops=900 qd=4 p50us=30 p99us=90 ops=5400 seconds=6.00 jobs=4", 0)
	if !ok || err != nil || work != 5.4 {
		t.Errorf("close = %v, %v, %v; want 5.4 thousand requests", work, ok, err)
	}
	if _, _, err := m.close("guest: diskbench randread iops=900 qd=4 jobs=4", 0); err == nil {
		t.Error("figures without a request count closed the window")
	}
	seq := diskMarks{"seqread", 1}
	if seq.name() != "seqread" || m.name() != "randread-qd4" {
		t.Errorf("names %q, %q", seq.name(), m.name())
	}
	if work, ok, _ := seq.close("guest: diskbench seqread mibps=180.5 ops=1083 seconds=6.00 jobs=1", 0); !ok || work != 1.083 {
		t.Errorf("seqread closes with %v, %v", work, ok)
	}
	// The guest's interrupt lines are kept, and are no figures.
	c := newDiskCollector()
	c.line("bench| guest: diskbench irq randread qd=4 per_1000req virtio1-req.0=250.0 LOC=12.0")
	if len(c.run.irqs) != 1 || c.run.irqs[0] != "randread qd=4 per_1000req virtio1-req.0=250.0 LOC=12.0" || len(c.run.values) != 0 {
		t.Errorf("irqs %q values %v", c.run.irqs, c.run.values)
	}
}

// TestDiskCollectorDump: a stalled VMM's dump is kept apart from the
// console's tail, its end line says it is complete, and a second end
// line is harmless.
func TestDiskCollectorDump(t *testing.T) {
	c := newDiskCollector()
	c.line("guest: diskbench begin randread qd=1")
	c.line("hyperroot vmm: dump: 1 vCPUs")
	c.line("hyperroot vmm: dump: disk 0: virtio-blk: queue 0: 1 in flight, 255 slots free")
	select {
	case <-c.dumped:
		t.Fatal("the dump ended before its end line")
	default:
	}
	c.line("hyperroot vmm: dump: end")
	c.line("hyperroot vmm: dump: end")
	select {
	case <-c.dumped:
	default:
		t.Fatal("the end line did not end the dump")
	}
	if got := c.dumpLines(); len(got) != 2 || got[1] != "disk 0: virtio-blk: queue 0: 1 in flight, 255 slots free" {
		t.Errorf("dump %q", got)
	}
	if got := c.lastLines(); len(got) != 1 || got[0] != "guest: diskbench begin randread qd=1" {
		t.Errorf("tail %q", got)
	}
}

// TestDiskRounds: the backends take turns going first; a peer whose
// guest fails a round loses that round and the others go on; one of
// hyperroot's failing ends the benchmark.
func TestDiskRounds(t *testing.T) {
	backends := []diskBackend{{name: "uring", dumps: true}, {name: "qemu", peer: true}}
	var log, order []string
	logf := func(format string, a ...any) { log = append(log, fmt.Sprintf(format, a...)) }
	stall := errors.New("no result within 10m0s")
	runs, err := diskRounds(logf, 3, backends, func(round int, b diskBackend) (diskRun, error) {
		order = append(order, b.name)
		if b.name == "qemu" && round == 2 {
			return diskRun{}, stall
		}
		return diskRun{values: map[string]float64{"seqread": float64(round)}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"uring", "qemu", "qemu", "uring", "uring", "qemu"}; !slices.Equal(order, want) {
		t.Errorf("order %q, want %q", order, want)
	}
	if len(runs["uring"]) != 3 || len(runs["qemu"]) != 2 {
		t.Errorf("rounds: uring %d, qemu %d; want 3 and 2", len(runs["uring"]), len(runs["qemu"]))
	}
	if !slices.Contains(log, "bench: disk round=2 backend=qemu: no round: no result within 10m0s") {
		t.Errorf("the lost round is not logged: %q", log)
	}
	_, err = diskRounds(logf, 3, backends, func(round int, b diskBackend) (diskRun, error) {
		if b.name == "uring" && round == 2 {
			return diskRun{}, stall
		}
		return diskRun{}, nil
	})
	if !errors.Is(err, stall) || !strings.HasPrefix(err.Error(), "uring: ") {
		t.Errorf("hyperroot's failed round: %v", err)
	}
}

// TestDiskCollectorWait: a boot ends the wait when done; a console that
// keeps talking is given the whole limit, and one that falls silent is
// given up on after the silence (a fake clock, ticked by the test).
func TestDiskCollectorWait(t *testing.T) {
	c := newDiskCollector()
	done := make(chan struct{})
	close(done)
	if why := c.wait(done, time.Hour, time.Hour, nil); why != "" {
		t.Errorf("a finished boot: %q", why)
	}
	for _, tc := range []struct {
		name  string
		talks bool
		want  string
	}{
		{"talking", true, "no result within 200ms"},
		{"silent", false, "no console line for 100ms (0s into the boot)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newDiskCollector()
			clock := time.Unix(1e9, 0)
			var mu sync.Mutex
			c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
			tick := make(chan time.Time)
			result := make(chan string)
			go func() { result <- c.wait(make(chan struct{}), 200*time.Millisecond, 100*time.Millisecond, tick) }()
			for {
				mu.Lock()
				clock = clock.Add(30 * time.Millisecond)
				now := clock
				mu.Unlock()
				if tc.talks {
					c.line("guest: diskbench begin randread qd=1")
				}
				select {
				case tick <- now:
					continue
				case why := <-result:
					if why != tc.want {
						t.Errorf("%q, want %q", why, tc.want)
					}
				}
				break
			}
		})
	}
}

// TestPageFaultStorm: a dump's last-second KVM counts with thousands of
// injected page faults, each with an emulated instruction (hold5's), are
// the test bed's storm; a busy but healthy vCPU, or a dump without the
// line, is not.
func TestPageFaultStorm(t *testing.T) {
	for _, tc := range []struct {
		name string
		dump []string
		want bool
	}{
		{"hold5", []string{
			"kvm counts moved over 1.001s (this dump's own kicks included):",
			"vcpu 0: pf_guest+24120 exits+24120 signal_exits+1 host_state_reload+9 fpu_reload+1 insn_emulation+24120 req_event+24121 preemption_other+2",
			"vm: nothing moved"}, true},
		{"healthy", []string{"vcpu 0: pf_guest+3 exits+41200 io_exits+9000 insn_emulation+12 halt_exits+300"}, false},
		{"faults without emulation", []string{"vcpu 0: pf_guest+24000 exits+24000 insn_emulation+100"}, false},
		{"second vCPU", []string{"vcpu 0: exits+10 halt_exits+10", "vcpu 1: pf_guest+5000 exits+5000 insn_emulation+4900"}, true},
		{"no counts", []string{"disk 0: no request finished"}, false},
		{"empty", nil, false},
	} {
		if got := pageFaultStorm(tc.dump); got != tc.want {
			t.Errorf("%s: pageFaultStorm = %v, want %v", tc.name, got, tc.want)
		}
	}
}
