package config

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Network is one L2 segment of the switch: VMs' NICs on it reach each other,
// and nothing on any other network.
type Network struct {
	Name string
	// Subnet is the network's IPv4 prefix, such as 10.20.0.0/24.
	Subnet netip.Prefix
	// Gateway is the appliance's address on the network (the DHCP router
	// option and the host port's static address); default the subnet's
	// first host (.1).
	Gateway netip.Addr
	// VLAN is the 802.1Q tag of the network's frames on a trunk uplink,
	// 1-4094; 0 means untagged.
	VLAN uint16
	// DHCP, when set, makes the switch serve DHCPv4 leases from the range.
	DHCP *DHCPRange
	// Uplink is a physical NIC bridged to the network, or "".
	Uplink string
	// MTU is the largest IP packet the network's interfaces use: the VMs'
	// NICs are told it (VIRTIO_NET_F_MTU) and the host port takes it.
	// Default 1500.
	MTU int
}

// DefaultMTU is a network's MTU unless the configuration says otherwise.
const DefaultMTU = 1500

// DHCPRange is the addresses the switch leases, inclusive.
type DHCPRange struct {
	From, To netip.Addr
}

// Host is how the appliance's own IP stack joins a network: through the
// switch's internal port (a tap device), with a static address or by DHCP.
type Host struct {
	Network string
	// Address is a static address with its prefix length; the zero
	// value (with DHCP false) means the network's gateway address.
	Address netip.Prefix
	DHCP    bool // get the address by DHCP instead (from the network's own server or the uplink's)
}

// NIC is one virtio-net interface of a VM, a port of the switch.
type NIC struct {
	Network string
	// MAC is the interface's address; by default one derived from the VM
	// name and the NIC's index, locally administered, stable across
	// restarts (so are DHCP leases, which follow the MAC).
	MAC    net.HardwareAddr
	Limits NICLimits
	MTU    int // the network's, filled in by Parse
}

// NICLimits bound a NIC's traffic with token buckets, in each direction as
// the VM sees it (RX: to the VM). Zero means unlimited.
type NICLimits struct {
	RX, TX       uint64 // bits per second
	RXPPS, TXPPS uint64 // packets per second
	// Burst is how much traffic above the rate may pass at once after a
	// quiet period, as a duration of the rate (default 50 ms: the bucket
	// holds 50 ms worth, at least one 64 KiB frame).
	Burst time.Duration
}

// MaxNICs bounds NICs per VM; each takes a PCI slot.
const MaxNICs = 8

func (d *decoder) network(n *yaml.Node) Network {
	nw := Network{MTU: DefaultMTU}
	var gateway *yaml.Node
	d.mapping(n, map[string]func(*yaml.Node){
		"name": func(v *yaml.Node) {
			nw.Name = d.name(v)
		},
		"subnet": func(v *yaml.Node) {
			p, err := netip.ParsePrefix(d.str(v))
			switch {
			case err != nil && v.Kind == yaml.ScalarNode:
				d.errf(v, "subnet %q: want an IPv4 prefix such as 10.20.0.0/24", v.Value)
			case err != nil:
			case !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 8:
				d.errf(v, "subnet %s: want an IPv4 prefix from /8 to /30", p)
			case p.Masked() != p:
				d.errf(v, "subnet %s: host bits are set (did you mean %s?)", p, p.Masked())
			default:
				nw.Subnet = p
			}
		},
		"gateway": func(v *yaml.Node) { gateway = v; nw.Gateway = d.addr(v, "gateway") },
		"vlan": func(v *yaml.Node) {
			if id, ok := d.integer(v); ok && (id < 0 || id > 4094) {
				d.errf(v, "vlan %d: want 1-4094, or 0 for untagged", id)
			} else if ok {
				nw.VLAN = uint16(id)
			}
		},
		"dhcp": func(v *yaml.Node) {
			r := &DHCPRange{}
			d.mapping(v, map[string]func(*yaml.Node){
				"from": func(v *yaml.Node) { r.From = d.addr(v, "from") },
				"to":   func(v *yaml.Node) { r.To = d.addr(v, "to") },
			})
			if v.Kind == yaml.MappingNode && (!r.From.IsValid() || !r.To.IsValid()) {
				d.errf(v, "dhcp: want both from and to")
			}
			nw.DHCP = r
		},
		"mtu": func(v *yaml.Node) {
			if m, ok := d.integer(v); ok && (m < 576 || m > 65535) {
				d.errf(v, "mtu %d: want 576 to 65535", m)
			} else if ok {
				nw.MTU = m
			}
		},
		"uplink": func(v *yaml.Node) {
			nw.Uplink = d.str(v)
			if !ifnameRE.MatchString(nw.Uplink) {
				d.errf(v, "uplink %q: want a network interface name (1-15 characters, no '/' or spaces)", nw.Uplink)
			}
		},
	})
	if n.Kind != yaml.MappingNode {
		return nw
	}
	if nw.Name == "" {
		d.errf(n, "network: name is required")
	}
	if !nw.Subnet.IsValid() {
		if !d.has(n, "subnet") {
			d.errf(n, "network %s: subnet is required", nw.Name)
		}
		return nw
	}
	if !nw.Gateway.IsValid() {
		nw.Gateway = nw.Subnet.Addr().Next()
	} else if !hostIn(nw.Subnet, nw.Gateway) {
		d.errf(gateway, "gateway %s: not a host address of subnet %s", nw.Gateway, nw.Subnet)
	}
	if r := nw.DHCP; r != nil && r.From.IsValid() && r.To.IsValid() {
		switch {
		case !hostIn(nw.Subnet, r.From) || !hostIn(nw.Subnet, r.To):
			d.errf(n, "network %s: dhcp range %s-%s is not inside subnet %s", nw.Name, r.From, r.To, nw.Subnet)
		case r.To.Less(r.From):
			d.errf(n, "network %s: dhcp range %s-%s is backwards", nw.Name, r.From, r.To)
		case !nw.Gateway.Less(r.From) && !r.To.Less(nw.Gateway):
			d.errf(n, "network %s: dhcp range %s-%s contains the gateway %s", nw.Name, r.From, r.To, nw.Gateway)
		}
	}
	return nw
}

// hostIn reports whether a is in p and is neither its network nor its
// broadcast address.
func hostIn(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || !p.Contains(a) || a == p.Addr() {
		return false
	}
	b := a.As4()
	host := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	mask := uint32(1)<<(32-p.Bits()) - 1
	return host&mask != mask
}

func (d *decoder) host(n *yaml.Node) *Host {
	h := &Host{}
	d.mapping(n, map[string]func(*yaml.Node){
		"network": func(v *yaml.Node) { h.Network = d.str(v) },
		"address": func(v *yaml.Node) {
			s := d.str(v)
			if s == "dhcp" {
				h.DHCP = true
				return
			}
			p, err := netip.ParsePrefix(s)
			if err != nil || !p.Addr().Is4() {
				if v.Kind == yaml.ScalarNode {
					d.errf(v, "address %q: want dhcp or an IPv4 address with prefix length, such as 10.20.0.1/24", s)
				}
				return
			}
			h.Address = p
		},
	})
	if n.Kind == yaml.MappingNode && h.Network == "" {
		d.errf(n, "host: network is required")
	}
	return h
}

func (d *decoder) nic(n *yaml.Node) NIC {
	var nic NIC
	d.mapping(n, map[string]func(*yaml.Node){
		"network": func(v *yaml.Node) { nic.Network = d.str(v) },
		"mac": func(v *yaml.Node) {
			mac, err := net.ParseMAC(d.str(v))
			switch {
			case err != nil || len(mac) != 6:
				if v.Kind == yaml.ScalarNode {
					d.errf(v, "mac %q: want six colon-separated hex bytes such as 52:54:00:12:34:56", v.Value)
				}
			case mac[0]&1 != 0:
				d.errf(v, "mac %s: a multicast address cannot be a NIC's", mac)
			case mac.String() == "00:00:00:00:00:00":
				d.errf(v, "mac %s: the zero address cannot be a NIC's", mac)
			default:
				nic.MAC = mac
			}
		},
		"limits": func(v *yaml.Node) {
			d.mapping(v, map[string]func(*yaml.Node){
				"rx":     func(v *yaml.Node) { nic.Limits.RX = d.bitrate(v, "rx") },
				"tx":     func(v *yaml.Node) { nic.Limits.TX = d.bitrate(v, "tx") },
				"rx_pps": func(v *yaml.Node) { nic.Limits.RXPPS = d.pps(v, "rx_pps") },
				"tx_pps": func(v *yaml.Node) { nic.Limits.TXPPS = d.pps(v, "tx_pps") },
				"burst":  func(v *yaml.Node) { nic.Limits.Burst = d.duration(v, "burst", time.Millisecond, 10*time.Second) },
			})
		},
	})
	if n.Kind == yaml.MappingNode && nic.Network == "" {
		d.errf(n, "nic: network is required")
	}
	return nic
}

// DefaultMAC is the MAC a VM's NIC gets when the configuration names none:
// locally administered (0x02 in the first byte), unicast, and a hash of
// the VM name and NIC index, so that it survives restarts and
// reconfiguration and differs between VMs.
func DefaultMAC(vm string, index int) net.HardwareAddr {
	h := sha256.Sum256([]byte(fmt.Sprintf("hyperroot nic %s %d", vm, index)))
	return net.HardwareAddr{0x02, h[0], h[1], h[2], h[3], h[4]}
}

var (
	ifnameRE  = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)
	bitrateRE = regexp.MustCompile(`^([0-9]+)\s*([KkMmGg]?)$`)
)

// bitrate reads bits per second written as 100M, 1G, 64K or 1000000
// (decimal units, as link speeds are written).
func (d *decoder) bitrate(n *yaml.Node, what string) uint64 {
	s := d.str(n)
	m := bitrateRE.FindStringSubmatch(s)
	if m == nil {
		if n.Kind == yaml.ScalarNode {
			d.errf(n, "%s %q: want bits per second such as 100M, 1G or 64K", what, s)
		}
		return 0
	}
	v, err := strconv.ParseUint(m[1], 10, 64)
	mult := map[string]uint64{"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[strings.ToUpper(m[2])]
	if err != nil || v > ^uint64(0)/mult {
		d.errf(n, "%s %q: too large", what, s)
		return 0
	}
	if v*mult < 64e3 {
		d.errf(n, "%s %s: want at least 64K bits per second (leave it out for no limit)", what, s)
		return 0
	}
	return v * mult
}

// pps reads a packet rate: a whole number of packets per second, at least 1.
func (d *decoder) pps(n *yaml.Node, what string) uint64 {
	v, ok := d.integer(n)
	if ok && v < 1 {
		d.errf(n, "%s %d: want a positive number of packets per second (leave it out for no limit)", what, v)
		return 0
	}
	return uint64(max(v, 0))
}

func (d *decoder) addr(n *yaml.Node, what string) netip.Addr {
	s := d.str(n)
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		if n.Kind == yaml.ScalarNode {
			d.errf(n, "%s %q: want an IPv4 address", what, s)
		}
		return netip.Addr{}
	}
	return a
}

// has reports whether mapping n has key k.
func (d *decoder) has(n *yaml.Node, k string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == k {
			return true
		}
	}
	return false
}

// checkNetworks checks what involves several entries: unique network
// names, VLANs and uplinks, subnets that do not overlap, and references
// from NICs and the host port to networks that exist.
func (d *decoder) checkNetworks(doc *yaml.Node, c *Config) {
	byName := map[string]*Network{}
	vlans := map[uint16]string{}
	for i := range c.Networks {
		nw := &c.Networks[i]
		if byName[nw.Name] != nil {
			d.errf(doc, "networks[%d]: duplicate network name %q", i, nw.Name)
		}
		byName[nw.Name] = nw
		if other, ok := vlans[nw.VLAN]; ok && nw.Uplink != "" && byName[other].Uplink == nw.Uplink {
			d.errf(doc, "networks %s and %s: both use vlan %d on uplink %s", other, nw.Name, nw.VLAN, nw.Uplink)
		}
		vlans[nw.VLAN] = nw.Name
		for _, o := range c.Networks[:i] {
			if o.Subnet.IsValid() && nw.Subnet.IsValid() && o.Subnet.Overlaps(nw.Subnet) {
				d.errf(doc, "networks %s and %s: subnets %s and %s overlap", o.Name, nw.Name, o.Subnet, nw.Subnet)
			}
		}
	}
	if h := c.Host; h != nil && h.Network != "" {
		nw := byName[h.Network]
		switch {
		case nw == nil:
			d.errf(doc, "host: network %q is not configured", h.Network)
		case h.Address.IsValid() && !hostIn(nw.Subnet.Masked(), h.Address.Addr()):
			d.errf(doc, "host: address %s is not a host address of network %s (%s)", h.Address, nw.Name, nw.Subnet)
		case !h.DHCP && !h.Address.IsValid() && nw.Gateway.IsValid():
			h.Address = netip.PrefixFrom(nw.Gateway, nw.Subnet.Bits())
		}
	}
	macs := map[string]string{}
	for _, vm := range c.VMs {
		for i, nic := range vm.NICs {
			if nw := byName[nic.Network]; nw != nil {
				vm.NICs[i].MTU = nw.MTU
			} else if nic.Network != "" {
				d.errf(doc, "vm %s nic %d: network %q is not configured", vm.Name, i, nic.Network)
			}
			if owner, ok := macs[nic.MAC.String()]; ok {
				d.errf(doc, "vm %s nic %d: mac %s is also %s's", vm.Name, i, nic.MAC, owner)
			}
			macs[nic.MAC.String()] = fmt.Sprintf("vm %s nic %d", vm.Name, i)
		}
	}
}
