package vswitch

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/eventfd"
	"golang.org/x/sys/unix"
)

// kickRig is a kick eventfd and a stand-in for the ring: the driver posts
// (posted++) then kicks; the device takes everything after each wait.
type kickRig struct {
	efd           int
	posted, taken atomic.Int64
}

func newKickRig(t *testing.T) *kickRig {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(efd) })
	return &kickRig{efd: efd}
}

func (r *kickRig) post()          { r.posted.Add(1); eventfd.Signal(r.efd) }
func (r *kickRig) pending() bool  { return r.posted.Load() != r.taken.Load() }
func (r *kickRig) takeAll()       { r.taken.Store(r.posted.Load()) }
func (r *kickRig) counter() int64 { var b [8]byte; unix.Read(r.efd, b[:]); return int64(b[0]) }

// asleep checks that a waiter stays asleep for a while, then kicks with
// post and wants it to wake. With until, it waits as the transmit worker
// does, until the ring has work: a wait may end spuriously for a
// notification the poller delivers late (the worker then finds nothing
// and waits again), but not for good.
func asleep(t *testing.T, k *kickWaiter, post func(), until func() bool) {
	t.Helper()
	woke := make(chan error, 1)
	go func() {
		for {
			err := k.wait()
			if err != nil || until == nil || until() {
				woke <- err
				return
			}
		}
	}()
	select {
	case err := <-woke:
		t.Fatalf("woke without a kick: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	post()
	if err := <-woke; err != nil {
		t.Fatal(err)
	}
}

// TestKickWaiterRing: with the ring to ask, the eventfd is never read:
// buffers posted (and kicked) before a wait end it at once, though Go's
// poller forgets that notification when the wait begins; a kick while it
// sleeps wakes it; nothing posted, it sleeps; no allocation per kick and
// wait; interrupt ends it.
func TestKickWaiterRing(t *testing.T) {
	r := newKickRig(t)
	k, err := newKickWaiter(r.efd, r.pending)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	for i := range 3 {
		r.post()
		if err := k.wait(); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
		r.takeAll()
	}
	for range 3 {
		asleep(t, k, r.post, r.pending)
		r.takeAll()
	}
	if n := testing.AllocsPerRun(100, func() { r.post(); k.wait(); r.takeAll() }); n != 0 {
		t.Errorf("%v allocations per kick and wait", n)
	}
	if c := r.counter(); c < 6 {
		t.Errorf("eventfd counter %d: the waiter drained it", c)
	}
	woke := make(chan error, 1)
	go func() { woke <- k.wait() }()
	k.interrupt()
	if err := <-woke; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("interrupted wait: %v", err)
	}
}

// TestKickWaiterDrain: without a ring to ask, each wait drains the
// eventfd, ends at once for a kick that came before it and sleeps until
// the next otherwise.
func TestKickWaiterDrain(t *testing.T) {
	r := newKickRig(t)
	k, err := newKickWaiter(r.efd, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	r.post()
	r.post()
	if err := k.wait(); err != nil {
		t.Fatal(err)
	}
	if c := r.counter(); c != 0 {
		t.Errorf("counter %d after the wait, want drained", c)
	}
	asleep(t, k, r.post, nil)
	k.interrupt()
	if err := k.wait(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("interrupted wait: %v", err)
	}
}
