package main

import (
	"math"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/metricstest"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
)

func sampleDiskStats() blk.Stats {
	var st blk.Stats
	st[blk.ClassRead] = blk.ClassStats{Requests: 3, Bytes: 12288, Errors: 1, Nanos: 5_000_000}
	st[blk.ClassRead].Buckets[2] = 2
	st[blk.ClassRead].Buckets[blk.LatencyBuckets-1] = 1
	st[blk.ClassFlush] = blk.ClassStats{Requests: 1, Nanos: 900}
	st[blk.ClassFlush].Buckets[0] = 1
	return st
}

func TestDiskStatsLine(t *testing.T) {
	var b strings.Builder
	formatDiskStats(&b, 3, sampleDiskStats())
	i, st, ok := parseDiskStats(b.String())
	if !ok || i != 3 || st != sampleDiskStats() {
		t.Fatalf("%q read back as disk %d %+v (%v)", b.String(), i, st, ok)
	}
	line := b.String()
	zeros := strings.Repeat(",0", blk.LatencyBuckets-1)
	for _, bad := range []string{
		"",
		strings.Replace(line, " 3 ", " 16 ", 1), // past config.MaxDisks
		strings.Replace(line, " 3 ", " -1 ", 1), //
		strings.Replace(line, "flush=", "read=", 1),                              // a class twice, one missing
		strings.Replace(line, "flush=", "trim=", 1),                              // not a class
		strings.Replace(line, "read=3/", "read=3/1/", 1),                         // a field too many
		strings.Replace(line, "read=3/", "read=x/", 1),                           //
		line + " write=0/0/0/0/0" + zeros,                                        // a class too many
		strings.Replace(line, "flush=1/0/0/900/1"+zeros, "flush=1/0/0/900/1", 1), // too few buckets
	} {
		if _, _, ok := parseDiskStats(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseDiskStats(f *testing.F) {
	var b strings.Builder
	formatDiskStats(&b, 0, sampleDiskStats())
	f.Add(b.String())
	f.Add(" 1 read=1/2/3/4/5")
	f.Fuzz(func(t *testing.T, s string) {
		i, st, ok := parseDiskStats(s)
		if !ok {
			return
		}
		if i < 0 || i >= config.MaxDisks {
			t.Fatalf("disk %d from %q", i, s)
		}
		var again strings.Builder
		formatDiskStats(&again, i, st)
		if j, st2, ok := parseDiskStats(again.String()); !ok || j != i || st2 != st {
			t.Fatalf("%q does not read back", again.String())
		}
	})
}

// TestDiskMetrics: a VMM's disk line becomes counters and a latency
// histogram per class in /metrics, as Prometheus parses it.
func TestDiskMetrics(t *testing.T) {
	f, _, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop()
	waitFor(t, out, "t| ready networks=0 ports=0")
	var b strings.Builder
	formatDiskStats(&b, 0, sampleDiskStats())
	i, st, ok := parseDiskStats(b.String())
	if !ok {
		t.Fatalf("%q did not parse", b.String())
	}
	f.mu.Lock()
	e := f.vms["t"]
	f.mu.Unlock()
	e.mu.Lock()
	e.disks = map[int]blk.Stats{i: st}
	e.mu.Unlock()
	rec := httptest.NewRecorder()
	metricsHandler(f, &netSwitch{}, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m, err := metricstest.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	disk := "disk=disk0" // the fake VM has no disk in its config
	if len(e.vm.Disks) > 0 {
		disk = "disk=" + e.vm.Disks[0].Path
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hyperroot_vm_virtio_blk_requests_total", []string{"vm=t", disk, "op=read"}, 3},
		{"hyperroot_vm_virtio_blk_bytes_total", []string{"vm=t", disk, "op=read"}, 12288},
		{"hyperroot_vm_virtio_blk_errors_total", []string{"vm=t", disk, "op=read"}, 1},
		{"hyperroot_vm_virtio_blk_requests_total", []string{"vm=t", disk, "op=flush"}, 1},
		{"hyperroot_vm_virtio_blk_requests_total", []string{"vm=t", disk, "op=write"}, 0},
	} {
		if got := m.Value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	h := m.Histogram("hyperroot_vm_virtio_blk_request_seconds", "vm=t", disk, "op=read")
	if h == nil {
		t.Fatal("no read latency histogram")
	}
	if h.GetSampleCount() != 3 || h.GetSampleSum() != 0.005 {
		t.Errorf("read histogram: %d samples, sum %v", h.GetSampleCount(), h.GetSampleSum())
	}
	for _, b := range h.GetBucket() {
		want := uint64(0)
		switch {
		case math.IsInf(b.GetUpperBound(), 1):
			want = 3 // the parser adds +Inf: every request
		case b.GetUpperBound() >= 4e-6:
			want = 2 // the third request was slower than the last bound
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}
