package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hyperroot/hyperroot/init/config"
)

// hugePagesDir is where the kernel keeps its huge page pools, one
// directory per page size (hugepages-2048kB, hugepages-1048576kB).
var hugePagesDir = "/sys/kernel/mm/hugepages"

// hugePool is one page size's pool.
func hugePool(size config.Size) string {
	return filepath.Join(hugePagesDir, fmt.Sprintf("hugepages-%dkB", size>>10))
}

// hugeCount reads one of a pool's counters (nr_hugepages, free_hugepages).
func hugeCount(size config.Size, file string) (int, error) {
	b, err := os.ReadFile(filepath.Join(hugePool(size), file))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// reserveHugePages sets each pool to the configuration's count at boot
// and reports what the kernel could give (a 1G pool may find no room once
// memory is fragmented: the kernel command line's hugepagesz=1G
// hugepages=N reserves them before it is). Pools the configuration does
// not name keep what the kernel command line gave them.
func reserveHugePages(c *console, want map[config.Size]int) {
	for _, size := range []config.Size{config.Huge2M, config.Huge1G} {
		n, ok := want[size]
		if !ok {
			continue
		}
		if _, err := os.Stat(hugePool(size)); err != nil {
			c.Errorf("hugepages", fmt.Errorf("%s pages: the CPU or kernel has none (%w)", size, err))
			continue
		}
		got, err := resizePool(n, func(n int) error {
			return os.WriteFile(filepath.Join(hugePool(size), "nr_hugepages"), []byte(strconv.Itoa(n)), 0)
		}, func() (int, error) { return hugeCount(size, "nr_hugepages") })
		if err != nil {
			c.Errorf("hugepages", fmt.Errorf("reserve %d pages of %s: %w", n, size, err))
			continue
		}
		if got < n {
			c.Errorf("hugepages", fmt.Errorf("asked for %d pages of %s, the kernel found room for %d "+
				"(reserve them on the kernel command line: hugepagesz=%s hugepages=%d)", n, size, got, size, n))
		}
	}
	if s := hugePagesStatus(); s != "" {
		c.Printf("hugepages: %s", s)
	}
}

// resizePool asks the kernel for want pages (write) until its pool holds
// them (read) or a request brings no page more. One request is not enough:
// the kernel stops filling a pool at the first signal its writer has
// pending ("probably ctrl-c"), and the Go runtime signals its threads
// whenever it preempts one, so a write may return having allocated one
// page of 96. Each request allocates at least one page unless memory has
// none, which is when to stop.
func resizePool(want int, write func(int) error, read func() (int, error)) (int, error) {
	got := -1
	for {
		if err := write(want); err != nil {
			return 0, err
		}
		now, err := read()
		if err != nil || now == want || now == got {
			return now, err
		}
		got = now
	}
}

// hugePagesStatus is each pool that has pages, as "2M total=64 free=32",
// comma-separated; "" when there are none.
func hugePagesStatus() string {
	var w []string
	for _, size := range []config.Size{config.Huge2M, config.Huge1G} {
		total, err1 := hugeCount(size, "nr_hugepages")
		free, err2 := hugeCount(size, "free_hugepages")
		if err1 != nil || err2 != nil || total == 0 {
			continue
		}
		w = append(w, fmt.Sprintf("%s total=%d free=%d", size, total, free))
	}
	return strings.Join(w, ", ")
}

// checkHugePages says why a VM backed by huge pages cannot start: its page
// size has no pool, or too few pages are free. The VMM's own reservation
// (mmap of the memfd) is the final word; this is the clear error.
func checkHugePages(vm config.VM) error {
	size := vm.HugePages
	if size == 0 {
		return nil
	}
	need := int(vm.Memory / size)
	free, err := hugeCount(size, "free_hugepages")
	if err != nil {
		return fmt.Errorf("hugepages: no pool of %s pages: %w", size, err)
	}
	// Free pages another mapping has reserved but not yet touched are
	// not free for this VM.
	if resv, err := hugeCount(size, "resv_hugepages"); err == nil {
		free -= resv
	}
	if free < need {
		total, _ := hugeCount(size, "nr_hugepages")
		return fmt.Errorf("hugepages: %s of RAM needs %d pages of %s, %d free (of %d reserved; see hugepages: in the configuration)",
			vm.Memory, need, size, free, total)
	}
	return nil
}
