package dhcp

import (
	"container/heap"
	"net/netip"
	"time"
)

// pool finds addresses to offer in O(log n): the server's lock is held
// while it does, and every port's DHCP waits on that lock, so a linear
// scan of a /16 on each DISCOVER would stall them all.
//
//   - Never-used addresses are handed out by a cursor moving up the range;
//     addresses freed below it (a declined, moved or evicted lease, an
//     ended quarantine) go to a min-heap, so the lowest free address is
//     still offered first, as a scan from the bottom would.
//   - Entries are kept in a min-heap by the time their lease or offer ends
//     (freeAt), lazily: a record whose entry changed since is skipped when
//     it comes to the top. Once no address is free, the top is the lease
//     that ended longest ago.
//   - Quarantined (declined) addresses wait in a FIFO, which is in expiry
//     order since every quarantine lasts declineHold.
//
// Every field is guarded by the server's mu.
type pool struct {
	srv  *Server
	next uint32 // the cursor: addresses from next to srv.to were never handed out
	done bool   // the cursor went past srv.to
	// holes are freed addresses below the cursor (duplicates and stale
	// ones are skipped when popped).
	holes u32Heap
	aged  agedHeap
	// quarantine lists declined addresses in the order they come back.
	quarantined []quarantined
	qHead       int
	declinedBy  map[string]int // live quarantines per client
}

type quarantined struct {
	ip    netip.Addr
	until time.Time
	mac   string
}

// usable reports whether ip may be offered to a client without an entry.
func (s *Server) usable(ip netip.Addr, now time.Time) bool {
	return s.inPool(ip) && s.byIP[ip] == nil && !s.isDeclined(ip, now)
}

// free returns the lowest never-used or freed address, taking it out of
// the pool (the caller claims it).
func (p *pool) free(now time.Time) (netip.Addr, bool) {
	s := p.srv
	p.purge(now)
	for p.holes.Len() > 0 {
		ip := addrFrom(heap.Pop(&p.holes).(uint32))
		if s.usable(ip, now) {
			return ip, true
		}
	}
	for !p.done {
		v := p.next
		if v == s.to {
			p.done = true
		} else {
			p.next++
		}
		// Addresses the cursor skips (taken, declined) come back
		// through release or purge when they are freed.
		if ip := addrFrom(v); s.usable(ip, now) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// release returns ip, no longer anyone's, to the pool.
func (p *pool) release(ip netip.Addr) {
	if !p.srv.inPool(ip) {
		return
	}
	if v := u32(ip); p.done || v < p.next {
		heap.Push(&p.holes, v)
	}
	// Duplicates pile up only as fast as leases are removed; keep the
	// heap within twice the pool.
	if size := int(p.srv.to - p.srv.from + 1); p.holes.Len() > 2*size+64 {
		seen := make(map[uint32]bool, p.holes.Len())
		h := p.holes[:0]
		for _, v := range p.holes {
			if !seen[v] {
				seen[v] = true
				h = append(h, v)
			}
		}
		p.holes = h
		heap.Init(&p.holes)
	}
}

// schedule records when e's address stops being spoken for; call it after
// every change of e's expiry, offer or address.
func (p *pool) schedule(e *entry) {
	heap.Push(&p.aged, agedRec{at: e.freeAt(), ip: e.ip, e: e})
	// Stale records pile up with renewals; rebuild from the live entries
	// when they outnumber them.
	if n := len(p.srv.byIP); p.aged.Len() > 2*n+64 {
		p.aged = p.aged[:0]
		for ip, e := range p.srv.byIP {
			p.aged = append(p.aged, agedRec{at: e.freeAt(), ip: ip, e: e})
		}
		heap.Init(&p.aged)
	}
}

// expired returns the address of the entry whose lease or offer ended
// longest ago, if one has ended.
func (p *pool) expired(now time.Time) (netip.Addr, bool) {
	s := p.srv
	for p.aged.Len() > 0 {
		r := p.aged[0]
		if e := s.byIP[r.ip]; e != r.e || !e.freeAt().Equal(r.at) || !s.inPool(r.ip) || s.isDeclined(r.ip, now) {
			heap.Pop(&p.aged) // stale
			continue
		}
		if r.at.After(now) {
			break
		}
		return r.ip, true
	}
	return netip.Addr{}, false
}

// quarantine keeps ip out of the pool until until, charged to client mac.
func (p *pool) quarantine(ip netip.Addr, until time.Time, mac string) {
	p.quarantined = append(p.quarantined, quarantined{ip: ip, until: until, mac: mac})
	if p.declinedBy == nil {
		p.declinedBy = map[string]int{}
	}
	p.declinedBy[mac]++
}

// purge ends the quarantines that are over.
func (p *pool) purge(now time.Time) {
	s := p.srv
	for p.qHead < len(p.quarantined) && !p.quarantined[p.qHead].until.After(now) {
		q := p.quarantined[p.qHead]
		p.quarantined[p.qHead] = quarantined{}
		p.qHead++
		if p.declinedBy[q.mac]--; p.declinedBy[q.mac] <= 0 {
			delete(p.declinedBy, q.mac)
		}
		if d, ok := s.declined[q.ip]; ok && d.until.Equal(q.until) {
			delete(s.declined, q.ip)
			if s.byIP[q.ip] == nil {
				p.release(q.ip)
			}
		}
	}
	if p.qHead > 64 && p.qHead*2 > len(p.quarantined) {
		p.quarantined = append(p.quarantined[:0], p.quarantined[p.qHead:]...)
		p.qHead = 0
	}
}

type u32Heap []uint32

func (h u32Heap) Len() int           { return len(h) }
func (h u32Heap) Less(i, j int) bool { return h[i] < h[j] }
func (h u32Heap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *u32Heap) Push(x any)        { *h = append(*h, x.(uint32)) }
func (h *u32Heap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// agedRec is a record of when an entry's address becomes free; it is
// stale once the entry has changed (see pool.expired).
type agedRec struct {
	at time.Time
	ip netip.Addr
	e  *entry
}

type agedHeap []agedRec

func (h agedHeap) Len() int { return len(h) }
func (h agedHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].ip.Less(h[j].ip)
}
func (h agedHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *agedHeap) Push(x any)   { *h = append(*h, x.(agedRec)) }
func (h *agedHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	old[len(old)-1] = agedRec{}
	*h = old[:len(old)-1]
	return v
}
