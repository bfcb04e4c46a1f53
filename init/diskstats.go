package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
	"github.com/prometheus/client_golang/prometheus"
)

// A supervised VMM reports its disks' request counters (blk.Stats) with
// its KVM counts, one line per disk:
//
//	hyperroot vmm: disk <tag>: <index> read=<requests>/<bytes>/<errors>/<nanoseconds>/<bucket>,... write=... flush=... discard=...
//
// with every class present and blk.LatencyBuckets bucket counts each.
// PID 1 keeps the last line of each disk for /metrics. Like the KVM line,
// it is parsed as hostile input: the VMM runs device models its guest
// drives.

// diskStatsPrefix starts a VMM's line of one disk's counters.
func diskStatsPrefix(tag string) string { return "hyperroot vmm: disk " + tag + ":" }

// formatDiskStats writes disk i's line, after its prefix.
func formatDiskStats(b *strings.Builder, i int, st blk.Stats) {
	fmt.Fprintf(b, " %d", i)
	for c := range blk.NumClasses {
		s := st[c]
		fmt.Fprintf(b, " %s=%d/%d/%d/%d/", c, s.Requests, s.Bytes, s.Errors, s.Nanos)
		for k, n := range s.Buckets {
			if k > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatUint(n, 10))
		}
	}
}

// parseDiskStats reads a disk line back (after its prefix): a disk index
// the config allows, each class once, whole numbers.
func parseDiskStats(s string) (int, blk.Stats, bool) {
	var st blk.Stats
	f := strings.Fields(s)
	if len(f) != 1+int(blk.NumClasses) {
		return 0, st, false
	}
	i, err := strconv.Atoi(f[0])
	if err != nil || i < 0 || i >= config.MaxDisks {
		return 0, st, false
	}
	var seen [blk.NumClasses]bool
	for _, kv := range f[1:] {
		name, v, ok := strings.Cut(kv, "=")
		c := classNamed(name)
		if !ok || c >= blk.NumClasses || seen[c] {
			return 0, st, false
		}
		seen[c] = true
		parts := strings.Split(v, "/")
		if len(parts) != 5 {
			return 0, st, false
		}
		s := &st[c]
		for k, p := range []*uint64{&s.Requests, &s.Bytes, &s.Errors, &s.Nanos} {
			if *p, err = strconv.ParseUint(parts[k], 10, 64); err != nil {
				return 0, st, false
			}
		}
		buckets := strings.Split(parts[4], ",")
		if len(buckets) != blk.LatencyBuckets {
			return 0, st, false
		}
		for k, b := range buckets {
			if s.Buckets[k], err = strconv.ParseUint(b, 10, 64); err != nil {
				return 0, st, false
			}
		}
	}
	return i, st, true
}

// classNamed returns the class of a name, or blk.NumClasses.
func classNamed(name string) blk.Class {
	for c := range blk.NumClasses {
		if c.String() == name {
			return c
		}
	}
	return blk.NumClasses
}

// diskMetrics turns a VM's disk counters into /metrics: requests, bytes
// and errors by class, and each class's latency histogram. A disk is named
// by its path in the VM's config.
func diskMetrics(ch chan<- prometheus.Metric, vm *config.VM, disks map[int]blk.Stats) {
	for i, st := range disks {
		disk := "disk" + strconv.Itoa(i)
		if i < len(vm.Disks) {
			disk = vm.Disks[i].Path
		}
		for c := range blk.NumClasses {
			s, op := st[c], c.String()
			ch <- prometheus.MustNewConstMetric(mVMBlkReqs, prometheus.CounterValue, float64(s.Requests), vm.Name, disk, op)
			ch <- prometheus.MustNewConstMetric(mVMBlkBytes, prometheus.CounterValue, float64(s.Bytes), vm.Name, disk, op)
			ch <- prometheus.MustNewConstMetric(mVMBlkErrs, prometheus.CounterValue, float64(s.Errors), vm.Name, disk, op)
			buckets := make(map[float64]uint64, blk.LatencyBuckets-1)
			var cum uint64
			for k, n := range s.Buckets {
				cum += n
				if b := blk.BucketBound(k); b > 0 {
					buckets[b.Seconds()] = cum
				}
			}
			// The counts are read one by one while requests complete:
			// the total is the buckets' sum, so the histogram holds.
			ch <- prometheus.MustNewConstHistogram(mVMBlkLatency, cum, float64(s.Nanos)/float64(time.Second), buckets, vm.Name, disk, op)
		}
	}
}
