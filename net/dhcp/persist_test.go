package dhcp

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

func TestLeasesSurviveRestart(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"10.20.0.10", "10.20.0.11"} {
		m := byte(i + 1)
		if _, err := s1.Handle(discover(t, m)); err != nil {
			t.Fatal(err)
		}
		r, err := s1.Handle(selecting(t, m, want, dhcpv4.WithOption(dhcpv4.OptHostName("vm"+want))))
		if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("ack %s: %v %v", want, r, err)
		}
	}
	// An offer that was never ACKed is not persisted.
	s1.Handle(discover(t, 7))

	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s2.Leases(), s1.Leases(); !leasesEqual(got, want) {
		t.Fatalf("reloaded leases\n got %+v\nwant %+v", got, want)
	}
	if len(s2.Leases()) != 2 {
		t.Fatalf("want 2 leases, got %+v", s2.Leases())
	}
	// Read from outside the server (the API), the file says the same.
	if got, err := ReadLeases(cfg.LeasePath); err != nil || !leasesEqual(got, s1.Leases()) {
		t.Errorf("ReadLeases: %+v, %v; want %+v", got, err, s1.Leases())
	}
	if got, ok := s2.Lookup(mac(2)); !ok || got != netip.MustParseAddr("10.20.0.11") {
		t.Errorf("lookup after restart: %v %v", got, ok)
	}
	// The same VM gets the same address from the restarted switch, even
	// asking in a different order.
	if r, _ := s2.Handle(discover(t, 2)); r == nil || !r.YourIPAddr.Equal(ip("10.20.0.11")) {
		t.Errorf("mac 2 offered %v after restart, want 10.20.0.11", r)
	}
	if r, _ := s2.Handle(discover(t, 3)); r == nil || !r.YourIPAddr.Equal(ip("10.20.0.12")) {
		t.Errorf("new client offered %v, want 10.20.0.12", r)
	}
	// Nothing but the lease file is left in the directory.
	ents, err := os.ReadDir(filepath.Dir(cfg.LeasePath))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "lan.leases" {
		t.Errorf("directory holds %v", ents)
	}
}

func TestReloadDropsLeasesOutsideNewPool(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range []string{"10.20.0.10", "10.20.0.11"} {
		s1.Handle(selecting(t, byte(i+1), a))
	}
	cfg.From = netip.MustParseAddr("10.20.0.11")
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ls := s2.Leases()
	if len(ls) != 1 || ls[0].IP != netip.MustParseAddr("10.20.0.11") {
		t.Errorf("leases after shrinking the pool: %+v", ls)
	}
}

func TestCorruptLeaseFile(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"garbage", "{not json"},
		{"wrong version", `{"version": 99, "leases": []}`},
		{"truncated", `{"version": 1, "leases": [{"key": "AQ==", "ip": "10.20.`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(newClock())
			cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
			if err := os.WriteFile(cfg.LeasePath, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := New(cfg)
			if err != nil {
				t.Fatalf("a corrupt file must not stop the network: %v", err)
			}
			if len(s.Leases()) != 0 {
				t.Errorf("leases from a corrupt file: %+v", s.Leases())
			}
			if b, err := os.ReadFile(cfg.LeasePath + ".corrupt"); err != nil || string(b) != tc.content {
				t.Errorf("corrupt file not kept aside: %q %v", b, err)
			}
		})
	}
}

func TestBogusEntriesInLeaseFileAreSkipped(t *testing.T) {
	cfg := baseConfig(newClock())
	cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
	content := `{"version": 1, "leases": [
		{"key": "aHc6AQ==", "mac": "52:54:00:00:00:01", "ip": "10.20.0.10", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "aHc6Ag==", "mac": "52:54:00:00:00:02", "ip": "10.20.0.10", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "aHc6Aw==", "mac": "not a mac", "ip": "10.20.0.11", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "", "ip": "10.20.0.12", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "aHc6BA==", "ip": "nonsense", "expiry": "2030-01-02T04:00:00Z"}
	]}`
	if err := os.WriteFile(cfg.LeasePath, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ls := s.Leases()
	if len(ls) != 1 || ls[0].MAC.String() != "52:54:00:00:00:01" || ls[0].IP != netip.MustParseAddr("10.20.0.10") {
		t.Errorf("leases %+v", ls)
	}
}

func leasesEqual(a, b []Lease) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.MAC.String() != y.MAC.String() || x.IP != y.IP || x.Hostname != y.Hostname || !x.Expiry.Equal(y.Expiry) {
			return false
		}
	}
	return true
}

// TestRenewalWritesAreThrottled: a renewal that moves the expiry by less
// than a quarter lease is not written out; a bigger move, or a new
// hostname, is.
func TestRenewalWritesAreThrottled(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c) // 10-minute leases
	cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	onDisk := func() Lease {
		t.Helper()
		r, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ls := r.Leases()
		if len(ls) != 1 {
			t.Fatalf("file holds %+v", ls)
		}
		return ls[0]
	}
	renew := func(mods ...dhcpv4.Modifier) {
		t.Helper()
		r, err := s.Handle(msg(t, 1, dhcpv4.MessageTypeRequest, append(mods, dhcpv4.WithClientIP(ip("10.20.0.10")))...))
		if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("renew: %v %v", r, err)
		}
	}
	s.Handle(selecting(t, 1, "10.20.0.10"))
	first := c.Now().Add(10 * time.Minute)
	steps := []struct {
		advance    time.Duration
		host       string
		wantExpiry time.Time
		wantHost   string
	}{
		{time.Minute, "", first, ""},
		{time.Minute, "", first, ""},
		{time.Minute, "", first.Add(3 * time.Minute), ""}, // 3 min > 2.5 min
		{time.Second, "db", first.Add(3*time.Minute + time.Second), "db"},
	}
	for i, st := range steps {
		c.Advance(st.advance)
		if st.host != "" {
			renew(dhcpv4.WithOption(dhcpv4.OptHostName(st.host)))
		} else {
			renew()
		}
		if got := onDisk(); !got.Expiry.Equal(st.wantExpiry) || got.Hostname != st.wantHost {
			t.Errorf("step %d: file has expiry %v host %q, want %v %q", i, got.Expiry, got.Hostname, st.wantExpiry, st.wantHost)
		}
	}
}

// TestReadLeasesHostile: a lease file the (possibly taken over) switch
// wrote is read with care: a missing one is no leases, a broken or huge one
// an error, bad entries are skipped.
func TestReadLeasesHostile(t *testing.T) {
	dir := t.TempDir()
	if l, err := ReadLeases(filepath.Join(dir, "none.leases")); err != nil || l != nil {
		t.Errorf("missing: %v, %v", l, err)
	}
	p := filepath.Join(dir, "x.leases")
	for _, bad := range []string{"{", `{"version": 2, "leases": []}`, string(make([]byte, MaxLeaseFile+1))} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := ReadLeases(p); err == nil {
			t.Errorf("%.20q... read without error", bad)
		}
	}
	os.WriteFile(p, []byte(`{"version": 1, "leases": [
		{"ip": "10.0.0.5", "mac": "52:54:00:00:00:01", "expiry": "2026-12-04T00:00:00Z"},
		{"ip": "not-an-ip", "mac": "52:54:00:00:00:02"},
		{"ip": "10.0.0.7", "mac": "52:54:00"}]}`), 0o600)
	l, err := ReadLeases(p)
	if err != nil || len(l) != 1 || l[0].IP != netip.MustParseAddr("10.0.0.5") || l[0].MAC.String() != "52:54:00:00:00:01" {
		t.Errorf("got %+v, %v", l, err)
	}
	// A link in the file's place (to a lease file, even) is not
	// followed, and a FIFO is refused at once rather than waited on.
	link := filepath.Join(dir, "link.leases")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if l, err := ReadLeases(link); err == nil {
		t.Errorf("a symbolic link was followed: %+v", l)
	}
	fifo := filepath.Join(dir, "fifo.leases")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadLeases(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO: %v, want not a regular file", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadLeases blocked on a FIFO")
	}
}
