// This test drives HandleFrame with insomniacslk's real client (nclient4)
// across a veth pair into a new network namespace.

package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/netnstest"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

func TestRealClientOverVeth(t *testing.T) {
	id := os.Getpid() % 100000
	host, client := fmt.Sprintf("hrd%dh", id), fmt.Sprintf("hrd%dc", id)
	ns := netnstest.New(t)
	ns.VethAcross(t, host, client)

	var (
		mu     sync.Mutex
		leased []netip.Addr
	)
	cfg := Config{
		Subnet:    netip.MustParsePrefix("10.77.0.0/24"),
		From:      netip.MustParseAddr("10.77.0.100"),
		To:        netip.MustParseAddr("10.77.0.199"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("1.1.1.1")},
		ServerMAC: net.HardwareAddr{0x02, 0x68, 0x72, 0, 0, 1},
		LeasePath: t.TempDir() + "/leases",
		Log:       quiet,
		OnLease: func(_ net.HardwareAddr, ip netip.Addr) {
			mu.Lock()
			leased = append(leased, ip)
			mu.Unlock()
		},
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := netnstest.Serve(t, host, s.HandleFrame)

	var c *nclient4.Client
	ns.Do(t, func() {
		var err error
		if c, err = nclient4.New(client, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3)); err != nil {
			t.Fatalf("nclient4 in %s: %v", ns.Name(), err)
		}
	})
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lease, err := c.Request(ctx)
	if err != nil {
		t.Fatalf("DHCP request: %v", err)
	}
	ack := lease.ACK
	got, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if got != cfg.From {
		t.Errorf("leased %v, want %v", got, cfg.From)
	}
	if r := ack.Router(); len(r) != 1 || !r[0].Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("router %v", r)
	}
	if m := ack.SubnetMask(); m.String() != net.CIDRMask(24, 32).String() {
		t.Errorf("mask %v", m)
	}
	if d := ack.DNS(); len(d) != 2 || !d[0].Equal(net.IPv4(10, 77, 0, 1)) || !d[1].Equal(net.IPv4(1, 1, 1, 1)) {
		t.Errorf("dns %v", d)
	}
	if lt := ack.IPAddressLeaseTime(0); lt != DefaultLeaseTime {
		t.Errorf("lease time %v", lt)
	}
	if sid := ack.ServerIdentifier(); !sid.Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("server id %v", sid)
	}
	if ip, ok := s.Lookup(ack.ClientHWAddr); !ok || ip != got {
		t.Errorf("Lookup(%v) = %v %v", ack.ClientHWAddr, ip, ok)
	}
	mu.Lock()
	if len(leased) != 1 || leased[0] != got {
		t.Errorf("OnLease saw %v", leased)
	}
	mu.Unlock()

	// A restarted switch (new Server on the same lease file) gives the
	// same VM the same address.
	stop()
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	netnstest.Serve(t, host, s2.HandleFrame)
	lease2, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptHostName("again")))
	if err != nil {
		t.Fatalf("DHCP request after restart: %v", err)
	}
	if !lease2.ACK.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("after restart leased %v, want %v", lease2.ACK.YourIPAddr, ack.YourIPAddr)
	}
}
