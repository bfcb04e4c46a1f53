package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseNetworks(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`
networks:
  - name: lan
    subnet: 10.20.0.0/24
    dhcp: { from: 10.20.0.100, to: 10.20.0.199 }
    uplink: eth0
  - name: dmz
    mtu: 9000
    subnet: 10.30.0.0/24
    gateway: 10.30.0.254
    vlan: 42
    uplink: eth0
host: { network: lan }
vms:
  - name: web
    kernel: /k
    nics:
      - { network: lan, limits: { rx: 100M, tx: 1G, rx_pps: 1000, tx_pps: 2000, burst: 20ms } }
      - { network: dmz, mac: "52:54:00:aa:bb:cc" }
`))
	if err != nil {
		t.Fatal(err)
	}
	lan, dmz := c.Networks[0], c.Networks[1]
	if lan.Gateway != netip.MustParseAddr("10.20.0.1") || lan.VLAN != 0 || lan.Uplink != "eth0" ||
		lan.DHCP == nil || lan.DHCP.From != netip.MustParseAddr("10.20.0.100") || lan.DHCP.To != netip.MustParseAddr("10.20.0.199") {
		t.Errorf("lan = %+v", lan)
	}
	if lan.MTU != DefaultMTU {
		t.Errorf("lan MTU %d, want the default %d", lan.MTU, DefaultMTU)
	}
	if dmz.Gateway != netip.MustParseAddr("10.30.0.254") || dmz.VLAN != 42 || dmz.DHCP != nil || dmz.MTU != 9000 {
		t.Errorf("dmz = %+v", dmz)
	}
	if c.Host == nil || c.Host.Network != "lan" || c.Host.Address != netip.MustParsePrefix("10.20.0.1/24") || c.Host.DHCP {
		t.Errorf("host = %+v, want lan with the gateway address", c.Host)
	}
	nics := c.VMs[0].NICs
	if len(nics) != 2 || nics[0].Limits != (NICLimits{RX: 100e6, TX: 1e9, RXPPS: 1000, TXPPS: 2000, Burst: 20 * time.Millisecond}) || nics[1].MAC.String() != "52:54:00:aa:bb:cc" {
		t.Fatalf("nics = %+v", nics)
	}
	if nics[0].MTU != DefaultMTU || nics[1].MTU != 9000 {
		t.Errorf("NIC MTUs %d, %d: want their networks' (%d, 9000)", nics[0].MTU, nics[1].MTU, DefaultMTU)
	}
	if want := DefaultMAC("web", 0); nics[0].MAC.String() != want.String() {
		t.Errorf("default MAC %s, want %s", nics[0].MAC, want)
	}
}

func TestDefaultMAC(t *testing.T) {
	a, b, a1 := DefaultMAC("web", 0), DefaultMAC("db", 0), DefaultMAC("web", 1)
	if a.String() == b.String() || a.String() == a1.String() {
		t.Errorf("default MACs collide: %s %s %s", a, b, a1)
	}
	if a.String() != DefaultMAC("web", 0).String() {
		t.Error("default MAC is not stable")
	}
	for _, m := range []string{a.String(), b.String(), a1.String()} {
		if !strings.HasPrefix(m, "02:") {
			t.Errorf("default MAC %s is not locally administered unicast", m)
		}
	}
}

func TestParseNetworkErrors(t *testing.T) {
	nw := func(s string) string { return "networks:\n  - " + s + "\n" }
	for _, tc := range []struct{ name, yaml, want string }{
		{"no subnet", nw("{name: lan}"), "c.yaml:2:5: network lan: subnet is required"},
		{"bad subnet", nw("{name: lan, subnet: 10.0.0.0}"), `subnet "10.0.0.0": want an IPv4 prefix`},
		{"host bits", nw("{name: lan, subnet: 10.0.0.5/24}"), "host bits are set (did you mean 10.0.0.0/24?)"},
		{"ipv6", nw("{name: lan, subnet: 'fd00::/64'}"), "want an IPv4 prefix from /8 to /30"},
		{"vlan", nw("{name: lan, subnet: 10.0.0.0/24, vlan: 4095}"), "vlan 4095: want 1-4094"},
		{"mtu", nw("{name: lan, subnet: 10.0.0.0/24, mtu: 100}"), "mtu 100: want 576 to 65535"},
		{"gateway outside", nw("{name: lan, subnet: 10.0.0.0/24, gateway: 10.0.1.1}"), "gateway 10.0.1.1: not a host address of subnet 10.0.0.0/24"},
		{"gateway broadcast", nw("{name: lan, subnet: 10.0.0.0/24, gateway: 10.0.0.255}"), "not a host address"},
		{"range outside", nw("{name: lan, subnet: 10.0.0.0/24, dhcp: {from: 10.0.0.10, to: 10.0.1.10}}"), "is not inside subnet"},
		{"range backwards", nw("{name: lan, subnet: 10.0.0.0/24, dhcp: {from: 10.0.0.50, to: 10.0.0.10}}"), "is backwards"},
		{"range has gateway", nw("{name: lan, subnet: 10.0.0.0/24, dhcp: {from: 10.0.0.1, to: 10.0.0.10}}"), "contains the gateway 10.0.0.1"},
		{"range half", nw("{name: lan, subnet: 10.0.0.0/24, dhcp: {from: 10.0.0.10}}"), "dhcp: want both from and to"},
		{"bad uplink", nw("{name: lan, subnet: 10.0.0.0/24, uplink: 'eth 0'}"), `uplink "eth 0"`},
		{"duplicate", "networks:\n  - {name: a, subnet: 10.0.0.0/24}\n  - {name: a, subnet: 10.1.0.0/24}\n", `duplicate network name "a"`},
		{"overlap", "networks:\n  - {name: a, subnet: 10.0.0.0/16}\n  - {name: b, subnet: 10.0.1.0/24}\n", "subnets 10.0.0.0/16 and 10.0.1.0/24 overlap"},
		{"vlan twice", "networks:\n  - {name: a, subnet: 10.0.0.0/24, uplink: eth0, vlan: 5}\n  - {name: b, subnet: 10.1.0.0/24, uplink: eth0, vlan: 5}\n", "both use vlan 5 on uplink eth0"},
		{"host unknown network", "host: {network: lan}\n", `host: network "lan" is not configured`},
		{"host bad address", nw("{name: lan, subnet: 10.0.0.0/24}") + "host: {network: lan, address: 10.9.0.1/24}\n", "host: address 10.9.0.1/24 is not a host address of network lan"},
		{"host address syntax", nw("{name: lan, subnet: 10.0.0.0/24}") + "host: {network: lan, address: 10.0.0.1}\n", `address "10.0.0.1": want dhcp or an IPv4 address with prefix length`},
		{"nic unknown network", "vms:\n  - {name: a, kernel: /k, nics: [{network: lan}]}\n", `vm a nic 0: network "lan" is not configured`},
		{"nic no network", "vms:\n  - {name: a, kernel: /k, nics: [{mac: '52:54:00:00:00:01'}]}\n", "nic: network is required"},
		{"nic multicast mac", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, mac: '01:00:5e:00:00:01'}]}\n", "a multicast address cannot be a NIC's"},
		{"nic bad mac", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, mac: 'zz'}]}\n", `mac "zz"`},
		{"mac twice", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, mac: '52:54:00:00:00:01'}]}\n  - {name: b, kernel: /k, nics: [{network: lan, mac: '52:54:00:00:00:01'}]}\n", "mac 52:54:00:00:00:01 is also vm a nic 0's"},
		{"bad rate", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, limits: {rx: 10Mbps}}]}\n", `rx "10Mbps": want bits per second`},
		{"bad pps", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, limits: {rx_pps: 0}}]}\n", "rx_pps 0: want a positive number"},
		{"bad burst", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, limits: {burst: 1h}}]}\n", "burst 1h0m0s: want 1ms to 10s"},
		{"tiny rate", nw("{name: lan, subnet: 10.0.0.0/24}") + "vms:\n  - {name: a, kernel: /k, nics: [{network: lan, limits: {tx: 1000}}]}\n", "tx 1000: want at least 64K"},
	} {
		_, err := Parse("c.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}
