package netconf

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// ack builds a server's ACK with the given modifiers on top of a plain
// 10.1.2.3/24 lease from 10.1.2.1.
func ack(t testing.TB, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 3)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 1, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 1, 2, 1))),
		dhcpv4.WithLeaseTime(3600),
	}
	m, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLeaseFromACK(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	type want struct {
		addr, router     string
		t1, t2, lifetime time.Duration // 0 lifetime: infinite
		err              string
	}
	for _, tc := range []struct {
		name string
		mods []dhcpv4.Modifier
		want want
	}{
		{"plain", nil, want{addr: "10.1.2.3/24", router: "10.1.2.1", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"server T1 T2", []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(10 * time.Minute)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(20 * time.Minute)),
		}, want{addr: "10.1.2.3/24", router: "10.1.2.1", t1: 10 * time.Minute, t2: 20 * time.Minute, lifetime: time.Hour}},
		{"T1 after T2 ignored", []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(50 * time.Minute)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(20 * time.Minute)),
		}, want{addr: "10.1.2.3/24", router: "10.1.2.1", t1: 20 * time.Minute, t2: 20 * time.Minute, lifetime: time.Hour}},
		{"T2 beyond lease ignored", []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(2 * time.Hour)),
		}, want{addr: "10.1.2.3/24", router: "10.1.2.1", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"tiny lease raised", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(1)},
			want{addr: "10.1.2.3/24", router: "10.1.2.1", t1: 30 * time.Second, t2: 52500 * time.Millisecond, lifetime: time.Minute}},
		{"infinite", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(0xffffffff)}, want{addr: "10.1.2.3/24", router: "10.1.2.1"}},
		{"no mask: classful", []dhcpv4.Modifier{dhcpv4.WithoutOption(dhcpv4.OptionSubnetMask)},
			want{addr: "10.1.2.3/8", router: "10.1.2.1", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"router outside subnet dropped", []dhcpv4.Modifier{dhcpv4.WithRouter(net.IPv4(192, 168, 0, 1))},
			want{addr: "10.1.2.3/24", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"first usable router", []dhcpv4.Modifier{dhcpv4.WithRouter(net.IPv4(10, 1, 2, 3), net.IPv4(224, 0, 0, 1), net.IPv4(10, 1, 2, 254))},
			want{addr: "10.1.2.3/24", router: "10.1.2.254", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"no router", []dhcpv4.Modifier{dhcpv4.WithoutOption(dhcpv4.OptionRouter)},
			want{addr: "10.1.2.3/24", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"slash 31", []dhcpv4.Modifier{dhcpv4.WithNetmask(net.CIDRMask(31, 32)), dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 0))},
			want{addr: "10.1.2.0/31", router: "10.1.2.1", t1: 30 * time.Minute, t2: 3150 * time.Second, lifetime: time.Hour}},
		{"NAK", []dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeNak)}, want{err: "not an ACK"}},
		{"no address", []dhcpv4.Modifier{dhcpv4.WithYourIP(net.IPv4zero)}, want{err: "no host can use"}},
		{"multicast", []dhcpv4.Modifier{dhcpv4.WithYourIP(net.IPv4(239, 1, 1, 1))}, want{err: "no host can use"}},
		{"broadcast of subnet", []dhcpv4.Modifier{dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 255))}, want{err: "not a host address"}},
		{"network of subnet", []dhcpv4.Modifier{dhcpv4.WithYourIP(net.IPv4(10, 1, 2, 0))}, want{err: "not a host address"}},
		{"holey mask", []dhcpv4.Modifier{dhcpv4.WithNetmask(net.IPv4Mask(255, 0, 255, 0))}, want{err: "not a contiguous"}},
		{"no lease time", []dhcpv4.Modifier{dhcpv4.WithoutOption(dhcpv4.OptionIPAddressLeaseTime)}, want{err: "no lease time"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := leaseFromACK(ack(t, tc.mods...), t0)
			if tc.want.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.want.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Address.String() != tc.want.addr {
				t.Errorf("address %s, want %s", l.Address, tc.want.addr)
			}
			router := ""
			if l.Router.IsValid() {
				router = l.Router.String()
			}
			if router != tc.want.router {
				t.Errorf("router %q, want %q", router, tc.want.router)
			}
			if l.Server != netip.MustParseAddr("10.1.2.1") {
				t.Errorf("server %s", l.Server)
			}
			if tc.want.lifetime == 0 {
				if !l.Expiry.IsZero() || !l.T1.IsZero() {
					t.Errorf("infinite lease has times %v %v", l.T1, l.Expiry)
				}
				return
			}
			for _, c := range []struct {
				what string
				got  time.Time
				want time.Duration
			}{{"T1", l.T1, tc.want.t1}, {"T2", l.T2, tc.want.t2}, {"expiry", l.Expiry, tc.want.lifetime}} {
				if d := c.got.Sub(t0); d != c.want {
					t.Errorf("%s after %s, want %s", c.what, d, c.want)
				}
			}
		})
	}
}

// FuzzLeaseFromACK feeds arbitrary server answers through the library's
// parser and our checks: no panic, and anything accepted is safe to
// configure and to schedule.
// TestLeaseNamesAndServers: the name servers and host name a server
// gives are kept only when usable: they end up in a resolver and a URL.
func TestLeaseNamesAndServers(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name     string
		dns      []net.IP
		host     string
		wantDNS  string
		wantHost string
	}{
		{"usable", []net.IP{net.IPv4(10, 1, 2, 1), net.IPv4(9, 9, 9, 9)}, "node-7.lab", "[10.1.2.1 9.9.9.9]", "node-7.lab"},
		{"unusable servers dropped", []net.IP{net.IPv4zero, net.IPv4(127, 0, 0, 1), net.IPv4(224, 0, 0, 1), net.IPv4(10, 1, 2, 1)}, "a", "[10.1.2.1]", "a"},
		{"at most three", []net.IP{net.IPv4(1, 1, 1, 1), net.IPv4(1, 1, 1, 2), net.IPv4(1, 1, 1, 3), net.IPv4(1, 1, 1, 4)}, "", "[1.1.1.1 1.1.1.2 1.1.1.3]", ""},
		{"path in host name", nil, "../../etc", "[]", ""},
		{"space in host name", nil, "a b", "[]", ""},
		{"hyphen ends label", nil, "a-.b", "[]", ""},
		{"long label", nil, strings.Repeat("x", 64), "[]", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mods := []dhcpv4.Modifier{dhcpv4.WithDNS(tc.dns...)}
			if tc.host != "" {
				mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(tc.host)))
			}
			l, err := leaseFromACK(ack(t, mods...), t0)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(l.DNS); got != tc.wantDNS || l.HostName != tc.wantHost {
				t.Errorf("DNS %s host %q, want %s %q", got, l.HostName, tc.wantDNS, tc.wantHost)
			}
		})
	}
}

func FuzzLeaseFromACK(f *testing.F) {
	f.Add(ack(f).ToBytes())
	f.Add(ack(f, dhcpv4.WithLeaseTime(1), dhcpv4.WithoutOption(dhcpv4.OptionSubnetMask)).ToBytes())
	f.Add(ack(f, dhcpv4.WithRouter(net.IPv4(10, 1, 2, 3), net.IPv4(10, 1, 2, 9))).ToBytes())
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		l, err := leaseFromACK(m, t0)
		if err != nil {
			return
		}
		a := l.Address.Addr()
		if !a.Is4() || !usableHost(a) || l.Address.Bits() < 0 || l.Address.Bits() > 32 {
			t.Fatalf("accepted address %s", l.Address)
		}
		if l.Router.IsValid() && (!l.Address.Contains(l.Router) || l.Router == a) {
			t.Fatalf("accepted router %s for %s", l.Router, l.Address)
		}
		if !l.Expiry.IsZero() {
			if l.Expiry.Sub(t0) < MinLeaseTime || l.T1.Before(t0) || l.T1.After(l.T2) || l.T2.After(l.Expiry) {
				t.Fatalf("times T1 %v T2 %v expiry %v", l.T1.Sub(t0), l.T2.Sub(t0), l.Expiry.Sub(t0))
			}
		}
	})
}
