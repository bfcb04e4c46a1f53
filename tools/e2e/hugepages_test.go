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
// and the counts. (1G pages are not shown: the emulated appliance's kernel
// reserved none, neither from its command line nor at run time.)
func TestHugePages(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "hugepages: {2M: 96}\nvms:\n"+
			loadVM("huge", "echo", 1, "128M", "    hugepages: 2M\n")+
			loadVM("toobig", "poweroff", 1, "256M", "    hugepages: 2M\n")+
			// Keeps the oneshot appliance up until the pool is read
			// again after huge has gone.
			loadVM("keeper", "echo", 1, "96M", ""))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr})
		// The pool's first report ends the wait either way: a short
		// reservation is an error line, not a hang.
		if l := expect(t, m, `hyperroot: (error: )?hugepages: `); !strings.HasSuffix(l, "hyperroot: hugepages: 2M total=96 free=96") {
			t.Fatalf("reserving 96 pages of 2M: %s", l)
		}
		expect(t, m, `hyperroot: error: vm toobig: hugepages: 256M of RAM needs 128 pages of 2M, \d+ free \(of 96 reserved`)
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
