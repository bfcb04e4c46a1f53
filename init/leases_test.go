package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

func TestLeaseNetwork(t *testing.T) {
	for line, want := range map[string]string{
		"lease network=lan ip=10.0.0.5 mac=52:54:00:00:00:01 port=a.0": "lan",
		"lease network=":      "",
		"leases network=lan":  "",
		"stats port a.0 rx=1": "",
	} {
		got, ok := leaseNetwork(line)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", line, got, ok, want)
		}
	}
}

// TestKeepAndRestoreLeases: a network's lease file goes to the data disk
// and back into a new switch directory; a name that is not a network of
// the configuration (the switch's output is not trusted) names no file.
func TestKeepAndRestoreLeases(t *testing.T) {
	old := leasesDir
	leasesDir = filepath.Join(t.TempDir(), "leases")
	t.Cleanup(func() { leasesDir = old })
	cfg := &config.Config{Networks: []config.Network{{Name: "lan"}, {Name: "dmz"}}}
	sw := t.TempDir()
	if err := os.WriteFile(leaseFile(sw, "lan"), []byte("lease table"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := keepLeases(cfg, sw, "lan"); err != nil {
		t.Fatal(err)
	}
	if err := keepLeases(cfg, sw, "dmz"); err != nil { // no file yet: nothing to keep
		t.Fatal(err)
	}
	for _, bad := range []string{"../../etc/passwd", "wan", ""} {
		if err := keepLeases(cfg, sw, bad); err == nil || !strings.Contains(err.Error(), "not one of the configuration's") {
			t.Errorf("network %q: %v", bad, err)
		}
	}
	// What a taken switch might leave instead: a link to the
	// appliance's secrets, a FIFO.
	secret := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(secret, []byte("secret"), 0o600)
	os.Remove(leaseFile(sw, "dmz"))
	if err := os.Symlink(secret, leaseFile(sw, "dmz")); err != nil {
		t.Fatal(err)
	}
	if err := keepLeases(cfg, sw, "dmz"); err == nil {
		t.Error("a symbolic link was kept as a lease file")
	}
	os.Remove(leaseFile(sw, "dmz"))
	if err := unix.Mkfifo(leaseFile(sw, "dmz"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := keepLeases(cfg, sw, "dmz"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO: %v", err)
	}
	os.Remove(leaseFile(sw, "dmz"))
	var out syncBuffer
	c := newConsole(&out)
	next := filepath.Join(t.TempDir(), "switch")
	restoreLeases(c, cfg, next)
	c.Flush(5 * time.Second)
	if b, err := os.ReadFile(leaseFile(next, "lan")); err != nil || string(b) != "lease table" {
		t.Errorf("restored: %q, %v", b, err)
	}
	if _, err := os.Stat(leaseFile(next, "dmz")); err == nil {
		t.Error("a network without kept leases got a file")
	}
	if !strings.Contains(out.String(), "leases: 1 networks' leases restored from "+leasesDir) {
		t.Errorf("console: %q", out.String())
	}
}
