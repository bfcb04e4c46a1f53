package vswitch

import (
	"encoding/binary"
	"net/netip"
)

// maxTouched is how many receiving virtio ports a sender remembers to
// interrupt at the end of its batch before it interrupts them early.
const maxTouched = 32

// maxPending bounds the deliveries a batching sender defers: a batch of
// unicast frames fits, a flood to many ports is delivered in parts.
const maxPending = 2 * txBatch

// frameRef is a frame in its sender's buffers: segs hold the virtio-net
// header and the Ethernet frame, split anywhere (descriptor boundaries).
//
// head is the switch's own copy of the frame's first bytes, the ones
// ingress parsed and checked (addresses, EtherType, IP and ARP headers):
// every reader takes those bytes from head and only the rest from segs
// (gather, writer.copyFrame, checksum). segs are the sender's memory, which
// a guest may rewrite at any time, from another vCPU, between the check
// and the copy to the receivers at the end of the batch; a rewritten
// source address must not reach them (TestTxRewriteAfterCheck).
type frameRef struct {
	segs   [][]byte
	head   []byte // bytes [0, len(head)) of the frame, as checked; nil: all in segs
	size   int    // bytes in segs
	hdr    netHdr
	tagLen int   // 4 when the frame arrived with an 802.1Q tag, which is not forwarded
	from   *Port // the sending port, nil for Inject
	// stable says segs stay valid until the sender's flush (a transmit
	// chain not yet returned), so delivery may be deferred until then.
	stable bool
}

// ethLen is the length of the Ethernet frame without the ingress tag.
func (f *frameRef) ethLen() int { return f.size - HeaderLen - f.tagLen }

// gather copies the frame's bytes from offset off into dst, the checked
// head first, and returns how many it copied (fewer than len(dst) at the
// end).
func (f *frameRef) gather(dst []byte, off int) int {
	n := 0
	if off < len(f.head) {
		n = copy(dst, f.head[off:])
		if n == len(dst) {
			return n
		}
	}
	return n + gather(dst[n:], f.segs, off+n)
}

// checksum is checksumSegs of bytes [from, to) of the frame, the checked
// head included.
func (f *frameRef) checksum(from, to int) uint16 {
	h := min(max(len(f.head), from), to)
	sum := csumPartial(f.head, from, h, from) + csumPartial1(f.segs, h, to, from)
	return csumStore(sum)
}

// sender is the per-goroutine state of forwarding: every port's goroutine
// (a virtio port's transmit worker, a frame port's reader) owns one, so
// the data path shares nothing but the receivers' queues and allocates
// nothing after the first frames.
//
// A batching sender (a transmit worker) defers deliveries to virtio ports
// until flush: frames are grouped by receiver, each receiver's mutex is
// taken once per batch, its used index published once and its interrupt
// decided once, and every counter gets one atomic add per batch. Frames to
// one receiver keep their order; frames to different receivers may be
// delivered in another order, as on any switch with per-port queues.
type sender struct {
	sw         *Switch
	fi         frameInfo
	oneSeg     [1][]byte
	injectSegs [2][]byte
	zeroHdr    [HeaderLen]byte
	segSegs    [1][]byte
	outv       [1][]byte
	big        []byte // a contiguous copy of a frame (Local, capture, segmentation); lazily allocated
	seg        []byte // one software segment being delivered
	out        []byte // a frame port's egress buffer

	batch   bool                     // defer deliveries to virtio ports until flush
	frames  [txBatch]frameRef        // the frames of this batch
	heads   [txBatch][prefixLen]byte // their checked heads (frameRef.head)
	nf      int                      // frames in use
	pend    [maxPending]emit         // deferred deliveries, in arrival order
	scratch emit                     // an immediate delivery
	np      int                      // deliveries pending
	touched [maxTouched]rxTarget     // receivers of this batch
	nt      int

	// The last frame's forwarding decision, kept for the rest of the
	// batch: a stream's frames share network, source and destination,
	// and the FDB's hashing and probing cost ~5 ns a frame (a tenth of
	// a small frame's forwarding). Forgotten at flush, so a move, a new
	// entry or an aged one shows from the next batch at the latest, as
	// on a switch whose lookups run ahead of its learning; a port
	// removed meanwhile is never delivered to (checked at each use).
	fwdNet         *Network
	fwdFrom, fwdTo *Port // fwdTo nil: look the destination up
	fwdSrc, fwdDst uint64

	// Transmit counters of the batch, added to txPort's at flush.
	txPort             *Port
	txPackets, txBytes uint64
}

// rxTarget is a virtio port a sender delivered or will deliver to in this
// batch: its pending deliveries are in sender.pend, and what reached it is
// added to its counters at flush.
type rxTarget struct {
	v              *VirtioPort
	queued         int // deliveries in pend for v
	packets, bytes uint64
}

func newSender(sw *Switch) *sender { return &sender{sw: sw} }

func (s *sender) bigBuf() []byte {
	if s.big == nil {
		s.big = make([]byte, maxFrame)
	}
	return s.big
}

// raw returns f's Ethernet frame as it arrived (tag included) in one
// contiguous buffer.
func (s *sender) raw(f *frameRef) []byte {
	b := s.bigBuf()
	return b[:f.gather(b[:f.size-HeaderLen], HeaderLen)]
}

// ingress handles one frame that port p sent: parse, police, learn, and
// forward it. When hold is set (a VM's transmit queue) a frame the port's
// rate limit refuses is left alone and ingress returns false, for the
// caller to retry it later; otherwise such a frame is dropped.
func (s *sender) ingress(p *Port, segs [][]byte, size int, now int64, hold bool) bool {
	fi := &s.fi
	if s.nf == len(s.frames) {
		s.flush() // no frame is in flight between ingresses
	}
	head := s.heads[s.nf][:min(size, prefixLen)]
	head = head[:gather(head, segs, 0)]
	if err := parseFrame(head, size, fi); err != nil {
		p.drop(DropMalformed)
		return true
	}
	nw := p.network(fi.tagged, fi.vid)
	if nw == nil {
		p.drop(DropMalformed)
		return true
	}
	if p.v != nil {
		if r, ok := p.v.police(fi, now); !ok {
			p.drop(r)
			return true
		}
	}
	if l := p.txLimit.Load(); l != nil {
		debt := p.segDebt.Load()
		if !l.Consume(1+debt, uint64(fi.length)*8) {
			if hold {
				return false
			}
			p.drop(DropRateLimit)
			return true
		}
		if debt > 0 {
			p.segDebt.Add(-debt)
		}
	}
	if s.txPort != p {
		s.flushTx()
		s.txPort = p
	}
	s.txPackets++
	s.txBytes += uint64(fi.length)

	f := &s.frames[s.nf]
	f.segs, f.head, f.size, f.from, f.stable, f.tagLen = segs, head, size, p, s.batch, 0
	// Decoded again rather than copied from fi.hdr: parseFrame wrote that
	// field by field, and the copy's 8-byte load of it would wait for
	// those narrow stores to retire (no store forwarding).
	f.hdr.decode(head)
	if s.batch {
		s.nf++
	}
	if fi.tagged {
		f.tagLen = vlanTagLen
	}
	if w := p.capture.Load(); w != nil {
		(*w)(s.raw(f))
	}
	dst, src := fi.dst, fi.src
	if nw != s.fwdNet || src != s.fwdSrc || p != s.fwdFrom {
		nw.fdb.learn(src, p, now, s.sw.age)
		s.fwdNet, s.fwdSrc, s.fwdFrom, s.fwdTo = nw, src, p, nil
	}
	if s.sw.local != nil && (isGroup(dst) || fi.udp && fi.dport == portDHCPServer) {
		if s.sw.local(p, s.raw(f)) {
			return true
		}
	}
	if !isGroup(dst) {
		d := s.fwdTo
		if d == nil || dst != s.fwdDst || d.removed.Load() {
			d = nw.fdb.lookup(dst, now, s.sw.age)
			s.fwdDst, s.fwdTo = dst, d
		}
		if d != nil {
			if d != p { // no hairpin: a port never gets its own frame back
				s.deliver(d, f, nw, true)
			}
			return true
		}
	}
	for _, d := range *nw.ports.Load() {
		if d != p {
			s.deliver(d, f, nw, true)
		}
	}
	return true
}

// police applies a VM NIC's port security to a parsed frame.
//
// Every VM port: the source MAC is the NIC's, no stacked VLAN tags (an
// access port carries untagged or priority-tagged frames only; a tag with
// a VLAN id already found no network), no DHCPv4 server messages.
//
// A locked port (its network's addresses come from the switch's DHCP
// server) carries IPv4, ARP and IPv6 only, each checked; any other
// EtherType (including 802.3 length fields: LLC, STP) is dropped as
// bad_ethertype:
//   - IPv4: the source is a leased address (0.0.0.0 only for DHCP), and a
//     DHCP client message names the NIC's MAC as chaddr;
//   - ARP: IPv4 over 6-byte addresses of any hardware type (as Linux takes
//     it), the sender hardware address is the NIC's MAC and the sender
//     protocol address a leased one (0.0.0.0 for probes);
//   - IPv6: see police6.
func (v *VirtioPort) police(fi *frameInfo, now int64) (DropReason, bool) {
	if fi.src != v.mac {
		return DropSpoofedMAC, false
	}
	if fi.stacked {
		return DropEtherType, false
	}
	if fi.udp && fi.sport == portDHCPServer {
		return DropRogueDHCP, false
	}
	if !v.lockIP {
		return 0, true
	}
	switch fi.etherType {
	case etherTypeIPv4:
		if fi.hasChaddr && fi.chaddr != v.mac {
			return DropSpoofedMAC, false
		}
	case etherTypeARP:
		if !fi.arp {
			return DropMalformed, false
		}
		if fi.sha != v.mac {
			return DropSpoofedMAC, false
		}
	case etherTypeIPv6:
		return v.police6(fi, now)
	default:
		return DropEtherType, false
	}
	if !v.allowed(fi) {
		return DropSpoofedIP, false
	}
	return 0, true
}

// police6 checks an IPv6 packet from a locked port. There is no DHCPv6
// server and the switch sends no router advertisements, so which addresses
// a VM uses is its own choice (SLAAC from a router on the uplink, stable
// privacy or random link-local addresses, static ones); the switch binds
// them first come, first served (as SAVI-FCFS, RFC 6620): the port's
// EUI-64 link-local address always, and up to maxV6Claims others, each
// held by one port of the network until it has not used it for
// v6ClaimAge. The unspecified address is only a source for duplicate
// address detection (NS), router solicitations and MLD reports. Router advertisements and
// redirects are dropped (rogue_ra), DHCPv6 server messages too
// (rogue_dhcp), a neighbour advertisement's target must be an address
// the port may use and a link-layer address option in RS, NS or NA must
// be the NIC's MAC. A packet whose upper-layer header lies beyond the
// extension headers the switch looks through is dropped as malformed.
func (v *VirtioPort) police6(fi *frameInfo, now int64) (DropReason, bool) {
	if !fi.upper6 {
		return DropMalformed, false
	}
	if fi.icmp6 {
		switch fi.icmpType {
		case icmp6RouterAdvert, icmp6Redirect:
			return DropRogueRA, false
		}
		if fi.hasLL && fi.ndLL != v.mac {
			return DropSpoofedMAC, false
		}
	}
	if fi.udp6 && fi.sport == portDHCPv6Server {
		return DropRogueDHCP, false
	}
	if fi.src6 == ([16]byte{}) {
		if fi.icmp6 && (fi.icmpType == icmp6NeighSolicit || fi.icmpType == icmp6RouterSolicit ||
			fi.icmpType == icmp6MLDReport || fi.icmpType == icmp6MLDv2Report) {
			return 0, true
		}
		return DropSpoofedIP, false
	}
	if fi.src6[0] == 0xff || !v.mayUse6(fi.src6, now, true) {
		return DropSpoofedIP, false
	}
	if fi.icmp6 && fi.icmpType == icmp6NeighAdvert && fi.hasTarget && !v.mayUse6(fi.target6, now, true) {
		return DropSpoofedIP, false
	}
	return 0, true
}

// allowed reports whether a locked port may use the frame's IPv4 source.
// 0.0.0.0 is allowed for what a DHCP client sends before it has an
// address: DISCOVER/REQUEST (UDP 68 to 67) and ARP probes (RFC 5227).
func (v *VirtioPort) allowed(fi *frameInfo) bool {
	if fi.src4 == [4]byte{} {
		return fi.arp || fi.udp && fi.sport == portDHCPClient && fi.dport == portDHCPServer
	}
	for _, a := range *v.ips.Load() {
		if a == fi.src4 {
			return true
		}
	}
	return false
}

// emit is one frame prepared for one receiver: the header it gets and how
// its bytes are laid out.
type emit struct {
	f      *frameRef
	hdr    netHdr
	total  int  // bytes written: header + frame (+ tag)
	tagged bool // insert an 802.1Q tag with vid
	vid    uint16
	sumAt  int // offset of a checksum completed in software, or -1
	sum    uint16
	to     int // index of the receiver in sender.touched, for deferred deliveries
}

// writeFlat writes the frame into dst, one buffer of at least e.total
// bytes: the common case of a receive buffer that holds the whole frame.
func (e *emit) writeFlat(dst []byte) {
	dst = dst[:e.total]
	e.hdr.encode(dst)
	f := e.f
	if !e.tagged && f.tagLen == 0 {
		f.gather(dst[HeaderLen:], HeaderLen)
	} else {
		n := HeaderLen + f.gather(dst[HeaderLen:HeaderLen+12], HeaderLen)
		if e.tagged {
			binary.BigEndian.PutUint16(dst[n:], etherTypeVLAN)
			binary.BigEndian.PutUint16(dst[n+2:], e.vid)
			n += vlanTagLen
		}
		f.gather(dst[n:], HeaderLen+12+f.tagLen)
	}
	if e.sumAt >= 0 && e.sumAt+2 <= len(dst) {
		binary.BigEndian.PutUint16(dst[e.sumAt:], e.sum)
	}
}

// writeTo copies the frame into w: header, addresses, optional tag, rest.
// The sender's bytes are read once, straight into the receiver's buffers.
func (e *emit) writeTo(w *writer) {
	var h [HeaderLen]byte
	e.hdr.encode(h[:])
	w.put(h[:])
	w.copyFrame(e.f, HeaderLen, HeaderLen+12)
	if e.tagged {
		var t [vlanTagLen]byte
		binary.BigEndian.PutUint16(t[0:], etherTypeVLAN)
		binary.BigEndian.PutUint16(t[2:], e.vid)
		w.put(t[:])
	}
	w.copyFrame(e.f, HeaderLen+12+e.f.tagLen, e.f.size)
	if e.sumAt >= 0 {
		w.patch(e.sumAt, e.sum)
	}
}

// deliver copies f to port d, which it is forwarded to in network nw (nil
// for Inject: the frame goes as it is). It completes in software what the
// receiver cannot take as offload metadata, and reports whether the frame
// was delivered.
func (s *sender) deliver(d *Port, f *frameRef, nw *Network, limit bool) bool {
	if l := d.rxLimit.Load(); limit && l != nil && !l.Consume(1, uint64(f.ethLen())*8) {
		d.drop(DropRateLimit)
		return false
	}
	var caps offloads
	switch {
	case d.v != nil:
		caps = offloadsOf(d.v.acked.Load())
	case d.f.offload:
		caps = kernelOffloads()
	}
	if !caps.takesGSO(f.hdr.gsoType) {
		return s.segment(d, f, nw)
	}
	return s.deliverOne(d, f, nw, caps)
}

// deliverOne delivers a frame whose GSO request the receiver accepts.
func (s *sender) deliverOne(d *Port, f *frameRef, nw *Network, caps offloads) bool {
	// A delivery to a virtio port is deferred to the end of the batch
	// when the frame's buffers stay valid until then; the emit is built
	// in place.
	e, t := &s.scratch, 0
	deferred := d.v != nil && f.stable
	if d.v != nil {
		t = s.touch(d.v)
		if deferred {
			e = &s.pend[s.np]
		} else if s.np > 0 {
			s.flushRX() // keep this receiver's frames in order
			t = s.touch(d.v)
		}
	}
	// Field by field, not `*e = emit{...}`: the compiler builds a
	// composite literal with a pointer in it on the stack and copies it in
	// 16-byte moves, each of which reads back two 8-byte stores the CPU
	// cannot forward (a stall of several ns a frame in BenchmarkForward).
	e.f, e.hdr, e.total, e.tagged, e.vid, e.sumAt, e.sum, e.to = f, f.hdr, 0, false, 0, -1, 0, t
	tagOut := 0
	if d.trunk && nw != nil && nw.vlan != 0 {
		e.tagged, e.vid, tagOut = true, nw.vlan, vlanTagLen
	}
	delta := tagOut - f.tagLen
	e.total = HeaderLen + f.ethLen() + tagOut
	e.hdr.numBuffers = 1
	if !caps.csum {
		e.hdr.flags &^= hdrDataValid
	}
	if f.hdr.flags&hdrNeedsCsum != 0 {
		if caps.csum {
			e.hdr.csumStart = uint16(int(f.hdr.csumStart) + delta)
		} else {
			// parseFrame checked csum_start >= the L3 offset, past any
			// tag, and the field inside the frame.
			start := HeaderLen + int(f.hdr.csumStart)
			e.sum = f.checksum(start, f.size)
			e.sumAt = start + delta + int(f.hdr.csumOffset)
			e.hdr.flags &^= hdrNeedsCsum
			e.hdr.csumStart, e.hdr.csumOffset = 0, 0
		}
	}
	if f.hdr.gsoType != gsoNone && f.hdr.hdrLen != 0 {
		e.hdr.hdrLen = uint16(max(int(f.hdr.hdrLen)+delta, 0))
	}
	if d.v == nil {
		if !d.f.send(s, e) {
			return false
		}
		d.c.rxPackets.Add(1)
		d.c.rxBytes.Add(uint64(e.total - HeaderLen))
		if w := d.capture.Load(); w != nil {
			(*w)(s.raw(f))
		}
		return true
	}
	if deferred {
		// Delivered at flush; reported as delivered now (the caller
		// only uses the result for Inject, which never defers).
		s.np++
		s.touched[t].queued++
		if s.np == len(s.pend) {
			s.flushRX()
		}
		return true
	}
	rx := &d.v.rx
	d.busy.enter()
	rx.mu.Lock()
	res := d.v.receiveLocked(e)
	if rx.q != nil {
		rx.q.PublishUsed()
	}
	rx.mu.Unlock()
	d.busy.exit()
	s.received(t, e, res)
	e.f = nil
	return res != rxDropped
}

// received accounts for e, given to the receiver of touched[t]: a frame
// delivered is counted now, one that waits in the backlog when it leaves
// it (drainLocked); both are captured now, while the sender has them.
func (s *sender) received(t int, e *emit, res rxOutcome) {
	if res == rxDropped {
		return
	}
	rt := &s.touched[t]
	if res == rxDelivered {
		rt.packets++
		rt.bytes += uint64(e.total - HeaderLen)
	}
	if w := rt.v.capture.Load(); w != nil {
		(*w)(s.raw(e.f))
	}
}

// touch returns the index in touched of receiver v, adding it: its
// pending deliveries and interrupt are handled at the end of the batch.
func (s *sender) touch(v *VirtioPort) int {
	for i := range s.touched[:s.nt] {
		if s.touched[i].v == v {
			return i
		}
	}
	if s.nt == len(s.touched) {
		s.flushRX()
	}
	s.touched[s.nt] = rxTarget{v: v}
	s.nt++
	return s.nt - 1
}

// flushRX delivers the pending frames, receiver by receiver, interrupts
// the receivers that want it and adds up their counters. The frames stay
// valid: flushRX may run in the middle of a flood.
func (s *sender) flushRX() {
	for i := range s.touched[:s.nt] {
		rt := &s.touched[i]
		rt.v.flushRX(s, i)
		if rt.packets > 0 {
			rt.v.c.rxPackets.Add(rt.packets)
			rt.v.c.rxBytes.Add(rt.bytes)
		}
		*rt = rxTarget{}
	}
	for i := range s.pend[:s.np] {
		s.pend[i].f = nil
	}
	s.nt, s.np = 0, 0
}

// flush ends a batch: pending deliveries, interrupts, counters. Afterwards
// the sender keeps no view of the frames it was given.
func (s *sender) flush() {
	s.flushRX()
	for i := range s.frames[:s.nf] {
		s.frames[i] = frameRef{}
	}
	s.frames[0].segs = nil // the unbatched frame
	s.nf = 0
	s.fwdNet, s.fwdFrom, s.fwdTo = nil, nil, nil
	s.flushTx()
}

// flushTx adds the batch's transmit counters to the sending port's.
func (s *sender) flushTx() {
	if s.txPort != nil && s.txPackets > 0 {
		s.txPort.c.txPackets.Add(s.txPackets)
		s.txPort.c.txBytes.Add(s.txBytes)
	}
	s.txPort, s.txPackets, s.txBytes = nil, 0, 0
}

// writer spreads bytes over a list of buffers whose total size the caller
// has checked; it stops silently at the end rather than overrun.
type writer struct {
	bufs   [][]byte
	bi, bo int
}

func (w *writer) reset(bufs [][]byte) { w.bufs, w.bi, w.bo = bufs, 0, 0 }

func (w *writer) put(p []byte) {
	for len(p) > 0 && w.bi < len(w.bufs) {
		n := copy(w.bufs[w.bi][w.bo:], p)
		p = p[n:]
		w.advance(n)
	}
}

func (w *writer) advance(n int) {
	w.bo += n
	if w.bo == len(w.bufs[w.bi]) {
		w.bi, w.bo = w.bi+1, 0
	}
}

// copyFrame copies bytes [from, to) of f, its checked head first.
func (w *writer) copyFrame(f *frameRef, from, to int) {
	if from < len(f.head) {
		h := min(to, len(f.head))
		w.put(f.head[from:h])
		from = h
	}
	w.copyFrom(f.segs, from, to)
}

// copyFrom copies bytes [from, to) of segs, viewed as one buffer.
func (w *writer) copyFrom(segs [][]byte, from, to int) {
	for _, sg := range segs {
		if from >= to {
			return
		}
		if from >= len(sg) {
			from -= len(sg)
			to -= len(sg)
			continue
		}
		src := sg[from:min(len(sg), to)]
		for len(src) > 0 && w.bi < len(w.bufs) {
			n := copy(w.bufs[w.bi][w.bo:], src)
			src = src[n:]
			w.advance(n)
		}
		to -= len(sg)
		from = 0
	}
}

// patch stores v big-endian at offset off of the written bytes.
func (w *writer) patch(off int, v uint16) {
	b := [2]byte{byte(v >> 8), byte(v)}
	i := 0
	for _, buf := range w.bufs {
		if off >= len(buf) {
			off -= len(buf)
			continue
		}
		for ; off < len(buf) && i < 2; off++ {
			buf[off] = b[i]
			i++
		}
		if i == 2 {
			return
		}
		off = 0
	}
}

// AllowIP lets a locked port send from addr (an IPv4 address; others are
// ignored: IPv6 addresses are claimed first come, first served, see
// Claim6). The DHCP server calls it when it leases.
func (v *VirtioPort) AllowIP(addr netip.Addr) {
	if !addr.Is4() {
		return
	}
	v.ipMu.Lock()
	defer v.ipMu.Unlock()
	a := addr.As4()
	old := *v.ips.Load()
	for _, b := range old {
		if a == b {
			return
		}
	}
	list := append(append(make([][4]byte, 0, len(old)+1), old...), a)
	v.ips.Store(&list)
}

// DisallowIP takes back an address given with AllowIP (a lease expired).
func (v *VirtioPort) DisallowIP(addr netip.Addr) {
	if !addr.Is4() {
		return
	}
	v.ipMu.Lock()
	defer v.ipMu.Unlock()
	a := addr.As4()
	old := *v.ips.Load()
	list := make([][4]byte, 0, len(old))
	for _, b := range old {
		if b != a {
			list = append(list, b)
		}
	}
	v.ips.Store(&list)
}
