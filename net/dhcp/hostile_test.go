package dhcp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// lease runs DISCOVER/REQUEST for client i and returns the ACKed address.
func lease(t *testing.T, s *Server, i byte, mods ...dhcpv4.Modifier) string {
	t.Helper()
	o, err := s.Handle(discover(t, i, mods...))
	if err != nil || o == nil {
		t.Fatalf("client %d: no offer: %v", i, err)
	}
	a, err := s.Handle(selecting(t, i, o.YourIPAddr.String(), mods...))
	if err != nil || a == nil || a.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("client %d: no ack for %s: %v %v", i, o.YourIPAddr, a, err)
	}
	return a.YourIPAddr.String()
}

// TestNeighbourCannotReleaseOrDecline: a client identifier is not an
// identity another client may borrow. Client 2, naming client 1's client
// id, must neither release nor decline client 1's lease, nor then take
// its address.
func TestNeighbourCannotReleaseOrDecline(t *testing.T) {
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline} {
		t.Run(mt.String(), func(t *testing.T) {
			s, err := New(baseConfig(newClock()))
			if err != nil {
				t.Fatal(err)
			}
			if got := lease(t, s, 1, clientID("vm-a")); got != "10.20.0.10" {
				t.Fatalf("client 1 got %s", got)
			}
			s.Handle(msg(t, 2, mt, clientID("vm-a"), dhcpv4.WithClientIP(ip("10.20.0.10")), requested("10.20.0.10"),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(router))))
			if got, ok := s.Lookup(mac(1)); !ok || got != netip.MustParseAddr("10.20.0.10") {
				t.Fatalf("client 1's lease after client 2's %s naming it: %v %v", mt, got, ok)
			}
			r, _ := s.Handle(discover(t, 2, requested("10.20.0.10")))
			if r == nil || r.YourIPAddr.Equal(ip("10.20.0.10")) {
				t.Fatalf("client 2 offered %v, want another address than client 1's", r)
			}
		})
	}
}

// TestClientIDRotation: one MAC (one port) holds one lease. A client that
// rotates its client identifier gets its own address back each time
// instead of draining the pool.
func TestClientIDRotation(t *testing.T) {
	s, err := New(baseConfig(newClock())) // three addresses
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if got := lease(t, s, 1, clientID(string(rune('a'+i)))); got != "10.20.0.10" {
			t.Fatalf("round %d: client 1 moved to %s", i, got)
		}
	}
	if got := lease(t, s, 2); got != "10.20.0.11" {
		t.Fatalf("client 2 got %s", got)
	}
	if n := len(s.Leases()); n != 2 {
		t.Fatalf("%d leases for two clients: %+v", n, s.Leases())
	}
}

// TestDeclinesCannotDrainPool: each DECLINE quarantines an address; a
// client declining every address it is offered would empty the pool.
func TestDeclinesCannotDrainPool(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.To = netip.MustParseAddr("10.20.0.20") // 11 addresses
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		o, _ := s.Handle(discover(t, 1))
		if o == nil {
			break
		}
		s.Handle(msg(t, 1, dhcpv4.MessageTypeDecline, requested(o.YourIPAddr.String())))
	}
	for i := byte(2); i < 10; i++ {
		lease(t, s, i)
	}
}

// TestOnNewLease: OnNewLease (the call to log leases from) hears of new
// and changed leases, not of every renewal; OnLease hears of every ACK.
func TestOnNewLease(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	acks, fresh := 0, 0
	cfg.OnLease = func(net.HardwareAddr, netip.Addr) { acks++ }
	cfg.OnNewLease = func(net.HardwareAddr, netip.Addr) { fresh++ }
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lease(t, s, 1)
	for range 50 {
		c.Advance(10)
		if r, _ := s.Handle(msg(t, 1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip("10.20.0.10")))); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("renewal: %v", r)
		}
	}
	if fresh != 1 || acks != 51 {
		t.Fatalf("one lease renewed 50 times: OnNewLease %d times (want 1), OnLease %d (want 51)", fresh, acks)
	}
	c.Advance(cfg.LeaseTime * 2) // expired: renewing it is a new lease
	s.Handle(msg(t, 1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip("10.20.0.10"))))
	if fresh != 2 {
		t.Fatalf("OnNewLease called %d times, want 2 after an expired lease was taken again", fresh)
	}
}

// TestHandleFrameChaddrMustBeSource: a DHCP message whose chaddr is not
// the frame's source MAC is dropped and counted.
func TestHandleFrameChaddrMustBeSource(t *testing.T) {
	s, err := New(baseConfig(newClock()))
	if err != nil {
		t.Fatal(err)
	}
	var out [1500]byte
	in := clientFrame(t, discover(t, 1), frameOpts{srcMAC: mac(2)})
	if _, ok := s.HandleFrame(in, out[:]); ok {
		t.Fatal("answered a DISCOVER whose chaddr is another MAC")
	}
	if got := s.Spoofed(); got != 1 {
		t.Fatalf("Spoofed = %d, want 1", got)
	}
	in = clientFrame(t, discover(t, 1), frameOpts{srcMAC: mac(1)})
	if _, ok := s.HandleFrame(in, out[:]); !ok {
		t.Fatal("no answer to a DISCOVER from its own MAC")
	}
}
