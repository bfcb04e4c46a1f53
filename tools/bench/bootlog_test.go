package main

import (
	"testing"
	"time"
)

// TestReadTimeline: a guest kernel's records as the kmsg action prints
// them (after "guest: kmsg "), read for /init, the slowest initcalls and
// the longest silences before /init.
func TestReadTimeline(t *testing.T) {
	records := []string{
		"0.000000 Linux version 6.1.0-57-cloud-amd64",
		"0.101000 calling  pci_subsys_init+0x0/0x7a @ 1",
		"0.350000 initcall pci_subsys_init+0x0/0x7a returned 0 after 249000 usecs",
		"0.351000 initcall init_hw_perf_events+0x0/0x6a0 returned 0 after 3 usecs",
		"2.351000 initcall virtio_rng_driver_init+0x0/0x1000 [virtio_rng] returned 0 after 1200 usecs",
		"2.400000 Freeing unused kernel image (initmem) memory: 2748K",
		"2.500000 Run /init as init process",
		"9.000000 random: crng init done", // after /init: not a boot silence
		"not a record",
	}
	tl := readTimeline(records)
	if tl.init != 2500*time.Millisecond {
		t.Errorf("init at %v, want 2.5s", tl.init)
	}
	slow := tl.slowest(2)
	if len(slow) != 2 || slow[0].name != "pci_subsys_init" || slow[0].d != 249*time.Millisecond || slow[1].name != "virtio_rng_driver_init" {
		t.Errorf("slowest %+v", slow)
	}
	g := tl.gaps(1)
	if len(g) != 1 || g[0].d != 2*time.Second || g[0].next != "initcall virtio_rng_driver_init+0x0/0x1000 [virtio_rng] returned 0 after 1200 usecs" ||
		g[0].prev != "initcall init_hw_perf_events+0x0/0x6a0 returned 0 after 3 usecs" {
		t.Errorf("longest silence %+v", g)
	}
	if n := len(tl.gaps(100)); n != 6 {
		t.Errorf("%d silences before /init, want 6", n)
	}
}
