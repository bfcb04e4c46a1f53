package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCmdlineIP(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"console=ttyS0", ""},
		{"ip=dhcp quiet", "dhcp"},
		{"ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off ip=dhcp", "dhcp"}, // the last wins
		{"nfsroot=x myip=1.2.3.4", ""},
	} {
		if got := parseCmdline(tc.in).IP; got != tc.want {
			t.Errorf("parseCmdline(%q).IP = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseIPParam(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	for _, tc := range []struct {
		in   string
		want ipParam
		err  string // the field an error must name; "" for success
	}{
		// Lone values.
		{"dhcp", ipParam{DHCP: true}, ""},
		{"on", ipParam{DHCP: true}, ""},
		{"any", ipParam{DHCP: true}, ""},
		{"off", ipParam{Off: true}, ""},
		{"none", ipParam{Off: true}, ""},
		{"", ipParam{Off: true}, ""},
		{"10.1.2.3", ipParam{Address: pfx("10.1.2.3/8")}, ""},
		{"bootp", ipParam{}, "only dhcp"},
		{"rarp", ipParam{}, "only dhcp"},

		// The full form.
		{"10.0.0.2::10.0.0.1:255.255.255.0::eth0:off", ipParam{
			Address: pfx("10.0.0.2/24"), Gateway: addr("10.0.0.1"), Device: "eth0"}, ""},
		{"192.168.7.9:192.168.7.1:192.168.7.254:255.255.255.0:appliance-1:hr-host:none:192.168.7.1:8.8.8.8:192.168.7.2", ipParam{
			Address: pfx("192.168.7.9/24"), Server: addr("192.168.7.1"), Gateway: addr("192.168.7.254"),
			Hostname: "appliance-1", Device: "hr-host",
			DNS: []netip.Addr{addr("192.168.7.1"), addr("8.8.8.8")}, NTP: addr("192.168.7.2")}, ""},
		{"172.16.5.4", ipParam{Address: pfx("172.16.5.4/16")}, ""},    // classful default
		{"200.1.1.1:::::", ipParam{Address: pfx("200.1.1.1/24")}, ""}, // empty fields
		{"10.0.0.2:::255.255.255.254::eth0", ipParam{Address: pfx("10.0.0.2/31"), Device: "eth0"}, ""},
		{":::::eth1:dhcp", ipParam{DHCP: true, Device: "eth1"}, ""},
		{":::::eth1:", ipParam{DHCP: true, Device: "eth1"}, ""},                     // empty autoconf, no address: any
		{"10.0.0.2::::::dhcp", ipParam{DHCP: true, Address: pfx("10.0.0.2/8")}, ""}, // DHCP wins, as in the kernel
		{"::::box:eth0:dhcp", ipParam{DHCP: true, Hostname: "box", Device: "eth0"}, ""},

		// Errors name the field.
		{"10.0.0.256::::::", ipParam{}, "client-ip"},
		{"fd00::1", ipParam{}, "client-ip"},
		{"10.0.0.2:x", ipParam{}, "server-ip"},
		{"10.0.0.2::10.0.1.1:255.255.255.0", ipParam{}, "gw-ip"},
		{"10.0.0.2::10.0.0.2:255.255.255.0", ipParam{}, "gw-ip"},
		{"10.0.0.2::10.0.0.1.5", ipParam{}, "gw-ip"},
		{"10.0.0.2:::255.0.255.0", ipParam{}, "netmask"},
		{"10.0.0.2:::24", ipParam{}, "netmask"},
		{":::255.255.255.0:::dhcp", ipParam{}, "netmask"},
		{"10.0.0.2::::bad_host", ipParam{}, "hostname"},
		{"10.0.0.2::::" + strings.Repeat("h", 65), ipParam{}, "hostname"},
		{"10.0.0.2:::::a/b", ipParam{}, "device"},
		{"10.0.0.2:::::" + strings.Repeat("e", 16), ipParam{}, "device"},
		{"10.0.0.2::::::bootp", ipParam{}, "autoconf"},
		{"10.0.0.2::::::static", ipParam{}, "autoconf"},
		{"10.0.0.2:::::::1.2.3", ipParam{}, "dns0-ip"},
		{"10.0.0.2::::::::::", ipParam{}, "at most 10"},
		{"10.0.0.2::::::::9.9.9.9:x", ipParam{}, "ntp0-ip"},
		{"10.0.0.0:::255.255.255.0", ipParam{}, "client-ip"},   // the subnet itself
		{"10.0.0.255:::255.255.255.0", ipParam{}, "client-ip"}, // its broadcast
		{"224.0.0.1", ipParam{}, "client-ip"},
		{":::::eth0:off", ipParam{}, "client-ip is required"},
	} {
		got, err := parseIPParam(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseIPParam(%q) error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseIPParam(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseIPParam(%q) =\n  %+v\nwant\n  %+v", tc.in, got, tc.want)
		}
	}
}

// FuzzParseIPParam: whatever the command line says, no panic, and what is
// accepted can be configured as it stands.
func FuzzParseIPParam(f *testing.F) {
	for _, s := range []string{
		"dhcp", "off", "10.1.2.3",
		"10.0.0.2::10.0.0.1:255.255.255.0::eth0:off",
		"192.168.7.9:192.168.7.1:192.168.7.254:255.255.255.0:appliance-1:hr-host:none:192.168.7.1:8.8.8.8:192.168.7.2",
		":::::eth1:dhcp", "10.0.0.2:::255.0.255.0", "10.0.0.2:::::::::::",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseIPParam(s)
		if err != nil {
			if !strings.Contains(err.Error(), "ip=") {
				t.Fatalf("error %q does not say it is about ip=", err)
			}
			return
		}
		switch {
		case p.Off:
			if p.DHCP || p.Address.IsValid() {
				t.Fatalf("off with settings: %+v", p)
			}
		case p.DHCP:
		default:
			if !p.Address.Addr().Is4() || !usableAddr(p.Address) {
				t.Fatalf("static with address %s", p.Address)
			}
			if p.Gateway.IsValid() && !p.Address.Contains(p.Gateway) {
				t.Fatalf("gateway %s outside %s", p.Gateway, p.Address)
			}
		}
		if p.Device != "" && !validIfname(p.Device) || p.Hostname != "" && !validHostname(p.Hostname) {
			t.Fatalf("accepted device %q hostname %q", p.Device, p.Hostname)
		}
	})
}

func TestParseRunJob(t *testing.T) {
	c := parseCmdline("quiet hyperroot.run=/kvmtests/kvmtest,run,/kvmtests/manifest hyperroot.oneshot=1")
	j, err := parseRunJob(c.Run)
	if err != nil || j == nil || j.Path != "/kvmtests/kvmtest" || len(j.Args) != 2 || j.Args[0] != "run" || j.Args[1] != "/kvmtests/manifest" {
		t.Fatalf("parseRunJob(%q) = %+v, %v", c.Run, j, err)
	}
	if j, err := parseRunJob(""); j != nil || err != nil {
		t.Errorf("no hyperroot.run: got %+v, %v", j, err)
	}
	if _, err := parseRunJob("bench,boot"); err == nil {
		t.Error("a relative program path was accepted")
	}
}

func TestCmdlineTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"console=ttyS0", 0, false},
		{"hyperroot.timeout=3m30s", 210 * time.Second, false},
		{"hyperroot.timeout=5m hyperroot.timeout=90s", 90 * time.Second, false},
		{"hyperroot.timeout=soon", 0, true},
		{"hyperroot.timeout=-1s", 0, true},
		{"hyperroot.timeout=0s", 0, true},
		{"hyperroot.timeout=x hyperroot.timeout=1m", time.Minute, false},
	} {
		c := parseCmdline(tc.in)
		if c.Timeout != tc.want || (c.TimeoutErr != nil) != tc.err {
			t.Errorf("parseCmdline(%q): timeout %s error %v, want %s error %v", tc.in, c.Timeout, c.TimeoutErr, tc.want, tc.err)
		}
	}
}

func TestCmdlineSwitchHung(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"console=ttyS0", 0, false},
		{"hyperroot.switch.hung=30s", 30 * time.Second, false},
		{"hyperroot.switch.hung=20s", 20 * time.Second, false},
		{"hyperroot.switch.hung=19s", 0, true}, // under two heartbeats
		{"hyperroot.switch.hung=soon", 0, true},
	} {
		c := parseCmdline(tc.in)
		if c.SwitchHung != tc.want || (c.SwitchHungErr != nil) != tc.err {
			t.Errorf("parseCmdline(%q): %s error %v, want %s error %v", tc.in, c.SwitchHung, c.SwitchHungErr, tc.want, tc.err)
		}
	}
}
