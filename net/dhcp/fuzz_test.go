package dhcp

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzClients plays a script of DHCP messages from eight clients against
// a pool of six addresses: every kind a client sends, naming its own or
// another client's address, client id and server, with time passing, and
// now and then a frame whose chaddr is another client's. Whatever the
// script, no address is leased twice, a MAC holds at most one lease, and
// a client's live lease is never ended or moved by another client's
// message.
func FuzzClients(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 4, 0, 0, 1, 5, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 4, 0, 0x80, 1, 5, 0, 0x40, 1, 0, 0, 0, 1, 1, 0, 0, 2, 7, 0, 0})
	f.Add([]byte{2, 0, 3, 9, 2, 1, 3, 0, 3, 6, 2, 0xff, 3, 2, 2, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		c := newClock()
		cfg := baseConfig(c)
		cfg.To = netip.MustParseAddr("10.20.0.15")
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, 1514)
		for len(script) >= 4 {
			op := script[:4]
			script = script[4:]
			i := op[0]%8 + 1                           // the client sending
			other := (op[2]>>4)%8 + 1                  // the client it may name
			addr := "10.20.0." + itoa(int(10+op[2]%8)) // in the pool, or just past it
			var mods []dhcpv4.Modifier
			if op[3]&0x80 != 0 {
				mods = append(mods, clientID(string(rune('a'+other))))
			}
			if op[3]&0x40 != 0 {
				mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(router)))
			}
			var m *dhcpv4.DHCPv4
			switch op[1] % 8 {
			case 0:
				m = discover(t, i, append(mods, requested(addr))...)
			case 1:
				m = selecting(t, i, addr, mods...)
			case 2:
				m = msg(t, i, dhcpv4.MessageTypeRequest, append(mods, dhcpv4.WithClientIP(ip(addr)))...)
			case 3:
				m = msg(t, i, dhcpv4.MessageTypeRequest, append(mods, requested(addr))...)
			case 4:
				m = msg(t, i, dhcpv4.MessageTypeRelease, append(mods, dhcpv4.WithClientIP(ip(addr)))...)
			case 5:
				m = msg(t, i, dhcpv4.MessageTypeDecline, append(mods, requested(addr))...)
			case 6:
				m = msg(t, i, dhcpv4.MessageTypeInform, append(mods, dhcpv4.WithClientIP(ip(addr)))...)
			case 7:
				m = msg(t, other, dhcpv4.MessageTypeRelease, append(mods, dhcpv4.WithClientIP(ip(addr)))...)
			}
			before := liveLeases(s, c.Now())
			if op[1]%8 == 7 {
				// Sent by client i in a frame of its own MAC, naming
				// client other: speaks for someone else.
				if _, ok := s.HandleFrame(clientFrame(t, m, frameOpts{srcMAC: mac(i)}), out); ok && other != i {
					t.Fatalf("client %d answered speaking for client %d", i, other)
				}
			} else if r, err := s.Handle(m); err == nil && r != nil && r.YourIPAddr != nil && !r.YourIPAddr.IsUnspecified() {
				a := addrOf(r.YourIPAddr)
				if !s.inPool(a) {
					t.Fatalf("client %d got %s outside the pool", i, a)
				}
			}
			after := liveLeases(s, c.Now())
			for mc, a := range before {
				if mc == mac(i).String() {
					continue
				}
				if b, ok := after[mc]; !ok || b != a {
					t.Fatalf("client %d's message (op %x) moved %s's live lease %s to %v", i, op, mc, a, b)
				}
			}
			c.Advance(time.Duration(op[3]&0x3f) * 20 * time.Second)
		}
	})
}

// liveLeases are the bound, unexpired leases by MAC, checked for
// duplicate addresses and MACs.
func liveLeases(s *Server, now time.Time) map[string]netip.Addr {
	m := map[string]netip.Addr{}
	ips := map[netip.Addr]string{}
	for _, l := range s.Leases() {
		if !l.Expiry.After(now) {
			continue
		}
		k := l.MAC.String()
		if _, dup := m[k]; dup {
			panic("two live leases for " + k)
		}
		if o, dup := ips[l.IP]; dup {
			panic("address " + l.IP.String() + " leased to " + o + " and " + k)
		}
		m[k], ips[l.IP] = l.IP, k
	}
	return m
}

func itoa(v int) string {
	if v < 10 {
		return string(rune('0' + v))
	}
	return itoa(v/10) + string(rune('0'+v%10))
}

// FuzzLoad: whatever the lease file holds, New starts (moving an
// unreadable file aside), the table it loads has no address or MAC twice
// and nothing outside the pool, and writing it out and reading it back
// gives the same table.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"version": 1, "leases": [
		{"key": "aHc6UlQAAAAB", "mac": "52:54:00:00:00:01", "ip": "10.20.0.10", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "aWQ6dm0tYQ==", "mac": "52:54:00:00:00:01", "ip": "10.20.0.11", "expiry": "2030-01-02T05:00:00Z"},
		{"key": "aHc6UlQAAAAC", "ip": "10.20.0.12", "expiry": "2030-01-02T04:00:00Z"},
		{"key": "", "mac": "52:54:00:00:00:03", "ip": "10.20.0.12", "hostname": "x", "expiry": "2030-01-02T04:00:00Z"}
	]}`))
	f.Add([]byte(`{"version": 2, "leases": []}`))
	f.Add([]byte(`{"version": 1, "leases": [{"mac": "52:54:00:00:00:01", "ip": "10.20.0.1", "expiry": "2030-01-02T04:00:00Z"}]}`))
	f.Add([]byte("not json"))
	f.Fuzz(func(t *testing.T, content []byte) {
		cfg := baseConfig(newClock())
		cfg.LeasePath = filepath.Join(t.TempDir(), "lan.leases")
		if err := os.WriteFile(cfg.LeasePath, content, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		ls := s.Leases()
		macs, ips := map[string]bool{}, map[netip.Addr]bool{}
		for _, l := range ls {
			if macs[l.MAC.String()] || ips[l.IP] || !s.inPool(l.IP) || len(l.MAC) != 6 {
				t.Fatalf("loaded table %+v", ls)
			}
			macs[l.MAC.String()], ips[l.IP] = true, true
			if got, ok := s.Lookup(l.MAC); l.Expiry.After(cfg.Now()) && (!ok || got != l.IP) {
				t.Fatalf("Lookup(%s) = %v %v, want %s", l.MAC, got, ok, l.IP)
			}
		}
		s.persist()
		s2, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := s2.Leases(); !leasesEqual(got, ls) {
			t.Fatalf("written and read back\n got %+v\nwant %+v", got, ls)
		}
	})
}
