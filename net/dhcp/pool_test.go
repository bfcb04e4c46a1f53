package dhcp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func macN(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
}

// bigPool is a /16 server with its first n addresses leased.
func bigPool(tb testing.TB, n int) (*Server, *clock) {
	tb.Helper()
	c := newClock()
	cfg := baseConfig(c)
	cfg.Subnet = netip.MustParsePrefix("10.20.0.0/16")
	cfg.From, cfg.To = netip.MustParseAddr("10.20.0.2"), netip.MustParseAddr("10.20.255.254")
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		m := macN(i)
		d, _ := dhcpv4.NewDiscovery(m)
		o, err := s.Handle(d)
		if err != nil || o == nil {
			tb.Fatalf("client %d: no offer", i)
		}
		r, _ := dhcpv4.New(dhcpv4.WithHwAddr(m), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o.YourIPAddr)))
		if a, _ := s.Handle(r); a == nil || a.MessageType() != dhcpv4.MessageTypeAck {
			tb.Fatalf("client %d: no ack", i)
		}
	}
	return s, c
}

// BenchmarkDiscoverLargePool: a DISCOVER from a new client on a /16
// whose first 30000 addresses are leased. Each runs under the lock every
// port's DHCP waits on: it must not scan the pool.
func BenchmarkDiscoverLargePool(b *testing.B) {
	s, _ := bigPool(b, 30000)
	reqs := make([]*dhcpv4.DHCPv4, b.N)
	for i := range reqs {
		reqs[i], _ = dhcpv4.NewDiscovery(macN(100000 + i))
	}
	b.ResetTimer()
	for i := range b.N {
		if o, _ := s.Handle(reqs[i]); o == nil {
			b.Fatal("no offer")
		}
	}
}

// TestPoolOrder: the pool hands out the lowest free address first, freed
// ones included, then the longest-expired lease; offers that lapse free
// their address.
func TestPoolOrder(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.To = netip.MustParseAddr("10.20.0.15") // .10-.15
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := byte(1); i <= 4; i++ {
		lease(t, s, i) // .10-.13
	}
	// Client 2 declines .11: quarantined; client 2 moves to .14.
	s.Handle(msg(t, 2, dhcpv4.MessageTypeDecline, requested("10.20.0.11")))
	if got := lease(t, s, 2); got != "10.20.0.14" {
		t.Fatalf("client 2 after declining got %s, want .14", got)
	}
	if got := lease(t, s, 5); got != "10.20.0.15" {
		t.Fatalf("client 5 got %s", got)
	}
	// Pool full: nothing expired yet.
	if o, _ := s.Handle(discover(t, 6)); o != nil {
		t.Fatalf("offer %s from a full pool", o.YourIPAddr)
	}
	// The quarantine ends: .11 is free again, before any expired lease.
	c.Advance(declineHold + time.Second)
	if got := lease(t, s, 6); got != "10.20.0.11" {
		t.Fatalf("client 6 got %s, want the address back from quarantine", got)
	}
	// Every lease but client 3's is renewed; client 3's expired lease is
	// the one reused.
	for _, i := range []byte{1, 2, 4, 5, 6} {
		lease(t, s, i)
	}
	c.Advance(cfg.LeaseTime / 2)
	for _, i := range []byte{1, 2, 4, 5, 6} {
		lease(t, s, i)
	}
	c.Advance(cfg.LeaseTime/2 + time.Second)
	if got := lease(t, s, 7); got != "10.20.0.12" {
		t.Fatalf("client 7 got %s, want client 3's expired .12", got)
	}
	// Client 3 comes back: its address is gone, it gets none (pool full).
	if o, _ := s.Handle(discover(t, 3)); o != nil {
		t.Fatalf("client 3 offered %s from a full pool", o.YourIPAddr)
	}
}
