package netconf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// TestSetAddressAndRoute configures one end of a veth pair in a new namespace
// and checks with the kernel's own view (/proc/net/route and
// SIOCGIFADDR) that the address, netmask and default route are there.
func TestSetAddressAndRoute(t *testing.T) {
	ns := netnstest.New(t)
	ns.Veth(t, "d0", "d1")
	ns.Do(t, func() {
		if err := SetAddress("d0", netip.MustParsePrefix("10.9.8.7/24")); err != nil {
			t.Fatal(err)
		}
		if err := AddDefaultRoute(netip.MustParseAddr("10.9.8.1")); err != nil {
			t.Fatal(err)
		}
		if err := AddDefaultRoute(netip.MustParseAddr("10.9.8.1")); err == nil || !strings.Contains(err.Error(), "file exists") {
			t.Errorf("second default route: %v, want EEXIST", err)
		}
	})
	if out := ns.IP(t, "-4", "addr", "show", "d0"); !strings.Contains(out, "inet 10.9.8.7/24") || !strings.Contains(out, "UP") {
		t.Errorf("d0 after SetAddress:\n%s", out)
	}
	if out := ns.IP(t, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.9.8.1 dev d0") {
		t.Errorf("routes after AddDefaultRoute:\n%s", out)
	}
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
