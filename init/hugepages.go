package main

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

// hugePagesDir is where the kernel keeps its huge page pools, one
// directory per page size (hugepages-2048kB, hugepages-1048576kB).
var hugePagesDir = "/sys/kernel/mm/hugepages"

// hugePool is one page size's pool: the host's, or with node >= 0 that
// host NUMA node's share of it.
func hugePool(size config.Size, node int) string {
	dir := fmt.Sprintf("hugepages-%dkB", size>>10)
	if node >= 0 {
		return filepath.Join(hostNodePath(node), "hugepages", dir)
	}
	return filepath.Join(hugePagesDir, dir)
}

// hugeCount reads one of a pool's counters (nr_hugepages, free_hugepages).
func hugeCount(size config.Size, node int, file string) (int, error) {
	b, err := os.ReadFile(filepath.Join(hugePool(size, node), file))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// reserveHugePages sets each pool to the configuration's count at boot,
// on each host node it names or on the host as a whole, and reports what
// the kernel could give (a 1G pool may find no room once memory is
// fragmented: the kernel command line's hugepagesz=1G hugepages=N
// reserves them before it is). Pools the configuration does not name
// keep what the kernel command line gave them.
func reserveHugePages(c *console, want map[config.Size]config.HugePool) {
	for _, size := range []config.Size{config.Huge2M, config.Huge1G} {
		p, ok := want[size]
		if !ok {
			continue
		}
		if _, err := os.Stat(hugePool(size, -1)); err != nil {
			c.Errorf("hugepages", fmt.Errorf("%s pages: the CPU or kernel has none (%w)", size, err))
			continue
		}
		if p.Nodes == nil {
			reservePool(c, size, -1, p.Pages)
			continue
		}
		nodes := slices.Sorted(maps.Keys(p.Nodes))
		for _, node := range nodes {
			if err := hostNodeExists(node); err != nil {
				c.Errorf("hugepages", fmt.Errorf("%s pages: %w", size, err))
				continue
			}
			reservePool(c, size, node, p.Nodes[node])
		}
	}
	if s := hugePagesStatus(); s != "" {
		c.Printf("hugepages: %s", s)
	}
}

// reservePool asks for n pages of size on node (-1: the host's pool) and
// says so on the console when it gets fewer.
func reservePool(c *console, size config.Size, node, n int) {
	where, cmdline := "", strconv.Itoa(n)
	if node >= 0 {
		where, cmdline = fmt.Sprintf(" on host node %d", node), fmt.Sprintf("%d:%d", node, n)
	}
	got, err := resizePool(n, func(n int) error {
		return os.WriteFile(filepath.Join(hugePool(size, node), "nr_hugepages"), []byte(strconv.Itoa(n)), 0)
	}, func() (int, error) { return hugeCount(size, node, "nr_hugepages") })
	if err != nil {
		c.Errorf("hugepages", fmt.Errorf("reserve %d pages of %s%s: %w", n, size, where, err))
		return
	}
	if got < n {
		c.Errorf("hugepages", fmt.Errorf("asked for %d pages of %s%s, the kernel found room for %d "+
			"(reserve them on the kernel command line: hugepagesz=%s hugepages=%s)", n, size, where, got, size, cmdline))
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
// comma-separated, and on a host of several NUMA nodes each node's share
// as "node<n>=<free>/<total>"; "" when there are none.
func hugePagesStatus() string {
	nodes := hostNodes()
	var w []string
	for _, size := range []config.Size{config.Huge2M, config.Huge1G} {
		total, err1 := hugeCount(size, -1, "nr_hugepages")
		free, err2 := hugeCount(size, -1, "free_hugepages")
		if err1 != nil || err2 != nil || total == 0 {
			continue
		}
		s := fmt.Sprintf("%s total=%d free=%d", size, total, free)
		for _, node := range nodes {
			if len(nodes) < 2 {
				break
			}
			total, err1 := hugeCount(size, node, "nr_hugepages")
			free, err2 := hugeCount(size, node, "free_hugepages")
			if err1 == nil && err2 == nil {
				s += fmt.Sprintf(" node%d=%d/%d", node, free, total)
			}
		}
		w = append(w, s)
	}
	return strings.Join(w, ", ")
}

// hostNodes are the host's NUMA nodes, in order (none where the kernel
// has no NUMA support).
func hostNodes() []int {
	ents, _ := os.ReadDir(nodeDir)
	var nodes []int
	for _, e := range ents {
		if n, ok := strings.CutPrefix(e.Name(), "node"); ok {
			if id, err := strconv.Atoi(n); err == nil && id >= 0 {
				nodes = append(nodes, id)
			}
		}
	}
	slices.Sort(nodes)
	return nodes
}

// checkHugePages says why a VM backed by huge pages cannot start: its page
// size has no pool, or too few pages are free, on the host or on a host
// node its RAM is bound to (the kernel takes a bound VM's pages from that
// node's share only). The VMM's own reservation (mmap of the memfd, then
// prefaulting under its binding) is the final word; this is the clear error.
func checkHugePages(vm config.VM) error {
	size := vm.HugePages
	if size == 0 {
		return nil
	}
	need := int(vm.Memory / size)
	free, err := hugeCount(size, -1, "free_hugepages")
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hugepages: this host has no pool of %s pages: its CPU or kernel does not offer that size (no %s)", size, hugePool(size, -1))
	}
	if err != nil {
		return fmt.Errorf("hugepages: %s pages: %w", size, err)
	}
	// Free pages another mapping has reserved but not yet touched are
	// not free for this VM.
	if resv, err := hugeCount(size, -1, "resv_hugepages"); err == nil {
		free -= resv
	}
	if free < need {
		total, _ := hugeCount(size, -1, "nr_hugepages")
		return fmt.Errorf("hugepages: %s of RAM needs %d pages of %s, %d free (of %d reserved; see hugepages: in the configuration)",
			vm.Memory, need, size, free, total)
	}
	for _, node := range vm.NUMA.HostNodes() {
		ram := boundRAM(vm, node)
		need := int(ram / size)
		free, err := hugeCount(size, node, "free_hugepages")
		if err != nil {
			return fmt.Errorf("hugepages: host node %d has no pool of %s pages: %w", node, size, err)
		}
		if free < need {
			total, _ := hugeCount(size, node, "nr_hugepages")
			return fmt.Errorf("hugepages: %s of RAM bound to host node %d needs %d pages of %s, %d free there (of %d reserved on it; see hugepages: in the configuration)",
				ram, node, need, size, free, total)
		}
	}
	return nil
}

// boundRAM is how much of vm's RAM is bound to host node.
func boundRAM(vm config.VM, node int) config.Size {
	if vm.NUMA.Node != nil {
		if *vm.NUMA.Node == node {
			return vm.Memory
		}
		return 0
	}
	var ram config.Size
	for _, vn := range vm.NUMA.Nodes {
		if vn.HostNode != nil && *vn.HostNode == node {
			ram += vn.Memory
		}
	}
	return ram
}

// thpDir holds the kernel's transparent huge page knobs.
var thpDir = "/sys/kernel/mm/transparent_hugepage"

// thpOff disables transparent huge pages for PID 1 and all it starts.
var thpOff = func() { unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0) }

// guestTHP lets guest RAM, and nothing else, take transparent huge pages:
// THP "madvise" (only what asks: the VMMs' guest RAM, vmm/memory), shmem
// "advise" (guest RAM is a memfd). Each first touch of a guest page is a
// nested page fault into KVM; with 2 MiB pages the test guest started in
// 0.60 of the time under the TCG test bed. PID 1's own memory, the
// switch's and the VMMs' Go heaps stay in 4 KiB pages: Debian's default,
// THP "always", makes each Go process's sparse runtime structures cost
// whole 2 MiB pages (init/vmm.go withoutTHP measured it).
//
// A kernel whose knobs cannot be set keeps guest RAM in 4 KiB pages; that
// is said, not an error, and PID 1 then disables THP for itself and
// everything it starts (the flag is inherited across fork and exec), as
// it did before guest RAM asked for huge pages. It must not otherwise: the
// flag also keeps the VMMs' guest RAM out of huge pages.
func guestTHP(c *console) {
	for _, k := range [][2]string{{"enabled", "madvise"}, {"shmem_enabled", "advise"}} {
		if err := os.WriteFile(filepath.Join(thpDir, k[0]), []byte(k[1]), 0); err != nil {
			c.Printf("thp: guest RAM in 4 KiB pages: %s: %v", k[0], err)
			thpOff()
			return
		}
	}
	c.Printf("thp: guest RAM may take 2 MiB pages (enabled=madvise shmem_enabled=advise)")
}
