package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/vhostuser"
)

// TestLiveCapture: PID 1's side asks a running switch for a port's
// capture over its control socket and reads back, record by record, the
// frames the port's tap sees; unknown ports and captures beyond
// maxLiveCaptures are refused with the API's errors; a capture whose
// reader hangs up is taken off its port.
func TestLiveCapture(t *testing.T) {
	rs, sw, out, _ := controlledSwitch(t)
	if _, err := sw.Capture("b.0"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("capture of a port that does not exist: %v", err)
	}
	var streams []*pcapStream
	for i := range maxLiveCaptures {
		s, err := sw.Capture("a.0")
		if err != nil {
			t.Fatalf("capture %d: %v", i, err)
		}
		streams = append(streams, s)
	}
	if _, err := sw.Capture("a.0"); !errors.Is(err, api.ErrBusy) {
		t.Errorf("capture %d: %v, want busy", maxLiveCaptures+1, err)
	}
	tap := rs.tap(rs.portNamed("a.0"))
	writers := func() int {
		tap.mu.Lock()
		defer tap.mu.Unlock()
		return len(tap.ws)
	}
	waitUntil(t, "every capture on the port", func() bool { return writers() == maxLiveCaptures })
	frame := bytes.Repeat([]byte{0xab}, 98)
	tap.mu.Lock()
	for _, w := range tap.ws {
		w.WriteFrame(frame, time.Now())
	}
	tap.mu.Unlock()
	for i, s := range streams {
		rec, err := s.Next()
		if err != nil || !bytes.Equal(rec[16:], frame) {
			t.Fatalf("stream %d: %d bytes, %v", i, len(rec), err)
		}
		s.Close()
	}
	waitUntil(t, "the captures off the port", func() bool { return writers() == 0 && rs.live.Load() == 0 })
	out.wait(t, "capture of port a.0 ended dropped=0")
	if s, err := sw.Capture("a.0"); err != nil {
		t.Errorf("a capture after the others ended: %v", err)
	} else {
		s.Close()
	}
}

// controlledSwitch runs the switch of extTestConfig in this process (not
// jailed) and returns it, PID 1's side of its control socket, its log and
// its directory.
func controlledSwitch(t *testing.T) (*runningSwitch, *netSwitch, *logLines, string) {
	t.Helper()
	_, cfg := extConfig(t)
	dir := t.TempDir()
	out := &logLines{}
	rs, err := startSwitch(cfg, dir, nil, out.logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Close)
	return rs, &netSwitch{dir: dir}, out, dir
}

// waitUntil waits up to 5 s for cond.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPrepareSwitchDirKeepsControlSocket: the set-up's second pass over
// the switch's directory (after the switch made its sockets, before it
// jails itself) keeps the control socket and removes what a switch never
// leaves there.
func TestPrepareSwitchDirKeepsControlSocket(t *testing.T) {
	dir := t.TempDir()
	var out logLines
	l, err := net.Listen("unix", filepath.Join(dir, controlSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := net.Listen("unix", filepath.Join(dir, "other.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := os.Symlink("/etc", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lan.leases"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := prepareSwitchDir(dir, os.Getuid(), nil, out.logf); err != nil {
		t.Fatal(err)
	}
	for name, kept := range map[string]bool{controlSocket: true, "lan.leases": true, "other.sock": false, "link": false} {
		if _, err := os.Lstat(filepath.Join(dir, name)); (err == nil) != kept {
			t.Errorf("%s: kept %v, want %v (%v)", name, err == nil, kept, err)
		}
	}
}

// TestSetLimitsRequest: a NIC's limits reach the running switch's port
// through the control socket; requests the switch cannot take are refused
// with a reason, and nothing changes.
func TestSetLimitsRequest(t *testing.T) {
	_, sw, out, _ := controlledSwitch(t)
	l := config.NICLimits{RX: 8_000_000, TXPPS: 1000, Burst: 20 * time.Millisecond}
	if err := sw.SetLimits("a.0", l); err != nil {
		t.Fatal(err)
	}
	out.wait(t, "port a.0 limits rx=8000000 tx=0 rxpps=0 txpps=1000 burst=20000000")
	if err := sw.SetLimits("b.0", l); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("limits of a port that does not exist: %v", err)
	}
	for _, bad := range []string{"rx=1 tx=1", "rx=1 tx=1 rxpps=1 txpps=1 burst=-1", "rx=1 tx=1 rxpps=1 txpps=1 speed=1", "rx=1 rx=1 rxpps=1 txpps=1 burst=1"} {
		if _, err := parseLimitsRequest(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
		c, err := sw.request("limits a.0 " + bad)
		if err == nil {
			c.Close()
			t.Errorf("limits %q taken", bad)
		}
	}
	if got, err := parseLimitsRequest(formatLimitsRequest(l)); err != nil || got != l {
		t.Errorf("%+v read back as %+v, %v", l, got, err)
	}
}

// TestAddRemovePort: PID 1 adds a VM NIC's port to a running switch (it
// makes the socket and hands it over), a VMM's vhost-user connection is
// served there, and removing the port stops serving it; requests that
// clash with the switch's ports or networks are refused.
func TestAddRemovePort(t *testing.T) {
	rs, sw, out, dir := controlledSwitch(t)
	mac, _ := net.ParseMAC("52:54:00:00:00:02")
	vm := config.VM{Name: "x", NICs: []config.NIC{{Network: "lan", MAC: mac, Limits: config.NICLimits{TX: 1e6}}}}
	if err := sw.AddPort(vm, 0); err != nil {
		t.Fatal(err)
	}
	out.wait(t, "port x.0 added network=lan mac=52:54:00:00:00:02")
	fe, err := vhostuser.Dial(vmmcli.NICSocket(dir, "x", 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fe.GetFeatures(); err != nil {
		t.Fatalf("the added port is not served: %v", err)
	}
	fe.Close()
	if rs.byMAC.load(mac.String()) == nil || rs.dhcpOf.load(rs.portNamed("x.0")) == nil {
		t.Error("the added port has no MAC entry or no DHCP server")
	}
	for name, bad := range map[string]config.VM{
		"same MAC":      {Name: "y", NICs: []config.NIC{{Network: "lan", MAC: mac}}},
		"same port":     vm,
		"no network":    {Name: "z", NICs: []config.NIC{{Network: "nowhere", MAC: mac}}},
		"configured VM": {Name: "a", NICs: []config.NIC{{Network: "lan", MAC: mac}}},
	} {
		if err := sw.AddPort(bad, 0); err == nil {
			t.Errorf("%s: added", name)
		}
	}
	// The configured port a.0 is still served.
	fa, err := vhostuser.Dial(vmmcli.NICSocket(dir, "a", 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fa.GetFeatures(); err != nil {
		t.Errorf("a.0 after a refused add of its name: %v", err)
	}
	fa.Close()
	if err := sw.RemovePort("x.0"); err != nil {
		t.Fatal(err)
	}
	out.wait(t, "port x.0 removed")
	if _, err := vhostuser.Dial(vmmcli.NICSocket(dir, "x", 0)); err == nil {
		t.Error("a removed port's socket still answers")
	}
	if rs.byMAC.load(mac.String()) != nil || rs.portNamed("x.0") != nil {
		t.Error("a removed port is still known")
	}
	if err := sw.RemovePort("x.0"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("removing it again: %v", err)
	}
	// Its MAC is free again.
	if err := sw.AddPort(config.VM{Name: "y", NICs: []config.NIC{{Network: "lan", MAC: mac}}}, 0); err != nil {
		t.Errorf("a port with the removed one's MAC: %v", err)
	}
}

func TestRemovedPort(t *testing.T) {
	for line, want := range map[string]string{
		"port a.0 removed":           "a.0",
		"port a.0 rx=1/2 tx=3/4":     "",
		"port a.0 added network=lan": "",
		"port a b removed":           "",
	} {
		if got, ok := removedPort(line); got != want && (ok || want != "") {
			t.Errorf("%q: %q, %v; want %q", line, got, ok, want)
		}
	}
}
