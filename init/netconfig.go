package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/internal/fetch"
	"github.com/hyperroot/hyperroot/internal/netconf"
)

// A host that PXE-boots gets its configuration from the network:
// hyperroot.config=<http(s) URL> on the kernel command line. Before any
// switch or VM exists, PID 1 brings up a NIC for that (ip= if given, else
// DHCP on the first NIC with link), expands the URL's ${...} with this
// host's facts so that one server serves a fleet, and fetches it, retrying
// while the network or the server comes up. The address is released
// afterwards unless ip= asked for it to stay (the host address, hostnet.go).

// defaultConfigTimeout is how long a configuration URL is tried by default:
// long enough for a switch port's spanning tree and a server's boot, short
// enough that a mistake shows within minutes.
const defaultConfigTimeout = 5 * time.Minute

// fetchedConfig is where a fetched configuration is kept for the switch,
// which reads its configuration from a file.
var fetchedConfig = filepath.Join(confDir, "fetched.yaml")

// isURL tells a configuration URL from a path.
func isURL(src string) bool { return strings.Contains(src, "://") }

// fetchConfig fetches the configuration at args.Config and returns it and
// the URL it came from (expanded).
func fetchConfig(c *console, args cmdline) ([]byte, string, error) {
	if args.ConfigTimeoutErr != nil {
		return nil, args.Config, args.ConfigTimeoutErr
	}
	timeout := args.ConfigTimeout
	if timeout == 0 {
		timeout = defaultConfigTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n, err := bringUpFetchNet(ctx, c, args.IP)
	if err != nil {
		return nil, args.Config, fmt.Errorf("%s: network: %w", args.Config, err)
	}
	defer n.release(c)
	vars := n.vars()
	u, err := fetch.Expand(args.Config, vars)
	if err != nil {
		return nil, args.Config, fmt.Errorf("hyperroot.config=%s: %w", args.Config, err)
	}
	if u != args.Config {
		c.Printf("config: fetching %s (from %s)", u, args.Config)
	} else {
		c.Printf("config: fetching %s", u)
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, Resolver: resolverFor(n.dns)}
	client := &http.Client{Timeout: fetch.AttemptTimeout, Transport: &http.Transport{DialContext: dialer.DialContext}}
	data, err := fetch.Get(ctx, u, fetch.Options{SHA256: args.ConfigSHA256, Client: client,
		Retry: func(attempt int, err error, wait time.Duration) {
			c.Printf("config: %s: %v; attempt %d failed, again in %s", u, err, attempt, wait)
		}})
	if err != nil {
		return nil, u, err
	}
	pin := "not pinned (hyperroot.config.sha256=)"
	if args.ConfigSHA256 != "" {
		pin = "as pinned"
	}
	c.Printf("config: fetched %s: %d bytes, sha256 %x, %s", u, len(data), sha256.Sum256(data), pin)
	return data, u, nil
}

// fetchNet is the interface and address the configuration is fetched
// through.
type fetchNet struct {
	ifname   string
	mac      net.HardwareAddr
	lease    *netconf.Lease // nil for a static address
	dns      []netip.Addr
	hostname string
	keep     bool // ip= configured it: the host address stays
}

// vars are the facts a configuration URL may name, spelt as iPXE spells
// them: ${mac} (52:54:00:12:34:56), ${mac:hexhyp} (52-54-00-12-34-56),
// ${hostname} (from DHCP or ip=, else the appliance's), ${uuid} (the
// SMBIOS system UUID, where the firmware gives one).
func (n *fetchNet) vars() map[string]string {
	v := map[string]string{
		"mac":        n.mac.String(),
		"mac:hexhyp": strings.ReplaceAll(n.mac.String(), ":", "-"),
		"hostname":   n.hostname,
	}
	if b, err := os.ReadFile("/sys/class/dmi/id/product_uuid"); err == nil {
		if id := strings.ToLower(strings.TrimSpace(string(b))); id != "" {
			v["uuid"] = id
		}
	}
	return v
}

// release gives the address back unless ip= asked for it.
func (n *fetchNet) release(c *console) {
	if n.keep {
		return
	}
	var err error
	if n.lease != nil {
		err = n.lease.Release(n.ifname, netconf.DHCPOptions{})
	} else {
		err = netconf.ClearAddress(n.ifname)
	}
	if err != nil {
		c.Errorf("net", err)
		return
	}
	c.Printf("net: %s: address released (it was for the configuration; ip= or host: give the appliance one)", n.ifname)
}

// bringUpFetchNet configures a NIC for fetching: as ip= says when it is
// given (and names no device of the switch's), else by DHCP on the first
// NIC with link.
func bringUpFetchNet(ctx context.Context, c *console, ipArg string) (*fetchNet, error) {
	var p ipParam
	if ipArg != "" {
		var err error
		if p, err = parseIPParam(ipArg); err != nil {
			return nil, err
		}
	}
	n := &fetchNet{ifname: p.Device, keep: ipArg != "" && !p.Off, hostname: p.Hostname}
	if n.ifname == hostTap {
		return nil, fmt.Errorf("ip= names %s, the switch's host port, which exists only once the configuration is known", hostTap)
	}
	if n.ifname == "" {
		var err error
		if n.ifname, err = firstLinkedNIC(ctx, c); err != nil {
			return nil, err
		}
	} else if err := waitLink(ctx, n.ifname); err != nil {
		return nil, err
	}
	iface, err := net.InterfaceByName(n.ifname)
	if err != nil {
		return nil, err
	}
	n.mac = iface.HardwareAddr
	if n.hostname == "" {
		n.hostname, _ = os.Hostname()
	}
	how := ""
	if p.Address.IsValid() && !p.DHCP {
		if err := netconf.SetAddress(n.ifname, p.Address); err != nil {
			return nil, err
		}
		if p.Gateway.IsValid() {
			if err := netconf.SetDefaultRoute(p.Gateway); err != nil {
				return nil, err
			}
		}
		n.dns = p.DNS
		how = fmt.Sprintf("%s via %s by ip=", p.Address, p.Gateway)
	} else {
		l, err := leaseUntil(ctx, c, n.ifname, p.Hostname)
		if err != nil {
			return nil, err
		}
		if err := l.Apply(n.ifname); err != nil {
			return nil, err
		}
		n.lease, n.dns = l, l.DNS
		if l.HostName != "" && p.Hostname == "" {
			n.hostname = l.HostName
		}
		how = fmt.Sprintf("%s via %s by DHCP from %s", l.Address, l.Router, l.Server)
	}
	c.Printf("net: %s (%s) %s, dns %v, to fetch the configuration", n.ifname, n.mac, how, n.dns)
	return n, nil
}

// leaseUntil asks for a DHCP lease on ifname until one comes or ctx ends.
func leaseUntil(ctx context.Context, c *console, ifname, hostname string) (*netconf.Lease, error) {
	wait := hostRetryMin
	for {
		l, err := netconf.RequestLease(ctx, ifname, netconf.DHCPOptions{Hostname: hostname})
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		c.Printf("net: %v; again in %s", err, wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, hostRetryMax)
	}
}

// sysNet is where the kernel lists network interfaces.
var sysNet = "/sys/class/net"

// physicalNICs are the interfaces backed by a device (not lo, taps,
// bridges), by name.
func physicalNICs() []string {
	ents, _ := os.ReadDir(sysNet)
	var nics []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(sysNet, e.Name(), "device")); err == nil {
			nics = append(nics, e.Name())
		}
	}
	slices.Sort(nics)
	return nics
}

// hasCarrier says whether ifname's link is up (it must be up
// administratively for the kernel to know).
func hasCarrier(ifname string) bool {
	b, err := os.ReadFile(filepath.Join(sysNet, ifname, "carrier"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// linkPoll is how often the NICs' carrier is looked at while waiting.
const linkPoll = 250 * time.Millisecond

// firstLinkedNIC brings every physical NIC up and returns the first, by
// name, whose link is up, waiting for one until ctx ends.
func firstLinkedNIC(ctx context.Context, c *console) (string, error) {
	said := false
	for {
		nics := physicalNICs()
		for _, nic := range nics {
			netconf.Up(nic)
		}
		for _, nic := range nics {
			if hasCarrier(nic) {
				return nic, nil
			}
		}
		if !said {
			c.Printf("net: waiting for link on a NIC (have %s)", orNone(nics))
			said = true
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no NIC with link (have %s)", orNone(nics))
		case <-time.After(linkPoll):
		}
	}
}

// waitLink brings ifname up and waits for its link.
func waitLink(ctx context.Context, ifname string) error {
	for {
		if err := netconf.Up(ifname); err != nil {
			if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "no such device") {
				return fmt.Errorf("%s: no such NIC (have %s)", ifname, orNone(physicalNICs()))
			}
			return err
		}
		if hasCarrier(ifname) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no link", ifname)
		case <-time.After(linkPoll):
		}
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// resolverFor resolves names through the given servers (the lease's or
// ip='s): the appliance has no resolv.conf.
func resolverFor(servers []netip.Addr) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		if len(servers) == 0 {
			return nil, errors.New("no name server (DHCP named none; give one in ip=, or use an address in the URL)")
		}
		var d net.Dialer
		var err error
		for _, s := range servers {
			var conn net.Conn
			if conn, err = d.DialContext(ctx, network, netip.AddrPortFrom(s, 53).String()); err == nil {
				return conn, nil
			}
		}
		return nil, err
	}}
}
