package e2e

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestTwoTiBGuest: the guest memory layout holds 2 TiB. A VM configured
// with 2T boots (its RAM is a sparse memfd: the appliance has 2 GiB) with
// mem=256M on its command line, so that its kernel uses only that; the
// guest reads the firmware's memory map, as the VMM's e820 table gave it,
// which must cover 2 TiB of RAM, then writes and reads back the last page
// below 2 TiB through /dev/mem: memory the guest kernel was told not to
// use, so nothing else there touches it.
func TestTwoTiBGuest(t *testing.T) {
	parallel(t)
	const size = 2 << 40
	probe := strconv.FormatUint(size-4096, 16)
	testbed(t, func(t testing.TB) {
		cfg := configFile(t, "vms:\n"+loadVM("big", "memmap", 1, "2T", "", "mem=256M", "hyperroot.probe=0x"+probe))
		// 48 physical address bits, as a server CPU has: TCG's default
		// 40 would cap the appliance's KVM at 1 TiB of guest RAM.
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, PhysBits: 48})
		expect(t, m, `hyperroot: vm big started pid=\d+ cpus=1 memory=2T`)
		l := expect(t, m, `^big\| guest: memmap ram=\d+$`)
		ram, _ := strconv.ParseUint(l[len("big| guest: memmap ram="):], 10, 64)
		expect(t, m, `^big\| guest: memmap probe 0x`+probe+` ok$`)
		r := m.Wait()
		if !r.OK() {
			t.Fatalf("appliance verdict %q", r.Verdict)
		}
		// The VMM keeps the legacy hole below 1 MiB (and nothing
		// more) out of the guest's RAM.
		if ram > size || ram < size-(1<<20) {
			t.Errorf("the memory map holds %d bytes of RAM, want 2 TiB less at most the 1 MiB legacy area", ram)
		}
		top := regexp.MustCompile(`^big\| guest: memmap 0x([0-9a-f]+)-0x([0-9a-f]+) System RAM$`)
		var end uint64
		for _, l := range r.Lines {
			if m := top.FindStringSubmatch(l); m != nil {
				e, _ := strconv.ParseUint(m[2], 16, 64)
				end = max(end, e)
			}
		}
		if end < size-1 {
			t.Errorf("the highest RAM ends at %#x, below 2 TiB", end)
		}
		t.Logf("2 TiB guest: %d bytes of RAM in its memory map, up to %#x; page %#x written and read back", ram, end, uint64(size-4096))
	})
}
