package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestHostDHCP: with `host: {network: lan, address: dhcp}` the supervisor
// leases the appliance's management address from the switch's own DHCP
// server through the host port (the tap hr-host), and after the switch is
// killed (its tap, address and route go with it) puts the same lease back
// on the new tap.
func TestHostDHCP(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(cfg, []byte("networks:\n"+lanNet+"host: {network: lan, address: dhcp}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		pr, pw := io.Pipe()
		defer pw.Close()
		m := start(t, qemu.Options{Config: cfg, Stdin: pr})
		const leased = `hyperroot: host address 10\.20\.0\.100/24 router 10\.20\.0\.1 \(dhcp\)$`
		expect(t, m, `switch\| host port hr-host on network lan address dhcp`)
		// The switch reports the ACK before the supervisor applies it.
		expect(t, m, `switch\| lease network=lan ip=10\.20\.0\.100 `)
		expect(t, m, leased)
		fmt.Fprintln(pw, "switch kill")
		expect(t, m, `hyperroot: switch exited code=137`)
		// Back on the new tap (possibly before the new switch's
		// "ready" is relayed: that line takes another path).
		expect(t, m, leased)
		if err := m.QMP("system_powerdown", ""); err != nil {
			t.Fatal(err)
		}
		r := m.Wait()
		if !r.PowerOff || r.Panic {
			t.Errorf("power off: exit %d poweroff=%v panic=%v", r.ExitCode, r.PowerOff, r.Panic)
		}
		if hasLine(r.Lines, `hyperroot: error: host address`) {
			t.Error("the supervisor reported a host address error")
		}
		// The tap is the host's: the jailed switch stays in the host's
		// network namespace, before and after its restart.
		checkSwitchJailed(t, r.Lines, 2, true)
	})
}
