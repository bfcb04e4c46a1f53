package virtio

import (
	"errors"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/memory"
)

// The real guest RAM accessor is a Memory.
var _ Memory = (*memory.Guest)(nil)

func TestNewQueueSizes(t *testing.T) {
	for _, tc := range []struct {
		max uint16
		ok  bool
	}{
		{0, false}, {1, true}, {2, true}, {3, false}, {256, true}, {1000, false},
		{32768, true}, {65535, false},
	} {
		q, err := NewQueue(tc.max)
		if (err == nil) != tc.ok {
			t.Errorf("NewQueue(%d) error = %v, want ok=%v", tc.max, err, tc.ok)
			continue
		}
		if err == nil && (q.MaxSize() != tc.max || q.Size != tc.max || q.Active()) {
			t.Errorf("NewQueue(%d) = size %d max %d active %v", tc.max, q.Size, q.MaxSize(), q.Active())
		}
	}
}

func TestActivate(t *testing.T) {
	const top = 0x10000 // end of the first region
	for _, tc := range []struct {
		name              string
		size              uint16
		desc, avail, used uint64
		notReady          bool
		ok                bool
	}{
		{"standard", 16, descAt, availAt, usedAt, false, true},
		{"avail only 2-aligned", 16, descAt, availAt + 2, usedAt, false, true},
		{"size 1", 1, descAt, availAt + 6, usedAt, false, true},
		{"maximum size", 256, descAt, 0x2000, 0x3000, false, true},
		{"rings at the very end of RAM", 16, top - 16*16, top - 8 - 8*16 - 40, top - 8 - 8*16, false, true},
		{"rings in second region", 16, 0x20000, 0x20100, 0x20200, false, true},
		{"not ready", 16, descAt, availAt, usedAt, true, false},
		{"size 0", 0, descAt, availAt, usedAt, false, false},
		{"size not power of two", 12, descAt, availAt, usedAt, false, false},
		{"size above maximum", 512, descAt, availAt, usedAt, false, false},
		{"desc misaligned", 16, descAt + 8, availAt, usedAt, false, false},
		{"avail odd", 16, descAt, availAt + 1, usedAt, false, false},
		{"used 2-aligned", 16, descAt, availAt, usedAt + 2, false, false},
		{"desc past the end", 16, top - 16*15, availAt, usedAt, false, false},
		{"avail straddles the end", 16, descAt, top - 32, usedAt, false, false},
		{"avail ends 2 bytes past the end", 16, descAt, top - 36, usedAt, false, false},
		{"used straddles the end", 16, descAt, availAt, top - 8*16, false, false},
		{"avail_event past the end", 16, descAt, availAt, top - 4 - 8*16, false, false},
		{"desc in the hole", 16, 0x18000, availAt, usedAt, false, false},
		{"used spans the hole", 16, descAt, availAt, top - 64, false, false},
		{"desc near 2^64", 16, ^uint64(0) - 0xff, availAt, usedAt, false, false},
		{"avail near 2^64", 16, descAt, ^uint64(0) - 1, usedAt, false, false},
		{"used near 2^64", 16, descAt, availAt, ^uint64(0) - 3, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := twoRegions()
			q, err := NewQueue(256)
			if err != nil {
				t.Fatal(err)
			}
			q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = tc.size, tc.desc, tc.avail, tc.used, !tc.notReady
			err = q.Activate(mem, FeatureVersion1|FeaturesQueue)
			if tc.ok {
				if err != nil || !q.Active() {
					t.Fatalf("Activate: %v (active %v)", err, q.Active())
				}
				// Exercise every ring word: nothing may land outside RAM.
				q.EnableNotifications()
				q.DisableNotifications()
				if err := q.Push(0, 1); err != nil {
					t.Fatal(err)
				}
				q.NeedInterrupt()
				if _, ok, err := q.Pop(); ok || err != nil {
					t.Fatalf("Pop on an empty ring = %v, %v", ok, err)
				}
				checkGuards(t, mem)
				return
			}
			if err == nil || !errors.Is(err, ErrRing) {
				t.Fatalf("Activate = %v, want an ErrRing error", err)
			}
			if q.Active() {
				t.Fatal("queue active after a failed Activate")
			}
			if _, _, err := q.Pop(); err == nil {
				t.Fatal("Pop on an inactive queue succeeded")
			}
			if err := q.Push(0, 0); err == nil {
				t.Fatal("Push on an inactive queue succeeded")
			}
		})
	}
}

func TestResetDeactivates(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 8, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	q.DescAddr = 0x1234
	q.Reset()
	if q.Active() || q.Ready || q.Size != 8 || q.DescAddr != 0 {
		t.Fatalf("after Reset: active %v ready %v size %d desc %#x", q.Active(), q.Ready, q.Size, q.DescAddr)
	}
	if _, _, err := q.Pop(); err == nil {
		t.Fatal("Pop after Reset succeeded")
	}
}

// TestActivateIgnoresLaterConfig checks that a driver rewriting the size
// of a running queue cannot make the device index past its ring views.
func TestActivateIgnoresLaterConfig(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	q.Size = 32768
	d.SetDesc(3, bufBase, 4, 0, 0)
	d.Add(3)
	head, ok, err := q.Pop()
	if err != nil || !ok || head != 3 {
		t.Fatalf("Pop = %d, %v, %v", head, ok, err)
	}
	if err := q.Push(4, 0); err == nil {
		t.Fatal("Push of head 4 on a queue activated with size 4 succeeded")
	}
	checkGuards(t, mem)
}

func TestPopPush(t *testing.T) {
	for _, avail := range []uint64{availAt, availAt + 2} {
		mem := virtiotest.NewRAM(ramSize)
		d := newDriver(t, mem, 4, descAt, avail, usedAt)
		q := d.queue(FeatureVersion1)
		if _, ok, err := q.Pop(); ok || err != nil {
			t.Fatalf("Pop on empty ring = %v, %v", ok, err)
		}
		d.Add(2, 0, 3)
		for _, want := range []uint16{2, 0, 3} {
			head, ok, err := q.Pop()
			if err != nil || !ok || head != want {
				t.Fatalf("avail %#x: Pop = %d, %v, %v; want %d", avail, head, ok, err, want)
			}
		}
		if _, ok, _ := q.Pop(); ok {
			t.Fatal("Pop returned more than was added")
		}
		if err := q.Push(3, 77); err != nil {
			t.Fatal(err)
		}
		if err := q.Push(2, 0); err != nil {
			t.Fatal(err)
		}
		if got := d.UsedIdx(); got != 2 {
			t.Fatalf("used idx = %d, want 2", got)
		}
		if id, n := d.UsedElem(0); id != 3 || n != 77 {
			t.Fatalf("used[0] = %d/%d, want 3/77", id, n)
		}
		if id, n := d.UsedElem(1); id != 2 || n != 0 {
			t.Fatalf("used[1] = %d/%d, want 2/0", id, n)
		}
		if err := q.Push(4, 0); err == nil {
			t.Fatal("Push of an out-of-range head succeeded")
		}
		checkGuards(t, mem)
	}
}

// TestIndexWraparound runs more than 2^16 buffers through a small queue:
// the free-running 16-bit indices must wrap on both rings.
func TestIndexWraparound(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	for i := range 4 {
		d.SetDesc(uint16(i), bufBase, 1, descFWrite, 0)
	}
	for i := range 70000 {
		h := uint16(i % 4)
		d.Add(h)
		head, ok, err := q.Pop()
		if err != nil || !ok || head != h {
			t.Fatalf("round %d: Pop = %d, %v, %v", i, head, ok, err)
		}
		if err := q.Push(head, uint32(i)); err != nil {
			t.Fatal(err)
		}
		if got := d.UsedIdx(); got != uint16(i+1) {
			t.Fatalf("round %d: used idx %d", i, got)
		}
		if id, n := d.UsedElem(uint16(i)); id != uint32(h) || n != uint32(i) {
			t.Fatalf("round %d: used elem %d/%d", i, id, n)
		}
	}
}

func TestPopRingErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(d *driver)
	}{
		{"avail idx more than size ahead", func(d *driver) { d.SetAvailIdx(5) }},
		{"avail idx far ahead", func(d *driver) { d.SetAvailIdx(0x8000) }},
		{"avail idx behind (wraps to far ahead)", func(d *driver) { d.SetAvailIdx(0xffff) }},
		{"head beyond size", func(d *driver) { d.Add(4) }},
		{"head 0xffff", func(d *driver) { d.Add(0xffff) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := virtiotest.NewRAM(ramSize)
			d := newDriver(t, mem, 4, descAt, availAt, usedAt)
			q := d.queue(FeatureVersion1)
			tc.setup(d)
			_, ok, err := q.Pop()
			if ok || !errors.Is(err, ErrRing) {
				t.Fatalf("Pop = %v, %v; want an ErrRing error", ok, err)
			}
			// Broken stays broken, even if the driver repairs the ring.
			d.SetAvailIdx(0)
			if _, _, err2 := q.Pop(); err2 == nil || q.Err() == nil {
				t.Fatal("queue recovered from a corrupted ring without a reset")
			}
		})
	}
}

func TestPopExactlySizeAhead(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	d.Add(0, 1, 2, 3)
	for i := range 4 {
		if _, ok, err := q.Pop(); !ok || err != nil {
			t.Fatalf("Pop %d = %v, %v", i, ok, err)
		}
	}
}

func TestNeedEvent(t *testing.T) {
	for _, tc := range []struct {
		event, cur, old uint16
		want            bool
	}{
		{0, 1, 0, true},            // the driver wants to hear about entry 0
		{1, 1, 0, false},           // not yet: entry 1 is not used
		{5, 10, 0, true},           // crossed in a batch
		{10, 10, 0, false},         // event == new: not crossed
		{9, 10, 0, true},           // event is the last entry pushed
		{0, 10, 5, false},          // event behind old: already notified
		{4, 10, 5, false},          //
		{5, 10, 5, true},           // event == old: the first pushed
		{10, 10, 10, false},        // nothing pushed
		{0xffff, 1, 0xfffe, true},  // wrap: event at 0xffff, cur wrapped to 1
		{0xfffe, 1, 0xffff, false}, // wrap: event before old
		{0, 2, 0xffff, true},       // wrap: event 0 inside [0xffff, 2)
		{2, 2, 0xffff, false},      //
		{0x8000, 0x8001, 0, true},  // large batch
		{0x7fff, 0xffff, 0x8000, false},
	} {
		if got := needEvent(tc.event, tc.cur, tc.old); got != tc.want {
			t.Errorf("needEvent(event %#x, new %#x, old %#x) = %v, want %v", tc.event, tc.cur, tc.old, got, tc.want)
		}
	}
}

func TestNeedInterrupt(t *testing.T) {
	type step struct {
		push      int    // buffers to push before asking
		usedEvent uint16 // with EVENT_IDX
		noIntr    bool   // without EVENT_IDX
		want      bool
	}
	for _, tc := range []struct {
		name     string
		eventIdx bool
		steps    []step
	}{
		{"flags: default notifies", false, []step{{push: 1, want: true}, {push: 2, want: true}}},
		{"flags: nothing pushed", false, []step{{push: 0, want: false}}},
		{"flags: NO_INTERRUPT", false, []step{{push: 1, noIntr: true, want: false}, {push: 1, want: true}}},
		{"event: crossing", true, []step{{push: 1, usedEvent: 0, want: true}}},
		{"event: not reached", true, []step{{push: 1, usedEvent: 3, want: false}, {push: 2, usedEvent: 3, want: false}, {push: 1, usedEvent: 3, want: true}}},
		{"event: passed long ago", true, []step{{push: 3, usedEvent: 0, want: true}, {push: 3, usedEvent: 0, want: false}}},
		{"event: nothing pushed", true, []step{{push: 0, usedEvent: 0, want: false}}},
		{"event: ignores NO_INTERRUPT", true, []step{{push: 1, usedEvent: 0, noIntr: true, want: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := virtiotest.NewRAM(ramSize)
			d := newDriver(t, mem, 8, descAt, availAt, usedAt)
			feat := FeatureVersion1
			if tc.eventIdx {
				feat |= FeatureRingEventIdx
			}
			q := d.queue(feat)
			for i, s := range tc.steps {
				d.SetUsedEvent(s.usedEvent)
				var f uint16
				if s.noIntr {
					f = availFNoInterrupt
				}
				d.SetAvailFlags(f)
				for range s.push {
					if err := q.Push(0, 0); err != nil {
						t.Fatal(err)
					}
				}
				if got := q.NeedInterrupt(); got != s.want {
					t.Fatalf("step %d: NeedInterrupt = %v, want %v", i, got, s.want)
				}
			}
		})
	}
}

// TestNeedInterruptWraps pushes across the 16-bit wrap of used->idx with
// used_event set just past it.
func TestNeedInterruptWraps(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 8, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1 | FeatureRingEventIdx)
	d.SetUsedEvent(0xffff) // not reached while we approach the wrap
	for i := 0; i < 0xfffe; i++ {
		if err := q.Push(0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if q.NeedInterrupt() {
		t.Fatal("notified before used_event was reached")
	}
	d.SetUsedEvent(1)
	q.Push(0, 0) // idx 0xffff
	q.Push(0, 0) // idx 0 (wrapped)
	if q.NeedInterrupt() {
		t.Fatal("notified although entry 1 is not used yet")
	}
	q.Push(0, 0) // idx 1: entry 1 not yet used either (entries are 0-based)
	if q.NeedInterrupt() {
		t.Fatal("notified at idx 1 for used_event 1")
	}
	q.Push(0, 0) // idx 2: entry 1 used
	if !q.NeedInterrupt() {
		t.Fatal("no notification after crossing used_event across the wrap")
	}
	if d.UsedIdx() != 2 {
		t.Fatalf("used idx = %d, want 2", d.UsedIdx())
	}
}

func TestNotificationFlags(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 8, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	q.DisableNotifications()
	if d.UsedFlags()&usedFNoNotify == 0 {
		t.Fatal("DisableNotifications did not set VIRTQ_USED_F_NO_NOTIFY")
	}
	if err := q.Push(1, 2); err != nil { // must keep the flag
		t.Fatal(err)
	}
	if d.UsedFlags()&usedFNoNotify == 0 || d.UsedIdx() != 1 {
		t.Fatalf("Push lost used flags %#x or idx %d", d.UsedFlags(), d.UsedIdx())
	}
	if q.EnableNotifications() {
		t.Fatal("EnableNotifications reported buffers on an empty ring")
	}
	if d.UsedFlags()&usedFNoNotify != 0 || d.UsedIdx() != 1 {
		t.Fatalf("EnableNotifications left flags %#x, idx %d", d.UsedFlags(), d.UsedIdx())
	}
	d.Add(0)
	if !q.EnableNotifications() {
		t.Fatal("EnableNotifications missed an available buffer")
	}
}

func TestNotificationEventIdx(t *testing.T) {
	for _, avail := range []uint64{availAt, availAt + 2} {
		mem := virtiotest.NewRAM(ramSize)
		d := newDriver(t, mem, 8, descAt, avail, usedAt)
		q := d.queue(FeatureVersion1 | FeatureRingEventIdx)
		q.DisableNotifications()
		if d.UsedFlags() != 0 {
			t.Fatal("DisableNotifications set used flags with EVENT_IDX")
		}
		d.Add(0, 1, 2)
		if !q.EnableNotifications() {
			t.Fatal("EnableNotifications missed available buffers")
		}
		if got := d.AvailEvent(); got != 0 {
			t.Fatalf("avail_event = %d, want 0", got)
		}
		for range 3 {
			if _, ok, err := q.Pop(); !ok || err != nil {
				t.Fatal(ok, err)
			}
		}
		if q.EnableNotifications() {
			t.Fatal("EnableNotifications reported buffers on a drained ring")
		}
		if got := d.AvailEvent(); got != 3 {
			t.Fatalf("avail_event = %d, want 3", got)
		}
		// The word holding avail_event has guest bytes in its other half:
		// storing avail_event must not change them.
		after := mem.Bytes(usedAt+4+8*8+2, 2)
		if after[0] != 0 || after[1] != 0 {
			t.Fatalf("bytes after avail_event changed: % x", after[:2])
		}
		checkGuards(t, mem)
	}
}

// TestAvailEventKeepsNeighbour checks the 16-bit store preserves the other
// half of its word, which may belong to the guest.
func TestAvailEventKeepsNeighbour(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 8, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1 | FeatureRingEventIdx)
	next := mem.Bytes(usedAt+4+8*8+2, 2)
	next[0], next[1] = 0xBE, 0xEF
	d.Add(0)
	q.Pop()
	q.EnableNotifications()
	if d.AvailEvent() != 1 || next[0] != 0xBE || next[1] != 0xEF {
		t.Fatalf("avail_event %d, neighbour % x", d.AvailEvent(), next[:2])
	}
}

// TestResume hands a running queue over to a fresh Queue, as a vhost-user
// backend does across GET_VRING_BASE / SET_VRING_BASE or a reconnect: the
// new one must continue at the old one's indices, not at zero.
func TestResume(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	d.Add(0, 1, 2)
	for range 2 {
		head, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("Pop = %v, %v", ok, err)
		}
		if err := q.Push(head, 1); err != nil {
			t.Fatal(err)
		}
	}
	base := q.NextAvail()
	if base != 2 || q.UsedIndex() != 2 {
		t.Fatalf("NextAvail, UsedIndex = %d, %d; want 2, 2", base, q.UsedIndex())
	}
	q2 := d.queue(FeatureVersion1)
	q2.Resume(base)
	head, ok, err := q2.Pop()
	if !ok || err != nil || head != 2 {
		t.Fatalf("resumed Pop = %d, %v, %v; want head 2", head, ok, err)
	}
	if err := q2.Push(head, 5); err != nil {
		t.Fatal(err)
	}
	if got := d.UsedIdx(); got != 3 {
		t.Fatalf("used idx after the resumed Push = %d, want 3", got)
	}
	if id, n := d.UsedElem(2); id != 2 || n != 5 {
		t.Fatalf("used[2] = %d/%d, want 2/5", id, n)
	}
	checkGuards(t, mem)
}

// TestPushDeferred checks that deferred pushes write their elements but
// stay invisible to the driver until something publishes them, and that
// every publishing method publishes them all.
func TestPushDeferred(t *testing.T) {
	for _, tc := range []struct {
		name    string
		publish func(q *Queue)
	}{
		{"PublishUsed", func(q *Queue) { q.PublishUsed() }},
		{"Push", func(q *Queue) { q.Push(3, 30) }},
		{"NeedInterrupt", func(q *Queue) { q.NeedInterrupt() }},
		{"EnableNotifications", func(q *Queue) { q.EnableNotifications() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := virtiotest.NewRAM(ramSize)
			d := newDriver(t, mem, 4, descAt, availAt, usedAt)
			q := d.queue(FeatureVersion1)
			d.Add(0, 1, 2, 3)
			for range 4 {
				if _, ok, err := q.Pop(); !ok || err != nil {
					t.Fatalf("Pop = %v, %v", ok, err)
				}
			}
			for h := uint16(0); h < 3; h++ {
				if err := q.PushDeferred(h, uint32(h)*10); err != nil {
					t.Fatal(err)
				}
			}
			if got := d.UsedIdx(); got != 0 {
				t.Fatalf("used idx %d before publishing, want 0", got)
			}
			if q.UsedIndex() != 3 {
				t.Fatalf("UsedIndex = %d, want 3", q.UsedIndex())
			}
			tc.publish(q)
			want := uint16(3)
			if tc.name == "Push" {
				want = 4
			}
			if got := d.UsedIdx(); got != want {
				t.Fatalf("used idx %d after publishing, want %d", got, want)
			}
			for i := uint16(0); i < want; i++ {
				if id, n := d.UsedElem(i); id != uint32(i) || n != uint32(i)*10 {
					t.Errorf("used[%d] = %d/%d, want %d/%d", i, id, n, i, i*10)
				}
			}
			checkGuards(t, mem)
		})
	}
}

func TestPushDeferredErrors(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	if err := q.PushDeferred(4, 0); err == nil {
		t.Error("PushDeferred of an out-of-range head succeeded")
	}
	q.PublishUsed() // nothing pending: no store
	if got := d.UsedIdx(); got != 0 || q.UsedIndex() != 0 {
		t.Errorf("used idx %d, UsedIndex %d after a refused push, want 0", got, q.UsedIndex())
	}
	q.Reset()
	if err := q.PushDeferred(0, 0); !errors.Is(err, ErrRing) {
		t.Errorf("PushDeferred on an inactive queue = %v, want ErrRing", err)
	}
	q.PublishUsed() // must not touch the dropped views
}

// TestNeedInterruptDeferred runs TestNeedInterrupt's event-index rule
// with deferred pushes: the answer must be the same as with Push, and the
// driver must see the index the decision was made on.
func TestNeedInterruptDeferred(t *testing.T) {
	for _, tc := range []struct {
		usedEvent uint16
		push      int
		want      bool
	}{
		{0, 1, true}, {3, 2, false}, {1, 2, true}, {5, 4, false},
	} {
		mem := virtiotest.NewRAM(ramSize)
		d := newDriver(t, mem, 8, descAt, availAt, usedAt)
		q := d.queue(FeatureVersion1 | FeatureRingEventIdx)
		d.SetUsedEvent(tc.usedEvent)
		for range tc.push {
			q.PushDeferred(0, 0)
		}
		if got := q.NeedInterrupt(); got != tc.want {
			t.Errorf("used_event %d, %d deferred pushes: NeedInterrupt = %v, want %v", tc.usedEvent, tc.push, got, tc.want)
		}
		if got := d.UsedIdx(); got != uint16(tc.push) {
			t.Errorf("used idx %d after NeedInterrupt, want %d", got, tc.push)
		}
	}
}

// TestPopUsesSeenIndex checks the cached available index: entries up to
// the index already loaded are consumed without reloading it, a later
// index is picked up, and a corrupt one is still caught once reached.
func TestPopUsesSeenIndex(t *testing.T) {
	mem := virtiotest.NewRAM(ramSize)
	d := newDriver(t, mem, 4, descAt, availAt, usedAt)
	q := d.queue(FeatureVersion1)
	d.Add(1, 2)
	if h, ok, err := q.Pop(); h != 1 || !ok || err != nil {
		t.Fatalf("Pop = %d, %v, %v; want 1", h, ok, err)
	}
	d.Add(3)
	for _, want := range []uint16{2, 3} {
		if h, ok, err := q.Pop(); h != want || !ok || err != nil {
			t.Fatalf("Pop = %d, %v, %v; want %d", h, ok, err, want)
		}
	}
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Fatalf("Pop on a drained ring = %v, %v", ok, err)
	}
	d.Add(0)
	d.SetAvailIdx(d.AvailIdx() + 9) // corrupt: more than the ring holds
	if _, ok, err := q.Pop(); ok || !errors.Is(err, ErrRing) {
		t.Fatalf("Pop with a corrupt index = %v, %v; want ErrRing", ok, err)
	}
}
