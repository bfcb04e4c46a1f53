package e2e

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestHugePages: the appliance reserves the configuration's 2M pages at
// boot; a VM backed by them takes its whole size from the pool while it
// runs (prefaulted at start) and gives it back when it stops; a VM needing
// more pages than the pool holds does not start, with an error naming it
// and the counts; so does one asking for 1G pages on a CPU without them.
// 1G pages: TestHugePages1G.
func TestHugePages(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "hugepages: {2M: 96}\nvms:\n"+
			loadVM("huge", "echo", 1, "128M", "    hugepages: 2M\n")+
			loadVM("toobig", "poweroff", 1, "256M", "    hugepages: 2M\n")+
			loadVM("gig", "poweroff", 1, "1G", "    hugepages: 1G\n")+
			// Keeps the oneshot appliance up until the pool is read
			// again after huge has gone.
			loadVM("keeper", "echo", 1, "96M", ""))
		// A CPU without 1 GiB pages: the kernel has no such pool, and a
		// VM that asks for them gets an error that says so.
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr, CPUFeatures: []string{"-pdpe1gb"}})
		// The pool's first report ends the wait either way: a short
		// reservation is an error line, not a hang.
		if l := expect(t, m, `hyperroot: (error: )?hugepages: `); !strings.HasSuffix(l, "hyperroot: hugepages: 2M total=96 free=96") {
			t.Fatalf("reserving 96 pages of 2M: %s", l)
		}
		expect(t, m, `hyperroot: error: vm toobig: hugepages: 256M of RAM needs 128 pages of 2M, \d+ free \(of 96 reserved`)
		seen(t, m, `hyperroot: error: vm gig: hugepages: this host has no pool of 1G pages: its CPU or kernel does not offer that size`)
		expect(t, m, `^huge\| guest: action echo`)
		fmt.Fprintln(pw, "hugepages")
		expect(t, m, `hyperroot: hugepages: 2M total=96 free=32$`)
		fmt.Fprintln(pw, "@huge poweroff")
		expect(t, m, `hyperroot: vm huge exited code=0 reason=poweroff$`)
		fmt.Fprintln(pw, "hugepages")
		expect(t, m, `hyperroot: hugepages: 2M total=96 free=96$`)
		seen(t, m, `^keeper\| guest: action echo`)
		fmt.Fprintln(pw, "@keeper poweroff")
		m.Wait()
	})
}

// TestHugePages1G: a VM backed by a 1 GiB page. The appliance's kernel
// reserves it from its command line (hugepagesz=1G hugepages=1), which
// needs a free, 1 GiB-aligned gigabyte of physical memory early in boot:
// an appliance of 2 GiB has none (its kernel sits in the first, its
// initramfs at the top of the second), so this one has 4 GiB, whose
// RAM above 4 GiB holds one. At run time the kernel found no such room
// even then (PID 1 says so and names the command line). The config asks
// for the page it needs, the pool reports it, the VM takes it while it
// runs and gives it back.
func TestHugePages1G(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "hugepages: {1G: 1}\nvms:\n"+
			loadVM("giant", "echo", 1, "1G", "    hugepages: 1G\n")+
			loadVM("keeper", "echo", 1, "96M", ""))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr, Memory: "4G",
			Append: "hugepagesz=1G hugepages=1"})
		if l := expect(t, m, `hyperroot: (error: )?hugepages: `); !strings.HasSuffix(l, "hyperroot: hugepages: 1G total=1 free=1") {
			t.Fatalf("reserving one page of 1G: %s", l)
		}
		l := expect(t, m, `^giant\| guest: booted `)
		if !strings.Contains(l, "memtotal_kb=") {
			t.Fatalf("no memory size in %q", l)
		}
		expect(t, m, `^giant\| guest: action echo`)
		fmt.Fprintln(pw, "hugepages")
		expect(t, m, `hyperroot: hugepages: 1G total=1 free=0$`)
		fmt.Fprintln(pw, "@giant poweroff")
		expect(t, m, `hyperroot: vm giant exited code=0 reason=poweroff$`)
		fmt.Fprintln(pw, "hugepages")
		expect(t, m, `hyperroot: hugepages: 1G total=1 free=1$`)
		seen(t, m, `^keeper\| guest: action echo`)
		fmt.Fprintln(pw, "@keeper poweroff")
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
	})
}
