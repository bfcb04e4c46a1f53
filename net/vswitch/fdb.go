package vswitch

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// fdbProbe is how many consecutive slots a MAC address may occupy from its
// hash position. Bounding it keeps a lookup to a few cache lines; a table
// so crowded that a window is full evicts the oldest learned entry in it.
const fdbProbe = 8

// staticSeen marks an entry that never ages (a VM NIC's configured MAC).
const staticSeen = -1 << 63

// refreshEvery is how stale an entry's timestamp may get before a frame
// from it rewrites it: rewriting on every frame would make every sender
// write to a shared cache line.
const refreshEvery = int64(1e9)

// fdb is one network's forwarding database: MAC address to port, with
// aging. It is a fixed-size open-addressing table that never grows, so the
// data path neither allocates nor rehashes. Lookups are lock-free (every
// port's goroutine forwards concurrently); writers (a new address, a moved
// one, a removed port) take mu and publish a slot like a seqlock: the key
// is cleared, the port and time stored, then the key set. A reader accepts
// a slot only if the key it read before the port is still there after, so
// it never pairs one address with another's port.
type fdb struct {
	mu    sync.Mutex
	slots []fdbSlot
	shift uint // 64 - log2(len(slots))
}

type fdbSlot struct {
	key  atomic.Uint64 // MAC | keyValid, or 0 when empty
	port atomic.Pointer[Port]
	seen atomic.Int64 // clock (ns) of the last frame from the address, or staticSeen
}

const keyValid = 1 << 48

// newFDB returns a table with at least n slots (rounded up to a power of
// two, at least fdbProbe).
func newFDB(n int) *fdb {
	size := fdbProbe
	for size < n {
		size <<= 1
	}
	return &fdb{slots: make([]fdbSlot, size), shift: uint(64 - bits.TrailingZeros(uint(size)))}
}

func (t *fdb) home(mac uint64) uint64 {
	// Fibonacci hashing: MAC addresses share their high (vendor) bytes,
	// the multiplication spreads the low ones over the index bits.
	return (mac * 0x9E3779B97F4A7C15) >> t.shift
}

func (t *fdb) slot(h uint64, i int) *fdbSlot {
	return &t.slots[(h+uint64(i))&uint64(len(t.slots)-1)]
}

// live reports whether an entry seen at seen still counts at now.
func live(seen, now, age int64) bool {
	return seen == staticSeen || now-seen <= age
}

// lookup returns the port that mac was last seen on, or nil when it is
// unknown, aged out, or its port is gone.
func (t *fdb) lookup(mac uint64, now, age int64) *Port {
	key := mac | keyValid
	h := t.home(mac)
	for i := 0; i < fdbProbe; i++ {
		s := t.slot(h, i)
		if s.key.Load() != key {
			continue
		}
		p := s.port.Load()
		seen := s.seen.Load()
		if s.key.Load() != key || p == nil || p.removed.Load() || !live(seen, now, age) {
			return nil
		}
		return p
	}
	return nil
}

// learn records that a frame from mac arrived on p. The common case (a
// known address on the same port, refreshed recently) only reads.
func (t *fdb) learn(mac uint64, p *Port, now, age int64) {
	key := mac | keyValid
	h := t.home(mac)
	for i := 0; i < fdbProbe; i++ {
		s := t.slot(h, i)
		if s.key.Load() != key {
			continue
		}
		seen := s.seen.Load()
		if s.port.Load() == p && (seen == staticSeen || now-seen < refreshEvery) {
			return
		}
		break
	}
	t.store(key, p, now, false)
}

// addStatic installs an entry that never ages and that learning does not
// move.
func (t *fdb) addStatic(mac uint64, p *Port) {
	t.store(mac|keyValid, p, 0, true)
}

func (t *fdb) store(key uint64, p *Port, now int64, static bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.home(key &^ keyValid)
	var victim *fdbSlot
	victimSeen := int64(1<<63 - 1)
	for i := 0; i < fdbProbe; i++ {
		s := t.slot(h, i)
		k := s.key.Load()
		if k == key {
			if s.seen.Load() == staticSeen && !static {
				return // a configured address does not move
			}
			s.port.Store(p)
			if static {
				s.seen.Store(staticSeen)
			} else {
				s.seen.Store(now)
			}
			return
		}
		seen := s.seen.Load()
		switch {
		case k == 0:
			seen = -1 << 62 // prefer an empty slot over any entry
		case seen == staticSeen:
			continue
		case s.port.Load() == nil || s.port.Load().removed.Load():
			seen = -1<<62 + 1
		}
		if victim == nil || seen < victimSeen {
			victim, victimSeen = s, seen
		}
	}
	if victim == nil {
		return // the whole window holds static entries: leave the frames to flooding
	}
	victim.key.Store(0)
	victim.port.Store(p)
	if static {
		victim.seen.Store(staticSeen)
	} else {
		victim.seen.Store(now)
	}
	victim.key.Store(key)
}

// forget removes every entry pointing at p (the port is going away).
func (t *fdb) forget(p *Port) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.slots {
		s := &t.slots[i]
		if s.key.Load() != 0 && s.port.Load() == p {
			s.key.Store(0)
			s.port.Store(nil)
		}
	}
}

// count is the number of live entries (for tests and status pages; it
// walks the whole table).
func (t *fdb) count(now, age int64) int {
	n := 0
	for i := range t.slots {
		s := &t.slots[i]
		if s.key.Load() == 0 {
			continue
		}
		if p := s.port.Load(); p != nil && !p.removed.Load() && live(s.seen.Load(), now, age) {
			n++
		}
	}
	return n
}
