package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
)

// fakeHugePages points hugePagesDir at a directory with a 2M pool of
// total pages, free of them free, and no 1G pool.
func fakeHugePages(t *testing.T, total, free string) string {
	dir := t.TempDir()
	pool := filepath.Join(dir, "hugepages-2048kB")
	os.Mkdir(pool, 0o755)
	os.WriteFile(filepath.Join(pool, "nr_hugepages"), []byte(total+"\n"), 0o644)
	os.WriteFile(filepath.Join(pool, "free_hugepages"), []byte(free+"\n"), 0o644)
	old, oldNodes := hugePagesDir, nodeDir
	hugePagesDir, nodeDir = dir, filepath.Join(dir, "node")
	os.MkdirAll(filepath.Join(nodeDir, "node0"), 0o755)
	os.WriteFile(filepath.Join(nodeDir, "online"), []byte("0\n"), 0o644)
	t.Cleanup(func() { hugePagesDir, nodeDir = old, oldNodes })
	return pool
}

// fakeNodePool gives fake host node a 2M pool of total pages, free of
// them free.
func fakeNodePool(t *testing.T, node, total, free string) string {
	pool := filepath.Join(nodeDir, "node"+node, "hugepages", "hugepages-2048kB")
	os.MkdirAll(pool, 0o755)
	os.WriteFile(filepath.Join(pool, "nr_hugepages"), []byte(total+"\n"), 0o644)
	os.WriteFile(filepath.Join(pool, "free_hugepages"), []byte(free+"\n"), 0o644)
	return pool
}

func TestCheckHugePages(t *testing.T) {
	fakeHugePages(t, "96", "32")
	vm := config.VM{Name: "a", Memory: 64 << 20, HugePages: config.Huge2M}
	if err := checkHugePages(vm); err != nil {
		t.Errorf("32 pages for 64M: %v", err)
	}
	vm.Memory = 128 << 20
	err := checkHugePages(vm)
	if err == nil || !strings.Contains(err.Error(), "128M of RAM needs 64 pages of 2M, 32 free (of 96 reserved") {
		t.Errorf("64 pages needed, 32 free: %v", err)
	}
	vm.HugePages = config.Huge1G
	vm.Memory = 1 << 30
	if err := checkHugePages(vm); err == nil || !strings.Contains(err.Error(), "this host has no pool of 1G pages: its CPU or kernel does not offer that size") {
		t.Errorf("no 1G pool: %v", err)
	}
	if got := hugePagesStatus(); got != "2M total=96 free=32" {
		t.Errorf("status %q", got)
	}
}

func TestReserveHugePages(t *testing.T) {
	pool := fakeHugePages(t, "0", "0")
	var out syncBuffer
	c := newConsole(&out)
	reserveHugePages(c, map[config.Size]config.HugePool{config.Huge2M: {Pages: 48}, config.Huge1G: {Pages: 1}})
	c.Flush(5 * time.Second)
	if b, _ := os.ReadFile(filepath.Join(pool, "nr_hugepages")); string(b) != "48" {
		t.Errorf("nr_hugepages = %q, want 48", b)
	}
	got := out.String()
	for _, want := range []string{"hyperroot: error: hugepages: 1G pages: the CPU or kernel has none", "hyperroot: hugepages: 2M total=48 free=0"} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
}

// TestHugePagesPerNode: pools reserved per host node, reported per node
// on a host of several, and a VM bound to a node checked against that
// node's free pages, not only the host's.
func TestHugePagesPerNode(t *testing.T) {
	fakeHugePages(t, "80", "80")
	node0 := fakeNodePool(t, "0", "0", "0")
	node1 := fakeNodePool(t, "1", "0", "0")
	os.WriteFile(filepath.Join(nodeDir, "online"), []byte("0-1\n"), 0o644)
	var out syncBuffer
	c := newConsole(&out)
	reserveHugePages(c, map[config.Size]config.HugePool{config.Huge2M: {Pages: 83, Nodes: map[int]int{0: 16, 1: 64, 5: 3}}})
	c.Flush(5 * time.Second)
	for pool, want := range map[string]string{node0: "16", node1: "64"} {
		if b, _ := os.ReadFile(filepath.Join(pool, "nr_hugepages")); string(b) != want {
			t.Errorf("%s: nr_hugepages = %q, want %s", pool, b, want)
		}
	}
	got := out.String()
	// The fake pools do not fill their free counts: the kernel's would.
	for _, want := range []string{"hyperroot: error: hugepages: 2M pages: host node 5: this host's NUMA nodes are 0-1",
		"hyperroot: hugepages: 2M total=80 free=80 node0=0/16 node1=0/64"} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
	fakeNodePool(t, "0", "16", "16")
	fakeNodePool(t, "1", "64", "40")
	one := 1
	vm := config.VM{Name: "a", Memory: 64 << 20, HugePages: config.Huge2M, NUMA: config.NUMA{Node: &one}}
	if err := checkHugePages(vm); err != nil {
		t.Errorf("32 pages on node 1, 40 free there: %v", err)
	}
	vm.Memory = 96 << 20
	if err := checkHugePages(vm); err == nil || !strings.Contains(err.Error(), "96M of RAM bound to host node 1 needs 48 pages of 2M, 40 free there (of 64 reserved on it") {
		t.Errorf("48 pages on node 1, 40 free there: %v", err)
	}
	zero := 0
	vm.NUMA = config.NUMA{Nodes: []config.VNode{{Memory: 32 << 20, HostNode: &zero}, {Memory: 32 << 20}, {Memory: 32 << 20, HostNode: &zero}}}
	if err := checkHugePages(vm); err == nil || !strings.Contains(err.Error(), "64M of RAM bound to host node 0 needs 32 pages of 2M, 16 free there") {
		t.Errorf("guest nodes 0 and 2 on host node 0: %v", err)
	}
}

// TestResizePoolInterrupted is the kernel's pool filling as it behaves
// when its writer has a signal pending: each request adds a few pages and
// returns. The pool is asked again until it is full or stops growing.
func TestResizePoolInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		pool, perWrite, room  int
		want, wantGot, writes int
	}{
		{"interrupted each page", 0, 1, 1000, 96, 96, 96},
		{"interrupted in bursts", 0, 10, 1000, 96, 96, 10},
		{"memory runs out", 0, 7, 20, 96, 20, 4},
		{"shrink", 96, 1000, 1000, 10, 10, 1},
		{"nothing to allocate", 0, 5, 0, 8, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool, writes := tc.pool, 0
			write := func(n int) error {
				writes++
				if n <= pool {
					pool = n
					return nil
				}
				pool = min(n, pool+tc.perWrite, tc.room)
				return nil
			}
			read := func() (int, error) { return pool, nil }
			got, err := resizePool(tc.want, write, read)
			if err != nil || got != tc.wantGot {
				t.Errorf("got %d, %v; want %d", got, err, tc.wantGot)
			}
			// A request that brings nothing is the last: at most one more
			// than the requests that grew the pool.
			if writes > tc.writes+1 {
				t.Errorf("%d writes, want at most %d", writes, tc.writes+1)
			}
		})
	}
}

// TestGuestTHP: PID 1 sets THP to madvise and shmem to advise, so that
// only guest RAM (which asks) takes huge pages, and says so; a kernel
// without the knobs leaves 4 KiB pages, says that, and THP is disabled for
// PID 1's processes (only) then.
func TestGuestTHP(t *testing.T) {
	old, oldOff := thpDir, thpOff
	defer func() { thpDir, thpOff = old, oldOff }()
	off := 0
	thpOff = func() { off++ }
	thpDir = t.TempDir()
	for _, f := range []string{"enabled", "shmem_enabled"} {
		if err := os.WriteFile(filepath.Join(thpDir, f), []byte("always"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out syncBuffer
	c := newConsole(&out)
	guestTHP(c)
	c.Flush(time.Second)
	for f, want := range map[string]string{"enabled": "madvise", "shmem_enabled": "advise"} {
		if got, _ := os.ReadFile(filepath.Join(thpDir, f)); string(got) != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if !strings.Contains(out.String(), "thp: guest RAM may take 2 MiB pages") {
		t.Errorf("console: %q", out.String())
	}
	if off != 0 {
		t.Error("THP disabled for PID 1 and its children (guest RAM included) where it could be set to madvise")
	}
	thpDir = filepath.Join(t.TempDir(), "none")
	guestTHP(c)
	c.Flush(time.Second)
	if !strings.Contains(out.String(), "thp: guest RAM in 4 KiB pages: enabled:") {
		t.Errorf("console without THP: %q", out.String())
	}
	if off != 1 {
		t.Errorf("THP disabled %d times where its mode could not be set, want once (as before guest RAM asked for it)", off)
	}
}
