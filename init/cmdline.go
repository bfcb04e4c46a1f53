package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// cmdline holds the kernel command line's hyperroot.* options, and ip=.
type cmdline struct {
	Oneshot bool   // hyperroot.oneshot=1: power off when the work is done
	Config  string // hyperroot.config=<path|URL>
	// ConfigSHA256 (hyperroot.config.sha256=<hex>) pins a fetched
	// configuration's digest.
	ConfigSHA256 string
	// ConfigTimeout (hyperroot.config.timeout=<Go duration>) bounds how
	// long a configuration URL is tried before the appliance gives up and
	// runs no VMs (defaultConfigTimeout when 0). ConfigTimeoutErr is set
	// when the value does not parse.
	ConfigTimeout    time.Duration
	ConfigTimeoutErr error
	Run              string // hyperroot.run=<path>[,<arg>...]: a program to run once the appliance is ready
	// Timeout (hyperroot.timeout=<Go duration>, e.g. 3m30s), counted from
	// the kernel's start, ends a oneshot run that has not finished by then:
	// the supervisor dumps every running VMM's state (dump.go), reports
	// the result as failed and powers off. 0: no timeout. TimeoutErr is
	// set when the value does not parse.
	Timeout    time.Duration
	TimeoutErr error
	// SwitchHung (hyperroot.switch.hung=<Go duration>, at least
	// minSwitchHung) replaces switchHungAfter: how long the switch may
	// go without a heartbeat before PID 1 kills it as hung. 0: the
	// default. SwitchHungErr is set when the value is refused.
	SwitchHung    time.Duration
	SwitchHungErr error
	// IP is the value of ip=, unparsed: parseIPParam reports its errors
	// when the host network is set up, on the console.
	IP string
	// Permissive is the kernel's own enforcing=0: SELinux logs what it
	// would deny instead of denying it (for debugging the policy).
	Permissive bool
}

func readCmdline() cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return parseCmdline(string(b))
}

// parseCmdline picks the hyperroot.* options out of a kernel command line.
// Later occurrences win, as with the kernel's own parameters.
func parseCmdline(s string) cmdline {
	var c cmdline
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "hyperroot.oneshot":
			c.Oneshot = v == "1" || v == "true" || v == "yes"
		case "hyperroot.config":
			c.Config = v
		case "hyperroot.config.sha256":
			c.ConfigSHA256 = v
		case "hyperroot.config.timeout":
			c.ConfigTimeout, c.ConfigTimeoutErr = positiveDuration(k, v)
		case "hyperroot.run":
			c.Run = v
		case "hyperroot.timeout":
			c.Timeout, c.TimeoutErr = positiveDuration(k, v)
		case "hyperroot.switch.hung":
			c.SwitchHung, c.SwitchHungErr = positiveDuration(k, v)
			if c.SwitchHungErr == nil && c.SwitchHung < minSwitchHung {
				c.SwitchHung, c.SwitchHungErr = 0, fmt.Errorf("%s=%s: want at least %s (two heartbeats)", k, v, minSwitchHung)
			}
		case "ip":
			c.IP = v
		case "enforcing":
			c.Permissive = v == "0"
		}
	}
	return c
}

// positiveDuration parses the value v of option k as a Go duration (3m30s)
// greater than zero.
func positiveDuration(k, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err == nil && d <= 0 {
		err = fmt.Errorf("not positive")
	}
	if err != nil {
		return 0, fmt.Errorf("%s=%s: %w", k, v, err)
	}
	return d, nil
}

// ipParam is the kernel's ip= parameter (Documentation/admin-guide/
// nfs/nfsroot.rst), which the appliance's kernel ignores (it has no
// CONFIG_IP_PNP) and PID 1 applies instead:
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// or a lone autoconf value (ip=dhcp, ip=off). Empty fields take defaults;
// an empty ip= is ip=off, as for the kernel.
type ipParam struct {
	// Off is a lone ip=off or ip=none: no configuration from the command
	// line (the configuration file's host address applies).
	Off bool
	// DHCP asks for an address by DHCP instead of Address.
	DHCP bool
	// Address is the static address with the netmask's prefix length.
	Address netip.Prefix
	// Server is server-ip, the boot server: parsed, and unused.
	Server netip.Addr
	// Gateway, if valid, becomes the default route (static only).
	Gateway netip.Addr
	// Hostname, if set, becomes the appliance's host name.
	Hostname string
	// Device is the interface; "" means the default (hr-host or eth0).
	Device string
	// DNS and NTP servers: parsed so that a typo is an error, not used
	// (the appliance runs no resolver or NTP client yet).
	DNS []netip.Addr
	NTP netip.Addr
}

// ipSyntax names ip='s fields in order, for error messages.
const ipSyntax = "client-ip:server-ip:gw-ip:netmask:hostname:device:autoconf:dns0-ip:dns1-ip:ntp0-ip"

// parseIPParam parses the value of ip= strictly: an error names the field
// at fault. Unlike the kernel, which skips what it cannot parse, a typo
// here must not leave the appliance unreachable without a word.
func parseIPParam(s string) (ipParam, error) {
	var p ipParam
	switch s {
	case "", "off", "none":
		p.Off = true
		return p, nil
	case "on", "any", "dhcp", "bootp", "rarp", "both":
		// ip=<autoconf> alone; any other lone value is a client-ip.
		if err := p.autoconf(s, true); err != nil {
			return p, fmt.Errorf("ip=%s: %w", s, err)
		}
		return p, nil
	}
	ipFields := strings.Split(ipSyntax, ":")
	f := strings.Split(s, ":")
	if len(f) > len(ipFields) {
		return p, fmt.Errorf("ip=%s: %d fields, at most %d (%s)", s, len(f), len(ipFields), ipSyntax)
	}
	f = append(f, make([]string, len(ipFields)-len(f))...)
	field := func(i int, err error) error { return fmt.Errorf("ip= %s %q: %w", ipFields[i], f[i], err) }
	var err error
	if p.Address, err = ipv4(f[0]); err != nil {
		return p, field(0, err)
	}
	if p.Server, err = ipv4Addr(f[1]); err != nil {
		return p, field(1, err)
	}
	if p.Gateway, err = ipv4Addr(f[2]); err != nil {
		return p, field(2, err)
	}
	if f[3] != "" {
		m, err := ipv4Addr(f[3])
		if err != nil {
			return p, field(3, err)
		}
		b := m.As4()
		ones, bits := net.IPMask(b[:]).Size()
		if bits != 32 {
			return p, field(3, fmt.Errorf("not a contiguous netmask"))
		}
		if !p.Address.IsValid() {
			return p, field(3, fmt.Errorf("a netmask needs a client-ip"))
		}
		p.Address = netip.PrefixFrom(p.Address.Addr(), ones)
	}
	if p.Hostname = f[4]; p.Hostname != "" && !validHostname(p.Hostname) {
		return p, field(4, fmt.Errorf("want at most 64 letters, digits, '-' and '.'"))
	}
	if p.Device = f[5]; p.Device != "" && !validIfname(p.Device) {
		return p, field(5, fmt.Errorf("want an interface name (1-15 characters, no '/', ':' or spaces)"))
	}
	if err := p.autoconf(f[6], !p.Address.IsValid()); err != nil {
		return p, field(6, err)
	}
	for i := 7; i <= 8; i++ {
		a, err := ipv4Addr(f[i])
		if err != nil {
			return p, field(i, err)
		}
		if a.IsValid() {
			p.DNS = append(p.DNS, a)
		}
	}
	if p.NTP, err = ipv4Addr(f[9]); err != nil {
		return p, field(9, err)
	}
	switch {
	case p.DHCP:
	case !p.Address.IsValid():
		return p, fmt.Errorf("ip=%s: client-ip is required unless autoconf is dhcp", s)
	case !usableAddr(p.Address):
		return p, field(0, fmt.Errorf("%s is not a host address of its subnet %s", p.Address.Addr(), p.Address.Masked()))
	case p.Gateway.IsValid() && (!p.Address.Contains(p.Gateway) || p.Gateway == p.Address.Addr()):
		return p, field(2, fmt.Errorf("not another host of the client's subnet %s", p.Address.Masked()))
	}
	return p, nil
}

// autoconf reads the autoconf field. An empty field is the kernel's
// "any": DHCP when no client-ip is given; off and none mean the static
// fields alone. BOOTP and RARP are refused rather than quietly replaced by
// DHCP.
func (p *ipParam) autoconf(v string, noAddress bool) error {
	switch v {
	case "":
		p.DHCP = noAddress
	case "off", "none":
	case "on", "any", "dhcp":
		p.DHCP = true
	case "bootp", "rarp", "both":
		return fmt.Errorf("only dhcp is supported")
	default:
		return fmt.Errorf("want off, none, on, any or dhcp")
	}
	return nil
}

// ipv4 parses a dotted-quad client address as a prefix with the classful
// length the kernel defaults to when no netmask follows.
func ipv4(s string) (netip.Prefix, error) {
	a, err := ipv4Addr(s)
	if err != nil || !a.IsValid() {
		return netip.Prefix{}, err
	}
	bits := 24
	switch b := a.As4(); {
	case b[0] < 128:
		bits = 8
	case b[0] < 192:
		bits = 16
	}
	return netip.PrefixFrom(a, bits), nil
}

// ipv4Addr parses a dotted-quad IPv4 address; "" is the zero Addr.
func ipv4Addr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("want an IPv4 address such as 10.0.0.2")
	}
	return a, nil
}

// usableAddr reports whether p's address can be one host's: not
// unspecified, loopback, multicast, nor (below /31) the subnet's network
// or broadcast address.
func usableAddr(p netip.Prefix) bool {
	a := p.Addr()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	if p.Bits() >= 31 {
		return true
	}
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return a != p.Masked().Addr() && a != netip.AddrFrom4(b)
}

// validHostname accepts what sethostname(2) takes (64 bytes) restricted
// to the characters of DNS names.
func validHostname(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// validIfname accepts what the kernel takes as an interface name.
func validIfname(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n\x00")
}
