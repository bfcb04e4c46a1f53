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
	old := hugePagesDir
	hugePagesDir = dir
	t.Cleanup(func() { hugePagesDir = old })
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
	if err := checkHugePages(vm); err == nil || !strings.Contains(err.Error(), "no pool of 1G pages") {
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
	reserveHugePages(c, map[config.Size]int{config.Huge2M: 48, config.Huge1G: 1})
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
