// Package dhcp is the DHCPv4 server the switch runs for each of its
// networks, answering VM ports itself without any kernel IP stack.
//
// The logic is a pure function of the request and the lease table (Handle),
// with a thin Ethernet/IPv4/UDP wrapper (HandleFrame) so the switch can
// intercept a VM's DHCP frame and write the answer straight back to the
// port. Addresses are stable per client: the table survives VM restarts
// trivially and switch restarts through an atomically rewritten lease file.
//
// A client is its hardware address, never its client identifier: the
// switch locks each VM port to one MAC, and HandleFrame answers only
// messages whose chaddr is the frame's source, so a lease is bound to a
// port. RFC 2131 4.2 lets a client identifier take precedence, but here
// that would let one port hold a lease per identifier it invents (draining
// the pool) or name a neighbour's identifier to RELEASE or DECLINE its
// lease and take its address.
package dhcp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultLeaseTime = time.Hour
	// offerHold is how long an address offered to a client that has no
	// lease yet stays reserved for it, long enough for the REQUEST that
	// follows an OFFER and short enough that a client that wanders off does
	// not pin addresses.
	offerHold = time.Minute
	// declineHold is how long an address a client DECLINEd (someone else
	// answers ARP for it) is kept out of the pool.
	declineHold = 10 * time.Minute
	// maxDeclines is how many addresses one client may have quarantined
	// at once: a client declining every offer would otherwise empty the
	// pool for declineHold. Further DECLINEs are ignored.
	maxDeclines = 2
)

// Config describes one network's DHCP service. The zero value of every
// field except Subnet means its documented default.
type Config struct {
	// Subnet is the network's IPv4 prefix, e.g. 10.20.0.0/24.
	Subnet netip.Prefix
	// Router is the appliance's address on the network, handed out as the
	// default gateway and used as the server identifier and the source of
	// reply frames. Default: the first host address (.1 in a /24).
	Router netip.Addr
	// From and To bound the dynamic pool, inclusive. Default: every host
	// address of Subnet after Router.
	From, To netip.Addr
	// DNS servers handed to clients; none when empty.
	DNS []netip.Addr
	// LeaseTime is the lease duration offered. Default DefaultLeaseTime.
	LeaseTime time.Duration
	// ServerMAC is the Ethernet source of reply frames; HandleFrame
	// answers nothing without it.
	ServerMAC net.HardwareAddr
	// LeasePath, when set, is the file the lease table is persisted to
	// (temp file + rename) and reloaded from by New.
	LeasePath string
	// OnLease is called, outside any lock, each time an address is ACKed,
	// so the switch can let a port send from that IP. Renewals included:
	// do not log from it (a guest renewing in a loop floods the console).
	OnLease func(mac net.HardwareAddr, ip netip.Addr)
	// OnNewLease is called, outside any lock and after OnLease, only
	// when a client is ACKed an address it did not hold live (a new
	// lease, another address, or one that had expired): the call to log
	// leases from, and enough to unlock ports, since a renewal changes
	// nothing a port was allowed.
	OnNewLease func(mac net.HardwareAddr, ip netip.Addr)
	// Log receives exhaustion and persistence warnings. Default slog.Default().
	Log *slog.Logger
	// Now is the clock; tests inject one. Default time.Now.
	Now func() time.Time
}

// Lease is one client's binding as shown to the supervisor and the API.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
	Expiry   time.Time
}

// entry is one row of the table. An entry exists from the first OFFER; it
// is bound once ACKed. Unbound entries are never persisted.
type entry struct {
	key      string // the hardware address, as a map key
	mac      net.HardwareAddr
	ip       netip.Addr
	hostname string
	expiry   time.Time
	bound    bool
	saved    time.Time // expiry as last written to the lease file
	// offered reserves the address for an OFFER until then, separately
	// from expiry so an offer never makes a lease look valid to Lookup.
	offered time.Time
}

// busy reports whether e's address is spoken for: a live lease or offer.
func (e *entry) busy(now time.Time) bool {
	return e.expiry.After(now) || e.offered.After(now)
}

// freeAt is when e's address stops being spoken for.
func (e *entry) freeAt() time.Time {
	if e.offered.After(e.expiry) {
		return e.offered
	}
	return e.expiry
}

// Server answers DHCP for one network. It is safe for concurrent use: each
// VM port's goroutine calls HandleFrame directly.
type Server struct {
	cfg      Config
	mask     net.IPMask
	from, to uint32 // pool bounds as integers, inclusive

	// persistMu serialises lease-file writes so the file always ends up
	// with the newest snapshot; it is taken before mu, never after.
	persistMu sync.Mutex

	mu       sync.Mutex
	byMAC    map[string]*entry // every entry, by hardware address
	byIP     map[netip.Addr]*entry
	declined map[netip.Addr]decline
	pool     pool // free addresses and expiring entries, for O(log n) picks
	// exhaustedLog is when pool exhaustion was last logged: a guest
	// looping on DISCOVER must not flood the console.
	exhaustedLog time.Time

	spoofed atomic.Uint64 // messages whose chaddr was not the frame's source
}

// decline is a quarantined address and the client that declined it.
type decline struct {
	until time.Time
	mac   string
}

// New validates cfg, fills in defaults and reloads the lease table from
// cfg.LeasePath if it exists.
func New(cfg Config) (*Server, error) {
	if err := normalise(&cfg); err != nil {
		return nil, fmt.Errorf("dhcp %s: %w", cfg.Subnet, err)
	}
	s := &Server{
		cfg:      cfg,
		mask:     net.CIDRMask(cfg.Subnet.Bits(), 32),
		from:     u32(cfg.From),
		to:       u32(cfg.To),
		byIP:     make(map[netip.Addr]*entry),
		byMAC:    make(map[string]*entry),
		declined: make(map[netip.Addr]decline),
	}
	s.pool.srv, s.pool.next = s, s.from
	if cfg.LeasePath != "" {
		if err := s.load(); err != nil {
			return nil, fmt.Errorf("dhcp %s: %w", cfg.Subnet, err)
		}
	}
	return s, nil
}

func normalise(c *Config) error {
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		return errors.New("subnet must be an IPv4 prefix")
	}
	if c.Subnet.Bits() < 8 || c.Subnet.Bits() > 30 {
		return fmt.Errorf("subnet /%d: want a prefix length between 8 and 30", c.Subnet.Bits())
	}
	c.Subnet = c.Subnet.Masked()
	first := c.Subnet.Addr().Next()
	last := broadcast(c.Subnet).Prev()
	if !c.Router.IsValid() {
		c.Router = first
	}
	if !c.Router.Is4() || !c.Subnet.Contains(c.Router) || c.Router == c.Subnet.Addr() || c.Router == broadcast(c.Subnet) {
		return fmt.Errorf("router %s is not a host address of the subnet", c.Router)
	}
	if !c.From.IsValid() {
		c.From = first
		if c.From == c.Router {
			c.From = c.From.Next()
		}
	}
	if !c.To.IsValid() {
		c.To = last
	}
	for _, a := range []netip.Addr{c.From, c.To} {
		if !a.Is4() || u32(a) < u32(first) || u32(a) > u32(last) {
			return fmt.Errorf("range bound %s is not a host address of the subnet", a)
		}
	}
	if u32(c.From) > u32(c.To) {
		return fmt.Errorf("range %s-%s is empty", c.From, c.To)
	}
	for _, d := range c.DNS {
		if !d.Is4() {
			return fmt.Errorf("dns server %s is not IPv4", d)
		}
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = DefaultLeaseTime
	}
	if c.LeaseTime < time.Minute {
		return fmt.Errorf("lease time %s below one minute", c.LeaseTime)
	}
	if c.LeaseTime/time.Second > 0xfffffffe {
		return fmt.Errorf("lease time %s does not fit DHCP's 32-bit seconds", c.LeaseTime)
	}
	if c.ServerMAC != nil && len(c.ServerMAC) != 6 {
		return fmt.Errorf("server mac %s is not an Ethernet address", c.ServerMAC)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Handle answers one client message, the pure-logic core shared by
// HandleFrame and tests. A nil reply with a nil error means "stay silent"
// (RELEASE, DECLINE, a REQUEST meant for another server, an exhausted
// pool); an error means the message is malformed.
func (s *Server) Handle(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	if req == nil {
		return nil, errors.New("nil request")
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, fmt.Errorf("opcode %s is not a client request", req.OpCode)
	}
	key, mac, err := clientKey(req)
	if err != nil {
		return nil, err
	}
	switch mt := req.MessageType(); mt {
	case dhcpv4.MessageTypeDiscover:
		return s.discover(req, key, mac)
	case dhcpv4.MessageTypeRequest:
		return s.request(req, key, mac)
	case dhcpv4.MessageTypeRelease:
		s.release(req, key)
		return nil, nil
	case dhcpv4.MessageTypeDecline:
		s.decline(req, key)
		return nil, nil
	case dhcpv4.MessageTypeInform:
		return s.inform(req)
	case dhcpv4.MessageTypeNone:
		return nil, errors.New("no message type option")
	default:
		return nil, fmt.Errorf("message type %s is not one a client sends", mt)
	}
}

// clientKey identifies the client by its hardware address (see the
// package comment for why not by its client identifier).
func clientKey(req *dhcpv4.DHCPv4) (key string, mac net.HardwareAddr, err error) {
	mac = req.ClientHWAddr
	if len(mac) != 6 {
		return "", nil, fmt.Errorf("client hardware address %x is not an Ethernet address", []byte(mac))
	}
	return string(mac), mac, nil
}

func (s *Server) discover(req *dhcpv4.DHCPv4, key string, mac net.HardwareAddr) (*dhcpv4.DHCPv4, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	ip, ok := s.pick(key, addrOf(dhcpv4.GetIP(dhcpv4.OptionRequestedIPAddress, req.Options)), now)
	if ok {
		e := s.claim(key, mac, ip, now)
		e.offered = now.Add(offerHold)
		s.pool.schedule(e)
	}
	logIt := !ok && now.Sub(s.exhaustedLog) >= time.Minute
	if logIt {
		s.exhaustedLog = now
	}
	s.mu.Unlock()
	if !ok {
		if logIt {
			s.cfg.Log.Warn("dhcp: address pool exhausted, no offer", "subnet", s.cfg.Subnet, "client", mac)
		}
		return nil, nil
	}
	return s.reply(req, dhcpv4.MessageTypeOffer, ip, true)
}

// request implements RFC 2131 4.3.2 for the three states a REQUEST can come
// from: SELECTING (server identifier set), INIT-REBOOT (requested address
// option, no ciaddr) and RENEWING/REBINDING (ciaddr).
func (s *Server) request(req *dhcpv4.DHCPv4, key string, mac net.HardwareAddr) (*dhcpv4.DHCPv4, error) {
	if sid := req.ServerIdentifier(); sid != nil && addrOf(sid) != s.cfg.Router {
		return nil, nil // the client chose another server
	}
	ip := addrOf(dhcpv4.GetIP(dhcpv4.OptionRequestedIPAddress, req.Options))
	if !ip.IsValid() {
		ip = addrOf(req.ClientIPAddr)
	}
	if !ip.IsValid() || ip.IsUnspecified() {
		return s.reply(req, dhcpv4.MessageTypeNak, netip.Addr{}, false)
	}
	now := s.cfg.Now()
	s.mu.Lock()
	ok := s.grantable(key, ip, now)
	dirty, fresh := false, false
	if ok {
		var oldMAC string
		prev := s.byMAC[key]
		if prev != nil {
			oldMAC = string(prev.mac)
		}
		// A lease the client did not hold live: worth telling the switch.
		fresh = prev == nil || !prev.bound || prev.ip != ip || !prev.expiry.After(now)
		e := s.claim(key, mac, ip, now)
		host := req.HostName()
		if host == "" {
			host = e.hostname
		}
		expiry := now.Add(s.cfg.LeaseTime)
		// A renewal only moves the expiry: write it out when it has moved
		// a quarter lease past the file, so a guest renewing in a loop
		// cannot turn into a stream of fsyncs.
		dirty = !e.bound || host != e.hostname || oldMAC != string(mac) ||
			expiry.Sub(e.saved) > s.cfg.LeaseTime/4
		e.bound, e.hostname, e.expiry, e.offered = true, host, expiry, time.Time{}
		s.pool.schedule(e)
	}
	s.mu.Unlock()
	if !ok {
		return s.reply(req, dhcpv4.MessageTypeNak, netip.Addr{}, false)
	}
	if dirty {
		s.persist()
	}
	if s.cfg.OnLease != nil {
		s.cfg.OnLease(append(net.HardwareAddr(nil), mac...), ip)
	}
	if fresh && s.cfg.OnNewLease != nil {
		s.cfg.OnNewLease(append(net.HardwareAddr(nil), mac...), ip)
	}
	return s.reply(req, dhcpv4.MessageTypeAck, ip, true)
}

// release keeps the client's address mapping (so it gets the same address
// next time) but makes the address reusable, after never-used ones.
func (s *Server) release(req *dhcpv4.DHCPv4, key string) {
	if sid := req.ServerIdentifier(); sid != nil && addrOf(sid) != s.cfg.Router {
		return
	}
	ip := addrOf(req.ClientIPAddr)
	now := s.cfg.Now()
	s.mu.Lock()
	e := s.byMAC[key]
	changed := e != nil && e.ip == ip && e.expiry.After(now)
	if changed {
		e.expiry = now
		s.pool.schedule(e)
	}
	s.mu.Unlock()
	if changed {
		s.persist()
	}
}

// decline quarantines the address (another host is using it) and forgets
// the client's binding to it so its next DISCOVER gets a different one.
func (s *Server) decline(req *dhcpv4.DHCPv4, key string) {
	if sid := req.ServerIdentifier(); sid != nil && addrOf(sid) != s.cfg.Router {
		return
	}
	ip := addrOf(dhcpv4.GetIP(dhcpv4.OptionRequestedIPAddress, req.Options))
	now := s.cfg.Now()
	s.mu.Lock()
	e := s.byMAC[key]
	changed := e != nil && e.ip == ip && s.declinesBy(key, now) < maxDeclines
	if changed {
		s.remove(e)
		until := now.Add(declineHold)
		s.declined[ip] = decline{until: until, mac: key}
		s.pool.quarantine(ip, until, key)
	}
	s.mu.Unlock()
	if changed {
		s.cfg.Log.Warn("dhcp: client declined address", "subnet", s.cfg.Subnet, "ip", ip, "client", req.ClientHWAddr)
		s.persist()
	}
}

// inform answers a client that configured its address itself and wants
// the rest of the parameters (RFC 2131 3.4): no lease, no yiaddr.
func (s *Server) inform(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	return s.reply(req, dhcpv4.MessageTypeAck, netip.Addr{}, false)
}

// reply builds OFFER/ACK/NAK. withLease adds the address and the lease
// parameters; NAK carries only the server identifier.
func (s *Server) reply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, ip netip.Addr, withLease bool) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.Router.AsSlice())),
	}
	if mt == dhcpv4.MessageTypeNak {
		// A NAKed client has no usable address: make it hear the answer.
		mods = append(mods, dhcpv4.WithBroadcast(true), dhcpv4.WithClientIP(net.IPv4zero))
	} else {
		mods = append(mods,
			dhcpv4.WithNetmask(s.mask),
			dhcpv4.WithRouter(s.cfg.Router.AsSlice()),
		)
		if len(s.cfg.DNS) > 0 {
			dns := make([]net.IP, len(s.cfg.DNS))
			for i, d := range s.cfg.DNS {
				dns[i] = d.AsSlice()
			}
			mods = append(mods, dhcpv4.WithDNS(dns...))
		}
	}
	if withLease {
		secs := uint32(s.cfg.LeaseTime / time.Second)
		mods = append(mods,
			dhcpv4.WithYourIP(ip.AsSlice()),
			dhcpv4.WithLeaseTime(secs),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(s.cfg.LeaseTime/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(s.cfg.LeaseTime*7/8)),
		)
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", mt, err)
	}
	return resp, nil
}

// pick chooses the address to offer key: its own entry's address first
// (stability), then the address it asks for if free, then the lowest
// never-used (or freed) address, and only then the address whose lease
// or offer ended longest ago. Each step is a map lookup or a heap
// operation (pool.go): a DISCOVER costs O(log n) however large the pool,
// since it runs under the server's lock that every port's DHCP waits on.
// Called with mu held.
func (s *Server) pick(key string, want netip.Addr, now time.Time) (netip.Addr, bool) {
	if e := s.byMAC[key]; e != nil && !s.isDeclined(e.ip, now) {
		return e.ip, true
	}
	if want.IsValid() && s.inPool(want) && !s.isDeclined(want, now) && s.freeFor(key, want, now) {
		return want, true
	}
	if ip, ok := s.pool.free(now); ok {
		return ip, true
	}
	return s.pool.expired(now)
}

// grantable reports whether key may have ip now. A client that holds a
// different address is NAKed so that it restarts and comes back to its own
// address, which keeps addresses stable. Called with mu held.
func (s *Server) grantable(key string, ip netip.Addr, now time.Time) bool {
	if !s.inPool(ip) || s.isDeclined(ip, now) {
		return false
	}
	if e := s.byMAC[key]; e != nil && e.ip != ip {
		return false
	}
	return s.freeFor(key, ip, now)
}

// freeFor reports whether ip is unused or used by key itself or by an
// expired lease. Called with mu held.
func (s *Server) freeFor(key string, ip netip.Addr, now time.Time) bool {
	e := s.byIP[ip]
	return e == nil || e.key == key || !e.busy(now)
}

// claim makes ip key's address, evicting an expired holder. Called with mu
// held and only after pick or grantable said yes.
func (s *Server) claim(key string, mac net.HardwareAddr, ip netip.Addr, now time.Time) *entry {
	if old := s.byIP[ip]; old != nil && old.key != key {
		s.remove(old)
	}
	e := s.byMAC[key]
	if e == nil {
		e = &entry{key: key, ip: ip, mac: append(net.HardwareAddr(nil), mac...)}
		s.byMAC[key] = e
	}
	if e.ip != ip {
		if s.byIP[e.ip] == e {
			delete(s.byIP, e.ip)
			s.pool.release(e.ip)
		}
		e.ip = ip
	}
	s.byIP[ip] = e
	return e
}

// remove drops e from every index and returns its address to the pool.
// Called with mu held.
func (s *Server) remove(e *entry) {
	if s.byMAC[e.key] == e {
		delete(s.byMAC, e.key)
	}
	if s.byIP[e.ip] == e {
		delete(s.byIP, e.ip)
		s.pool.release(e.ip)
	}
}

func (s *Server) isDeclined(ip netip.Addr, now time.Time) bool {
	d, ok := s.declined[ip]
	return ok && d.until.After(now)
}

// declinesBy counts the live quarantines client key caused. The map is
// bounded by the pool and purged as quarantines end (pool.purge).
// Called with mu held.
func (s *Server) declinesBy(key string, now time.Time) int {
	s.pool.purge(now)
	return s.pool.declinedBy[key]
}

func (s *Server) inPool(ip netip.Addr) bool {
	if !ip.Is4() || ip == s.cfg.Router {
		return false
	}
	v := u32(ip)
	return v >= s.from && v <= s.to
}

// Leases returns the bound leases (expired ones included, until their
// address is reused), sorted by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.byIP))
	for _, e := range s.sortedEntries() {
		if !e.bound {
			continue
		}
		out = append(out, Lease{
			MAC:      append(net.HardwareAddr(nil), e.mac...),
			IP:       e.ip,
			Hostname: e.hostname,
			Expiry:   e.expiry,
		})
	}
	return out
}

// Spoofed counts the messages HandleFrame dropped because their client
// hardware address was not the frame's source.
func (s *Server) Spoofed() uint64 { return s.spoofed.Load() }

// Lookup returns the address currently leased (bound and unexpired) to the
// client with this hardware address. It does not allocate.
func (s *Server) Lookup(mac net.HardwareAddr) (netip.Addr, bool) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byMAC[string(mac)]
	if e == nil || !e.bound || !e.expiry.After(now) || string(e.mac) != string(mac) {
		return netip.Addr{}, false
	}
	return e.ip, true
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrFrom(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func broadcast(p netip.Prefix) netip.Addr {
	return addrFrom(u32(p.Addr()) | (1<<(32-p.Bits()) - 1))
}
