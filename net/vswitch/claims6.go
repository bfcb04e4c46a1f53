package vswitch

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// v6Claim is one IPv6 address a locked port uses. Only the port's own
// transmit goroutine writes addr, and only under its network's v6.mu;
// other ports read it under that mutex, the owner without it. owned is
// cleared by another port taking over a stale claim.
type v6Claim struct {
	addr  [16]byte
	last  atomic.Int64 // switch time of the last use
	owned atomic.Bool
}

// v6Owners is a network's table of claimed IPv6 addresses.
type v6Owners struct {
	mu sync.Mutex
	m  map[[16]byte]v6Owner
}

type v6Owner struct {
	p     *VirtioPort
	fixed bool // the port's EUI-64 link-local address, never given up
}

// eui64 is the link-local address SLAAC derives from a MAC key.
func eui64(mac uint64) [16]byte {
	return [16]byte{0: 0xfe, 1: 0x80,
		8: byte(mac>>40) ^ 2, 9: byte(mac >> 32), 10: byte(mac >> 24), 11: 0xff, 12: 0xfe,
		13: byte(mac >> 16), 14: byte(mac >> 8), 15: byte(mac)}
}

// registerLL reserves p's EUI-64 link-local address in its network, so
// no other port can claim it.
func (o *v6Owners) registerLL(p *VirtioPort) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[[16]byte]v6Owner{}
	}
	o.m[p.ll6] = v6Owner{p: p, fixed: true}
}

// forget drops every claim of p (a removed port).
func (o *v6Owners) forget(p *VirtioPort) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for a, w := range o.m {
		if w.p == p {
			delete(o.m, a)
		}
	}
}

// mayUse6 reports whether the port may use addr as its own, claiming it
// if it is free (and telling Options.Claimed6 if report is set). The
// common case, an address the port already holds, is a scan of its claims
// without a lock.
func (v *VirtioPort) mayUse6(addr [16]byte, now int64, report bool) bool {
	if addr == v.ll6 {
		return true
	}
	for i := range v.v6 {
		c := &v.v6[i]
		if c.owned.Load() && c.addr == addr {
			if now-c.last.Load() > int64(1e9) { // a store per second is enough for aging
				c.last.Store(now)
			}
			return true
		}
	}
	return v.claim6(addr, now, report)
}

// holds reports whether v holds a live claim on addr. Called with the
// network's v6.mu held.
func (v *VirtioPort) holds(addr [16]byte, now int64) (*v6Claim, bool) {
	for i := range v.v6 {
		c := &v.v6[i]
		if c.owned.Load() && c.addr == addr {
			return c, !v.removed.Load() && now-c.last.Load() <= int64(v6ClaimAge)
		}
	}
	return nil, false
}

// claim6 takes addr for the port if no other port of the network holds
// it and the port has a free (or stale) slot; report says whether to tell
// Options.Claimed6.
func (v *VirtioPort) claim6(addr [16]byte, now int64, report bool) bool {
	o := &v.native.v6
	o.mu.Lock()
	defer o.mu.Unlock()
	if w, ok := o.m[addr]; ok && w.p != v {
		if w.fixed && !w.p.removed.Load() {
			return false
		}
		c, live := w.p.holds(addr, now)
		if live {
			return false
		}
		if c != nil {
			c.owned.Store(false)
		}
	}
	var slot *v6Claim
	for i := range v.v6 {
		c := &v.v6[i]
		if !c.owned.Load() {
			slot = c
			break
		}
		if now-c.last.Load() > int64(v6ClaimAge) && (slot == nil || c.last.Load() < slot.last.Load()) {
			slot = c
		}
	}
	if slot == nil {
		return false
	}
	if slot.owned.Load() {
		if w := o.m[slot.addr]; w.p == v {
			delete(o.m, slot.addr)
		}
		slot.owned.Store(false)
	}
	slot.addr = addr
	slot.last.Store(now)
	slot.owned.Store(true)
	if o.m == nil {
		o.m = map[[16]byte]v6Owner{}
	}
	o.m[addr] = v6Owner{p: v}
	if f := v.sw.claimed6; f != nil && report {
		f(v, netip.AddrFrom16(addr))
	}
	return true
}

// Claim6 claims addr for the port as if it had just sent from it: what a
// switch restarted by its supervisor does with the claims its previous run
// reported (Options.Claimed6), so that a neighbour cannot take a guest's
// address in the window before the guest sends again. It returns false
// when the address is not a unicast IPv6 address, or another port holds
// it, or the port has no free claim. A restored claim is not reported to
// Options.Claimed6: the caller has it already.
func (v *VirtioPort) Claim6(addr netip.Addr) bool {
	if !addr.Is6() || addr.Is4In6() || addr.IsMulticast() || addr.IsUnspecified() {
		return false
	}
	return v.mayUse6(addr.As16(), int64(v.sw.clock()), false)
}
