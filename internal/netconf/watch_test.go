package netconf

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/netnstest"
)

// TestReconfigure walks through what a DHCP client does to its interface
// over a lease's life, in a new namespace, checking the kernel's view
// after each step: address, replaced default route, a changed address,
// the address gone, and the interface recreated under the same name (as
// the switch's tap is when the switch restarts), with Watch noticing.
func TestReconfigure(t *testing.T) {
	ns := netnstest.New(t)
	sh := func(args ...string) string { return ns.IP(t, args...) }
	ns.Do(t, func() {
		sh("link", "add", "w0", "type", "veth", "peer", "name", "w1")
		w, err := NewWatch()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if woke, err := w.Wait(50 * time.Millisecond); woke || err != nil {
			t.Errorf("Wait with nothing changing = %v, %v", woke, err)
		}

		p1 := netip.MustParsePrefix("10.5.0.9/24")
		if err := SetAddress("w0", p1); err != nil {
			t.Error(err)
			return
		}
		if woke, err := w.Wait(time.Second); !woke || err != nil {
			t.Errorf("Wait after an address change = %v, %v", woke, err)
		}
		idx, ok, err := HasAddress("w0", p1)
		if err != nil || !ok || idx == 0 {
			t.Errorf("HasAddress(w0, %s) = %d %v %v", p1, idx, ok, err)
		}
		if _, ok, _ := HasAddress("w0", netip.MustParsePrefix("10.5.0.9/16")); ok {
			t.Error("HasAddress ignores the prefix length")
		}
		for _, gw := range []string{"10.5.0.1", "10.5.0.1", "10.5.0.254"} {
			if err := SetDefaultRoute(netip.MustParseAddr(gw)); err != nil {
				t.Errorf("SetDefaultRoute(%s): %v", gw, err)
			}
			out := sh("-4", "route", "show", "default")
			if strings.Count(out, "default") != 1 || !strings.Contains(out, "default via "+gw+" dev w0") {
				t.Errorf("after SetDefaultRoute(%s):\n%s", gw, out)
			}
		}

		// A new lease with another address replaces the old one.
		p2 := netip.MustParsePrefix("10.5.0.10/24")
		if err := SetAddress("w0", p2); err != nil {
			t.Error(err)
		}
		if out := sh("-4", "addr", "show", "w0"); strings.Count(out, "inet ") != 1 || !strings.Contains(out, "inet 10.5.0.10/24") {
			t.Errorf("after a second SetAddress:\n%s", out)
		}

		for range 2 { // the second time there is nothing to remove
			if err := ClearAddress("w0"); err != nil {
				t.Errorf("ClearAddress: %v", err)
			}
		}
		if out := sh("-4", "addr", "show", "w0"); strings.Contains(out, "inet ") {
			t.Errorf("after ClearAddress:\n%s", out)
		}
		if out := sh("-4", "route", "show", "default"); strings.Contains(out, "default") {
			t.Errorf("default route outlived the address:\n%s", out)
		}

		w.Wait(0) // drain
		sh("link", "del", "w0")
		sh("link", "add", "w0", "type", "veth", "peer", "name", "w1")
		if woke, err := w.Wait(time.Second); !woke || err != nil {
			t.Errorf("Wait after the link was recreated = %v, %v", woke, err)
		}
		idx2, ok, err := HasAddress("w0", p2)
		if err != nil || ok || idx2 == idx {
			t.Errorf("recreated w0: HasAddress = %d %v %v (old index %d)", idx2, ok, err, idx)
		}
		if _, _, err := HasAddress("nope0", p2); err == nil {
			t.Error("HasAddress on a missing interface: no error")
		}
		if err := ClearAddress("nope0"); err == nil {
			t.Error("ClearAddress on a missing interface: no error")
		}
	})
}
