package main

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/net/vswitch"
)

// TestClaims6RestoreAndRecord: a restarted switch gives each port the IPv6
// addresses its previous run recorded, refuses what another port holds,
// forgets ports no longer configured and malformed lines, rewrites the
// file with what holds, and records new claims.
func TestClaims6RestoreAndRecord(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, claims6File)
	os.WriteFile(path, []byte("a.0 2001:db8::1\nb.0 2001:db8::1\ngone.0 2001:db8::5\na.0 garbage\nb.0 2001:db8::2\n"), 0o600)
	var logged []string
	c := openClaims6(path, func(f string, a ...any) { logged = append(logged, f) })
	sw := vswitch.New(vswitch.Options{Claimed6: c.claimed})
	lan, err := sw.AddNetwork("lan", 0)
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]*vswitch.VirtioPort{}
	for name, mac := range map[string]string{"a.0": "52:54:00:00:00:0a", "b.0": "52:54:00:00:00:0b"} {
		hw, _ := net.ParseMAC(mac)
		p, err := sw.AddVirtioPort(name, vswitch.VirtioConfig{Network: lan, MAC: hw, LockIP: true})
		if err != nil {
			t.Fatal(err)
		}
		ports[name] = p
	}
	c.restore(ports)
	if ports["b.0"].Claim6(netip.MustParseAddr("2001:db8::1")) {
		t.Error("b.0 could claim the address restored to a.0")
	}
	if ports["a.0"].Claim6(netip.MustParseAddr("2001:db8::2")) {
		t.Error("a.0 could claim the address restored to b.0")
	}
	// New claims, which the switch reports through Options.Claimed6 (a
	// restored one is not reported: vswitch's TestIPv6ClaimsRestored),
	// are recorded off the caller's goroutine.
	c.claimed(ports["a.0"], netip.MustParseAddr("2001:db8::3"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		got := string(data)
		if strings.Contains(got, "a.0 2001:db8::3\n") {
			for _, want := range []string{"a.0 2001:db8::1\n", "b.0 2001:db8::2\n"} {
				if !strings.Contains(got, want) {
					t.Errorf("file lacks %q:\n%s", want, got)
				}
			}
			for _, gone := range []string{"gone.0", "garbage", "b.0 2001:db8::1"} {
				if strings.Contains(got, gone) {
					t.Errorf("file still has %q:\n%s", gone, got)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new claim not recorded:\n%s", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
