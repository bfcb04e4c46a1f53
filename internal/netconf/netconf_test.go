package netconf

import (
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// inNewNetns runs fn on a locked thread moved into a fresh network
// namespace (which has only lo), so the test changes nothing on the host.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// TestSetAddressAndRoute configures one end of a veth pair in a new namespace
// and checks with the kernel's own view (/proc/net/route and
// SIOCGIFADDR) that the address, netmask and default route are there.
func TestSetAddressAndRoute(t *testing.T) {
	testenv.Need(t, unix.Geteuid() == 0, "root (network namespaces)")
	_, err := exec.LookPath("ip")
	testenv.Need(t, err == nil, "the ip command (iproute2) to create a veth pair")
	inNewNetns(t, func() {
		if out, err := exec.Command("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1").CombinedOutput(); err != nil {
			t.Errorf("ip link add veth: %v: %s", err, out)
			return
		}
		if err := SetAddress("d0", netip.MustParsePrefix("10.9.8.7/24")); err != nil {
			t.Error(err)
			return
		}
		if err := AddDefaultRoute(netip.MustParseAddr("10.9.8.1")); err != nil {
			t.Error(err)
			return
		}
		if err := AddDefaultRoute(netip.MustParseAddr("10.9.8.1")); err == nil || !strings.Contains(err.Error(), "file exists") {
			t.Errorf("second default route: %v, want EEXIST", err)
		}
		out, _ := exec.Command("ip", "-4", "addr", "show", "d0").CombinedOutput()
		if !strings.Contains(string(out), "inet 10.9.8.7/24") || !strings.Contains(string(out), "UP") {
			t.Errorf("d0 after SetAddress:\n%s", out)
		}
		out, _ = exec.Command("ip", "-4", "route", "show", "default").CombinedOutput()
		if !strings.Contains(string(out), "default via 10.9.8.1 dev d0") {
			t.Errorf("routes after AddDefaultRoute:\n%s", out)
		}
	})
}

func TestSetAddressErrors(t *testing.T) {
	if err := SetAddress("x", netip.MustParsePrefix("fd00::1/64")); err == nil {
		t.Error("IPv6 address accepted")
	}
	if err := AddDefaultRoute(netip.MustParseAddr("fd00::1")); err == nil {
		t.Error("IPv6 gateway accepted")
	}
	if err := SetAddress("no-such-if0", netip.MustParsePrefix("10.0.0.1/24")); err == nil {
		t.Error("missing interface accepted")
	}
}
