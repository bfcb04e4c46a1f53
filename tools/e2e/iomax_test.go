package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestIOMax: a VM's qos io limits its reads on the appliance's disk. The
// guest measures 4 KiB random O_DIRECT reads for 10 s of its clock
// (disk-iops) on a disk opened with direct: true, so that every read
// reaches the appliance's /dev/vda, where the cgroup's io.max counts it.
// The VM restarts after each run: the first runs unlimited (what this
// machine does now), then the console's qos command caps it at a third
// of that, and the second run must come within 15 % of the cap.
func TestIOMax(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, `vms:
  - name: io
    cpus: 1
    memory: 128M
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 panic=-1 quiet hyperroot.guest=disk-iops
    restart: always
    disks:
      - {path: /dev/vda, direct: true, readonly: true}
`)
		m := start(t, qemu.Options{Config: cfg, Stdin: pr, Drives: []string{img}})
		expect(t, m, `hyperroot: cgroups: .*\bio\b`)
		rate := func() int {
			l := expect(t, m, `^io\| guest: iops vda serial=io-0 \d+$`)
			n, _ := strconv.Atoi(l[len("io| guest: iops vda serial=io-0 "):])
			return n
		}
		free := rate()
		limit := max(free/3, 3)
		t.Logf("no limit: %d reads/s; capping at %d", free, limit)
		fmt.Fprintf(pw, "qos io {io: [{device: /dev/vda, riops: %d}]}\n", limit)
		expect(t, m, fmt.Sprintf(`hyperroot: qos io set: .* io\.max=\d+:\d+,rbps=max,wbps=max,riops=%d,wiops=max$`, limit))
		// The run after the change, not one that was already measuring.
		expect(t, m, `hyperroot: vm io exited code=0 reason=poweroff`)
		got := rate()
		t.Logf("io.max riops=%d: %d reads/s", limit, got)
		if d := float64(got)/float64(limit) - 1; d < -0.15 || d > 0.15 {
			t.Errorf("%d reads/s under riops=%d, want within 15%%", got, limit)
		}
		if err := m.QMP("system_powerdown", ""); err != nil {
			t.Fatal(err)
		}
		if r := m.Wait(); !r.PowerOff {
			t.Errorf("no clean power-off after the power button")
		}
	})
}
