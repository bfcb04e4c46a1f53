package dhcp

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// clock is a manually advanced time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// baseConfig is a /24 with a pool of three addresses, .10-.12.
func baseConfig(c *clock) Config {
	return Config{
		Subnet:    netip.MustParsePrefix("10.20.0.0/24"),
		From:      netip.MustParseAddr("10.20.0.10"),
		To:        netip.MustParseAddr("10.20.0.12"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.20.0.1"), netip.MustParseAddr("9.9.9.9")},
		LeaseTime: 10 * time.Minute,
		ServerMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
		Log:       quiet,
		Now:       c.Now,
	}
}

func mac(i byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0, 0, 0, i} }

func ip(s string) net.IP { return net.ParseIP(s).To4() }

var router = ip("10.20.0.1")

func must(t testing.TB) func(*dhcpv4.DHCPv4, error) *dhcpv4.DHCPv4 {
	return func(m *dhcpv4.DHCPv4, err error) *dhcpv4.DHCPv4 {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
}

func discover(t testing.TB, i byte, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return must(t)(dhcpv4.NewDiscovery(mac(i), mods...))
}

func msg(t testing.TB, i byte, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return must(t)(dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac(i)), dhcpv4.WithMessageType(mt)}, mods...)...))
}

// selecting is a REQUEST answering this server's OFFER of addr.
func selecting(t testing.TB, i byte, addr string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return msg(t, i, dhcpv4.MessageTypeRequest, append([]dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(router)),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip(addr)))}, mods...)...)
}

func requested(addr string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip(addr)))
}

func clientID(id string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte(id)))
}

type step struct {
	advance time.Duration
	msg     func(t testing.TB) *dhcpv4.DHCPv4
	want    dhcpv4.MessageType // MessageTypeNone: the server stays silent
	wantIP  string             // yiaddr of OFFER/ACK; "" for none
	wantErr bool
}

func TestHandle(t *testing.T) {
	none := dhcpv4.MessageTypeNone
	offer, ack, nak := dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak
	rq := dhcpv4.MessageTypeRequest
	dora := func(i byte, addr string) []step {
		return []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, i) }, want: offer, wantIP: addr},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return selecting(t, i, addr) }, want: ack, wantIP: addr},
		}
	}
	cat := func(parts ...[]step) []step {
		var out []step
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"discover offers first pool address", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.10"},
		}},
		{"full DORA", dora(1, "10.20.0.10")},
		{"two clients get different addresses", cat(dora(1, "10.20.0.10"), dora(2, "10.20.0.11"))},
		{"same MAC gets the same address again", cat(dora(1, "10.20.0.10"), dora(2, "10.20.0.11"), dora(1, "10.20.0.10"))},
		{"the hardware address is the client, not its client id", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, clientID("vm-a")) }, want: offer, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return selecting(t, 1, "10.20.0.10", clientID("vm-a")) }, want: ack, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 9, clientID("vm-a")) }, want: offer, wantIP: "10.20.0.11"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, clientID("vm-b")) }, want: offer, wantIP: "10.20.0.10"},
		}},
		{"discover honours a free requested address", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, requested("10.20.0.12")) }, want: offer, wantIP: "10.20.0.12"},
		}},
		{"discover ignores a requested address outside the pool", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1, requested("10.20.0.1")) }, want: offer, wantIP: "10.20.0.10"},
		}},
		{"request for another server is ignored", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, rq, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip("10.20.0.254"))), requested("10.20.0.10"))
			}, want: none},
		}},
		{"request for an address other than the one offered is NAKed", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return selecting(t, 1, "10.20.0.11") }, want: nak},
		}},
		{"init-reboot with a foreign address is NAKed", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 1, rq, requested("192.168.1.50")) }, want: nak},
		}},
		{"init-reboot with an address outside the pool is NAKed", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 1, rq, requested("10.20.0.200")) }, want: nak},
		}},
		{"init-reboot with another client's address is NAKed", cat(dora(1, "10.20.0.10"), []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 2, rq, requested("10.20.0.10")) }, want: nak},
		})},
		{"init-reboot with a free pool address is granted", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 1, rq, requested("10.20.0.11")) }, want: ack, wantIP: "10.20.0.11"},
		}},
		{"request without any address is NAKed", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 1, rq) }, want: nak},
		}},
		{"renewing by ciaddr is ACKed", cat(dora(1, "10.20.0.10"), []step{
			{advance: 8 * time.Minute, msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, rq, dhcpv4.WithClientIP(ip("10.20.0.10")))
			}, want: ack, wantIP: "10.20.0.10"},
		})},
		{"released address is reused after never-used ones", cat(dora(1, "10.20.0.10"), []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(ip("10.20.0.10")),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(router)))
			}, want: none},
		}, dora(2, "10.20.0.11"), dora(3, "10.20.0.12"), dora(4, "10.20.0.10"))},
		{"released client comes back to its address if still free", cat(dora(1, "10.20.0.10"), []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(ip("10.20.0.10")))
			}, want: none},
		}, dora(1, "10.20.0.10"))},
		{"pool exhaustion gives no offer", cat(dora(1, "10.20.0.10"), dora(2, "10.20.0.11"), dora(3, "10.20.0.12"), []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 4) }, want: none},
		})},
		{"expired lease is reused when the pool is otherwise full", cat(dora(1, "10.20.0.10"), dora(2, "10.20.0.11"), []step{
			{advance: 5 * time.Minute},
		}, dora(3, "10.20.0.12"), []step{
			{advance: 6 * time.Minute, msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 4) }, want: offer, wantIP: "10.20.0.10"},
		})},
		{"unanswered offers are freed after the hold", cat([]step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 2) }, want: offer, wantIP: "10.20.0.11"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 3) }, want: offer, wantIP: "10.20.0.12"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 4) }, want: none},
			{advance: 2 * time.Minute, msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 4) }, want: offer, wantIP: "10.20.0.10"},
		})},
		{"declined address is quarantined", cat([]step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.10"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeDecline, requested("10.20.0.10"))
			}, want: none},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 1) }, want: offer, wantIP: "10.20.0.11"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 2) }, want: offer, wantIP: "10.20.0.12"},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 3) }, want: none},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 3, rq, requested("10.20.0.10")) }, want: nak},
			{advance: 11 * time.Minute, msg: func(t testing.TB) *dhcpv4.DHCPv4 { return discover(t, 3) }, want: offer, wantIP: "10.20.0.10"},
		})},
		{"inform gets parameters without a lease", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(ip("10.20.0.77")))
			}, want: ack},
		}},
		{"no message type is an error", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return must(t)(dhcpv4.New(dhcpv4.WithHwAddr(mac(1)))) }, wantErr: true},
		}},
		{"server messages from a guest are errors", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 { return msg(t, 1, dhcpv4.MessageTypeOffer) }, wantErr: true},
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeDiscover, func(d *dhcpv4.DHCPv4) { d.OpCode = dhcpv4.OpcodeBootReply })
			}, wantErr: true},
		}},
		{"no Ethernet hardware address is an error", []step{
			{msg: func(t testing.TB) *dhcpv4.DHCPv4 {
				return msg(t, 1, dhcpv4.MessageTypeDiscover, func(d *dhcpv4.DHCPv4) { d.ClientHWAddr = nil })
			}, wantErr: true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			s, err := New(baseConfig(c))
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tc.steps {
				c.Advance(st.advance)
				if st.msg == nil {
					continue
				}
				req := st.msg(t)
				resp, err := s.Handle(req)
				if st.wantErr {
					if err == nil {
						t.Fatalf("step %d: want an error, got reply %v", i, resp)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if st.want == dhcpv4.MessageTypeNone {
					if resp != nil {
						t.Fatalf("step %d: want silence, got %s", i, resp.Summary())
					}
					continue
				}
				if resp == nil {
					t.Fatalf("step %d: want %s, got silence", i, st.want)
				}
				checkReply(t, i, req, resp, st.want, st.wantIP)
			}
		})
	}
}

// checkReply verifies what every reply of a kind must carry.
func checkReply(t *testing.T, i int, req, resp *dhcpv4.DHCPv4, want dhcpv4.MessageType, wantIP string) {
	t.Helper()
	if got := resp.MessageType(); got != want {
		t.Fatalf("step %d: got %s, want %s", i, got, want)
	}
	if resp.OpCode != dhcpv4.OpcodeBootReply || resp.TransactionID != req.TransactionID {
		t.Errorf("step %d: op %s xid %s, want BootReply xid %s", i, resp.OpCode, resp.TransactionID, req.TransactionID)
	}
	if !resp.ServerIdentifier().Equal(router) {
		t.Errorf("step %d: server id %v, want %v", i, resp.ServerIdentifier(), router)
	}
	if want == dhcpv4.MessageTypeNak {
		if !resp.YourIPAddr.IsUnspecified() || !resp.IsBroadcast() {
			t.Errorf("step %d: NAK yiaddr %v broadcast %v", i, resp.YourIPAddr, resp.IsBroadcast())
		}
		return
	}
	if wantIP == "" {
		if !resp.YourIPAddr.IsUnspecified() || resp.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
			t.Errorf("step %d: INFORM reply carries a lease: yiaddr %v", i, resp.YourIPAddr)
		}
	} else {
		if !resp.YourIPAddr.Equal(ip(wantIP)) {
			t.Fatalf("step %d: yiaddr %v, want %s", i, resp.YourIPAddr, wantIP)
		}
		if got := resp.IPAddressLeaseTime(0); got != 10*time.Minute {
			t.Errorf("step %d: lease time %s", i, got)
		}
		if got := resp.IPAddressRenewalTime(0); got != 5*time.Minute {
			t.Errorf("step %d: T1 %s", i, got)
		}
	}
	if r := resp.Router(); len(r) != 1 || !r[0].Equal(router) {
		t.Errorf("step %d: router %v", i, r)
	}
	if m := resp.SubnetMask(); m.String() != net.CIDRMask(24, 32).String() {
		t.Errorf("step %d: mask %v", i, m)
	}
	if d := resp.DNS(); len(d) != 2 || !d[0].Equal(router) || !d[1].Equal(ip("9.9.9.9")) {
		t.Errorf("step %d: dns %v", i, d)
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	tests := []struct {
		name             string
		cfg              Config
		wantErr          bool
		router, from, to string
	}{
		{name: "defaults", cfg: Config{Subnet: p("10.1.2.0/24")}, router: "10.1.2.1", from: "10.1.2.2", to: "10.1.2.254"},
		{name: "unmasked subnet", cfg: Config{Subnet: p("10.1.2.77/24")}, router: "10.1.2.1", from: "10.1.2.2", to: "10.1.2.254"},
		{name: "router elsewhere", cfg: Config{Subnet: p("10.1.2.0/24"), Router: a("10.1.2.254")}, router: "10.1.2.254", from: "10.1.2.1", to: "10.1.2.254"},
		{name: "ipv6", cfg: Config{Subnet: p("fd00::/64")}, wantErr: true},
		{name: "no subnet", cfg: Config{}, wantErr: true},
		{name: "/31", cfg: Config{Subnet: p("10.1.2.0/31")}, wantErr: true},
		{name: "router outside", cfg: Config{Subnet: p("10.1.2.0/24"), Router: a("10.1.3.1")}, wantErr: true},
		{name: "router is broadcast", cfg: Config{Subnet: p("10.1.2.0/24"), Router: a("10.1.2.255")}, wantErr: true},
		{name: "range outside", cfg: Config{Subnet: p("10.1.2.0/24"), From: a("10.1.2.10"), To: a("10.1.3.10")}, wantErr: true},
		{name: "range reversed", cfg: Config{Subnet: p("10.1.2.0/24"), From: a("10.1.2.10"), To: a("10.1.2.9")}, wantErr: true},
		{name: "ipv6 dns", cfg: Config{Subnet: p("10.1.2.0/24"), DNS: []netip.Addr{a("::1")}}, wantErr: true},
		{name: "lease too short", cfg: Config{Subnet: p("10.1.2.0/24"), LeaseTime: time.Second}, wantErr: true},
		{name: "bad mac", cfg: Config{Subnet: p("10.1.2.0/24"), ServerMAC: net.HardwareAddr{1, 2}}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Log = quiet
			s, err := New(tc.cfg)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", s.cfg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.cfg.Router != a(tc.router) || s.cfg.From != a(tc.from) || s.cfg.To != a(tc.to) {
				t.Errorf("router %s range %s-%s, want %s %s-%s", s.cfg.Router, s.cfg.From, s.cfg.To, tc.router, tc.from, tc.to)
			}
			if s.cfg.LeaseTime != DefaultLeaseTime {
				t.Errorf("lease time %s", s.cfg.LeaseTime)
			}
		})
	}
}

// TestRouterNeverOffered uses a pool that contains the router's address.
func TestRouterNeverOffered(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.Subnet = netip.MustParsePrefix("10.9.0.0/30") // hosts .1 and .2
	cfg.From, cfg.To, cfg.DNS = netip.Addr{}, netip.Addr{}, nil
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Handle(discover(t, 1))
	if err != nil || resp == nil {
		t.Fatalf("first offer: %v %v", resp, err)
	}
	if !resp.YourIPAddr.Equal(ip("10.9.0.2")) {
		t.Fatalf("offered %v, want 10.9.0.2", resp.YourIPAddr)
	}
	if _, err := s.Handle(selecting(t, 1, "10.9.0.2")); err != nil {
		t.Fatal(err)
	}
	if resp, _ := s.Handle(discover(t, 2)); resp != nil {
		t.Fatalf("offered %v from an exhausted pool (router is .1)", resp.YourIPAddr)
	}
}

func TestLeasesLookupOnLease(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	type call struct {
		mac string
		ip  netip.Addr
	}
	var calls []call
	cfg.OnLease = func(m net.HardwareAddr, a netip.Addr) { calls = append(calls, call{m.String(), a}) }
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(mac(1)); ok {
		t.Fatal("lookup before any lease")
	}
	s.Handle(discover(t, 1))
	if _, ok := s.Lookup(mac(1)); ok || len(s.Leases()) != 0 || len(calls) != 0 {
		t.Fatal("an OFFER must not count as a lease")
	}
	s.Handle(selecting(t, 1, "10.20.0.10", dhcpv4.WithOption(dhcpv4.OptHostName("web"))))
	s.Handle(discover(t, 2))
	s.Handle(selecting(t, 2, "10.20.0.11"))

	if got, ok := s.Lookup(mac(1)); !ok || got != netip.MustParseAddr("10.20.0.10") {
		t.Errorf("lookup mac1 = %v %v", got, ok)
	}
	want := []call{{mac(1).String(), netip.MustParseAddr("10.20.0.10")}, {mac(2).String(), netip.MustParseAddr("10.20.0.11")}}
	if len(calls) != 2 || calls[0] != want[0] || calls[1] != want[1] {
		t.Errorf("OnLease calls %v, want %v", calls, want)
	}
	ls := s.Leases()
	if len(ls) != 2 {
		t.Fatalf("leases %v", ls)
	}
	if ls[0].MAC.String() != mac(1).String() || ls[0].IP != netip.MustParseAddr("10.20.0.10") ||
		ls[0].Hostname != "web" || !ls[0].Expiry.Equal(c.Now().Add(10*time.Minute)) {
		t.Errorf("lease 0 = %+v", ls[0])
	}
	c.Advance(11 * time.Minute)
	if _, ok := s.Lookup(mac(1)); ok {
		t.Error("lookup returns an expired lease")
	}
	if r, _ := s.Handle(discover(t, 1)); r == nil || !r.YourIPAddr.Equal(ip("10.20.0.10")) {
		t.Fatalf("expired client re-offered %v", r)
	}
	if _, ok := s.Lookup(mac(1)); ok {
		t.Error("an OFFER revived an expired lease for Lookup")
	}
	if allocs := testing.AllocsPerRun(100, func() { s.Lookup(mac(2)) }); allocs != 0 {
		t.Errorf("Lookup allocates %v times", allocs)
	}
}

func TestConcurrentClients(t *testing.T) {
	c := newClock()
	cfg := baseConfig(c)
	cfg.To = netip.MustParseAddr("10.20.0.250")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]net.IP, 64)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := s.Handle(discover(t, byte(i)))
			if err != nil || o == nil {
				t.Errorf("client %d: %v %v", i, o, err)
				return
			}
			a, err := s.Handle(selecting(t, byte(i), o.YourIPAddr.String()))
			if err != nil || a == nil || a.MessageType() != dhcpv4.MessageTypeAck {
				t.Errorf("client %d: %v %v", i, a, err)
				return
			}
			got[i] = a.YourIPAddr
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, a := range got {
		if seen[a.String()] {
			t.Errorf("client %d got duplicate address %v", i, a)
		}
		seen[a.String()] = true
	}
}
