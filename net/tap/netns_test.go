package tap

import (
	"os"
	"testing"

	"github.com/hyperroot/hyperroot/internal/netnstest"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

// newNetns is a fresh network namespace for one test, so the test's
// addresses, routes and devices never meet the host's; taps also need
// /dev/net/tun.
func newNetns(t testing.TB) *netnstest.NS {
	t.Helper()
	ns := netnstest.New(t)
	_, err := os.Stat("/dev/net/tun")
	testenv.Need(t, err == nil, "/dev/net/tun (modprobe tun)")
	return ns
}
