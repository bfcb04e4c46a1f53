package main

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseBenchOptions(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    benchOptions
		wantErr string
	}{
		{"", benchOptions{8 * time.Second, []int{4}, "/dev/vda"}, ""},
		{"time=2s", benchOptions{2 * time.Second, []int{4}, "/dev/vda"}, ""},
		{"jobs=1", benchOptions{8 * time.Second, []int{1}, "/dev/vda"}, ""},
		{"jobs=16,time=500ms", benchOptions{500 * time.Millisecond, []int{16}, "/dev/vda"}, ""},
		{"jobs=1:4:32", benchOptions{8 * time.Second, []int{1, 4, 32}, "/dev/vda"}, ""},
		{"dev=/dev/nvme0n1,jobs=2", benchOptions{8 * time.Second, []int{2}, "/dev/nvme0n1"}, ""},
		{"dev=/dev/sda", benchOptions{}, "dev"},
		{"dev=/etc/passwd", benchOptions{}, "dev"},
		{"time=0s", benchOptions{}, "time"},
		{"time=-1s", benchOptions{}, "time"},
		{"time=2h", benchOptions{}, "time"},
		{"time=soon", benchOptions{}, "time"},
		{"jobs=0", benchOptions{}, "jobs"},
		{"jobs=1000", benchOptions{}, "jobs"},
		{"jobs=x", benchOptions{}, "jobs"},
		{"jobs=1::4", benchOptions{}, "jobs"},
		{"jobs=4:0", benchOptions{}, "jobs"},
		{"jobs=1:2:3:4:5:6:7:8:9", benchOptions{}, "jobs"}, // more than maxDepths
		{"depth=4", benchOptions{}, "unknown option"},
		{"time=1s,", benchOptions{}, "unknown option"},
	} {
		got, err := parseBenchOptions(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseBenchOptions(%q) error %v, want one mentioning %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.Time != tc.want.Time || got.Dev != tc.want.Dev || !slices.Equal(got.Jobs, tc.want.Jobs) {
			t.Errorf("parseBenchOptions(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// TestStamps checks that a stamped buffer passes at its own offset and
// fails at any other, with another seed, or with a changed body byte.
func TestStamps(t *testing.T) {
	d, err := newBenchDisk(-1, 4<<20, 42)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4*benchBlock)
	d.fill(buf)
	d.stamp(buf, 8192)
	if err := d.checkStamps(buf, 8192); err != nil {
		t.Fatalf("own stamps: %v", err)
	}
	for i := 0; i < len(buf); i += benchBlock {
		if err := d.checkBlock(buf[i:i+benchBlock], 8192+int64(i)); err != nil {
			t.Fatalf("block %d: %v", i/benchBlock, err)
		}
	}
	if err := d.checkStamps(buf, 4096); err == nil {
		t.Error("stamps accepted at the wrong offset")
	}
	other, _ := newBenchDisk(-1, 4<<20, 43)
	if err := other.checkStamps(buf, 8192); err == nil {
		t.Error("stamps of seed 42 accepted by a run with seed 43")
	}
	buf[benchBlock+100] ^= 1
	if err := d.checkBlock(buf[benchBlock:2*benchBlock], 8192+benchBlock); err == nil {
		t.Error("a changed body byte went unnoticed")
	}
	if _, err := newBenchDisk(-1, benchChunk-1, 1); err == nil {
		t.Error("a disk smaller than 1 MiB was accepted")
	}
}

// TestRun runs the whole benchmark briefly on a file standing in for
// /dev/vda, then damages the file in the ways a broken disk would and
// checks that verification notices each.
func TestRun(t *testing.T) {
	const size = 3 << 20
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, f *os.File)
	}{
		{"intact", nil},
		{"lost writes", func(t *testing.T, f *os.File) {
			if _, err := f.WriteAt(make([]byte, size), 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"blocks swapped", func(t *testing.T, f *os.File) {
			a, b := make([]byte, benchBlock), make([]byte, benchBlock)
			f.ReadAt(a, 0)
			f.ReadAt(b, benchBlock)
			f.WriteAt(b, 0)
			f.WriteAt(a, benchBlock)
		}},
		{"body corrupted", func(t *testing.T, f *os.File) {
			if _, err := f.WriteAt([]byte{0xff, 0x00, 0xff}, size-100); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
			d, err := newBenchDisk(int(f.Fd()), size, 7)
			if err != nil {
				t.Fatal(err)
			}
			// The write pass runs for a time, not a size: a loaded machine
			// may not write 3 MiB in 50 ms, so the time doubles until the
			// pass covers the whole disk, which the damage below needs.
			for tm := 50 * time.Millisecond; ; tm *= 2 {
				if err := d.run(benchOptions{Time: tm, Jobs: []int{3, 1}}); err != nil {
					t.Fatalf("run: %v", err)
				}
				if d.covered == size {
					break
				}
				if tm > 10*time.Second {
					t.Fatalf("covered %d bytes in %v, want the whole %d-byte disk", d.covered, tm, size)
				}
			}
			if tc.damage == nil {
				return
			}
			tc.damage(t, f)
			// verify checks block 0 and the last block first, and the
			// damage above hits at least one of them.
			if err := d.verify(); err == nil {
				t.Fatal("verify passed on a damaged disk")
			}
		})
	}
}

// TestRunStaleData: a disk holding an earlier run's blocks (another seed)
// fails the reads, not only the final verify.
func TestRunStaleData(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(2 << 20)
	old, _ := newBenchDisk(int(f.Fd()), 2<<20, 1)
	if err := old.run(benchOptions{Time: 30 * time.Millisecond, Jobs: []int{2}}); err != nil {
		t.Fatal(err)
	}
	d, _ := newBenchDisk(int(f.Fd()), 2<<20, 2)
	d.covered = 2 << 20 // as if seqwrite had written it all, but its writes were lost
	if err := d.verify(); err == nil || !strings.Contains(err.Error(), "stamp") {
		t.Fatalf("verify of another run's data: %v, want a stamp mismatch", err)
	}
}

func BenchmarkStamp(b *testing.B) {
	d, _ := newBenchDisk(-1, 4<<20, 1)
	buf := make([]byte, benchChunk)
	d.fill(buf)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.stamp(buf, int64(i)*benchChunk)
		if err := d.checkStamps(buf, int64(i)*benchChunk); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLatencies: timed keeps each request's latency when asked, and the
// percentiles read them (a nearest-rank 50th and 99th).
func TestLatencies(t *testing.T) {
	r, err := timed(2, benchBlock, 50*time.Millisecond, 1, true, func([]byte, *rand.Rand, int64) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.lat) != int(r.ops) || r.ops == 0 {
		t.Fatalf("%d latencies for %d requests", len(r.lat), r.ops)
	}
	if p := r.percentile(50); p < time.Millisecond || p > r.percentile(99) {
		t.Errorf("p50 %v, p99 %v: want p50 at least the 1ms each request slept, and at most p99", p, r.percentile(99))
	}
	r, _ = timed(1, benchBlock, 10*time.Millisecond, 1, false, func([]byte, *rand.Rand, int64) error { return nil })
	if len(r.lat) != 0 || r.percentile(99) != 0 {
		t.Errorf("latencies kept without asking: %d", len(r.lat))
	}
	fixed := result{lat: []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}}
	if fixed.percentile(50) != 6 || fixed.percentile(99) != 10 {
		t.Errorf("percentiles of 1..10: p50 %v p99 %v, want 6 and 10", fixed.percentile(50), fixed.percentile(99))
	}
}
