package virtio

import (
	"encoding/binary"
	"fmt"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
	"testing"
	"time"
)

// TestConcurrentDriver runs a driver goroutine against a device goroutine
// on one queue, both suppressing notifications the way the spec says
// (VIRTQ_*_F_NO_* flags, or used_event/avail_event). A lost notification
// in either direction deadlocks and fails on the timeout; a reordering bug
// shows up as a wrong response or, under -race, as a data race.
func TestConcurrentDriver(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event_idx=%v", eventIdx), func(t *testing.T) {
			runConcurrent(t, eventIdx, 20000)
		})
	}
}

func runConcurrent(t *testing.T, eventIdx bool, requests int) {
	const (
		size    = 64
		chains  = size / 3 // three descriptors per request
		dataAt  = 0x10000
		perReq  = 0x100
		timeout = 20 * time.Second
	)
	mem := virtiotest.NewRAM(0x20000)
	d := newDriver(t, mem, size, descAt, availAt, usedAt)
	feat := FeatureVersion1
	if eventIdx {
		feat |= FeatureRingEventIdx
	}
	q := d.queue(feat)
	kick := make(chan struct{}, 1)
	irq := make(chan struct{}, 1)
	done := make(chan struct{})
	devErr := make(chan error, 1)

	// Request i uses descriptors 3i (8 readable bytes: a sequence
	// number), 3i+1 (8 writable: the answer) and 3i+2 (1 writable:
	// status).
	for i := range uint16(chains) {
		base := uint64(dataAt + perReq*uint64(i))
		d.SetDesc(3*i, base, 8, R|N, 3*i+1)
		d.SetDesc(3*i+1, base+0x10, 8, W|N, 3*i+2)
		d.SetDesc(3*i+2, base+0x20, 1, W, 0)
	}

	go func() { // the device
		defer close(devErr)
		var c Chain
		var req [8]byte
		var resp [9]byte
		for {
			select {
			case <-kick:
			case <-done:
				return
			case <-time.After(timeout):
				devErr <- fmt.Errorf("device: no notification for %v", timeout)
				return
			}
			for {
				q.DisableNotifications()
				for {
					head, ok, err := q.Pop()
					if err != nil {
						devErr <- err
						return
					}
					if !ok {
						break
					}
					if err := q.Walk(head, &c); err != nil {
						devErr <- err
						return
					}
					if _, err := c.Read(req[:]); err != nil {
						devErr <- err
						return
					}
					binary.LittleEndian.PutUint64(resp[:], 2*binary.LittleEndian.Uint64(req[:])+1)
					resp[8] = 0
					if _, err := c.Write(resp[:]); err != nil {
						devErr <- err
						return
					}
					if err := q.Push(head, c.Written()); err != nil {
						devErr <- err
						return
					}
				}
				if q.NeedInterrupt() {
					select {
					case irq <- struct{}{}:
					default:
					}
				}
				if !q.EnableNotifications() {
					break
				}
			}
		}
	}()
	defer func() {
		close(done)
		if err := <-devErr; err != nil {
			t.Error(err)
		}
	}()

	// The driver, on this goroutine.
	free := make([]uint16, 0, chains)
	for i := range uint16(chains) {
		free = append(free, 3*i)
	}
	inflight := map[uint16]uint64{} // head -> sequence number
	var sent, completed uint64
	var lastUsed uint16
	kicks, irqs := 0, 0
	if !eventIdx {
		d.SetAvailFlags(availFNoInterrupt) // polling until we need to wait
	}
	for completed < uint64(requests) {
		old := d.AvailIdx()
		for sent < uint64(requests) && len(free) > 0 {
			h := free[len(free)-1]
			free = free[:len(free)-1]
			base := uint64(dataAt + perReq*uint64(h/3))
			b, _ := mem.Slice(base, 0x21)
			binary.LittleEndian.PutUint64(b, sent)
			clear(b[0x10:0x21])
			b[0x20] = 0xff
			inflight[h] = sent
			sent++
			d.Add(h)
		}
		if d.AvailIdx() != old {
			var notify bool
			if eventIdx {
				notify = needEvent(d.AvailEvent(), d.AvailIdx(), old)
			} else {
				notify = d.UsedFlags()&usedFNoNotify == 0
			}
			if notify {
				kicks++
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}

		n := 0
		for ; d.UsedIdx() != lastUsed; lastUsed++ {
			id, length := d.UsedElem(lastUsed)
			seq, ok := inflight[uint16(id)]
			if !ok {
				t.Fatalf("used element %d returns head %d, not in flight", lastUsed, id)
			}
			delete(inflight, uint16(id))
			b, _ := mem.Slice(uint64(dataAt+perReq*uint64(id/3)), 0x21)
			if length != 9 || binary.LittleEndian.Uint64(b[0x10:]) != 2*seq+1 || b[0x20] != 0 {
				t.Fatalf("request %d: used len %d, answer %d, status %d", seq, length, binary.LittleEndian.Uint64(b[0x10:]), b[0x20])
			}
			free = append(free, uint16(id))
			completed++
			n++
		}
		if n > 0 || completed == uint64(requests) {
			continue
		}
		// Nothing to do: ask for an interrupt, re-check, then sleep.
		if eventIdx {
			d.SetUsedEvent(lastUsed)
		} else {
			d.SetAvailFlags(0)
		}
		if d.UsedIdx() == lastUsed {
			select {
			case <-irq:
				irqs++
			case err := <-devErr:
				t.Fatalf("device stopped: %v", err)
			case <-time.After(timeout):
				t.Fatalf("driver: no interrupt for %v (%d/%d completed)", timeout, completed, requests)
			}
		}
		if !eventIdx {
			d.SetAvailFlags(availFNoInterrupt)
		}
	}
	if kicks == 0 || irqs == 0 {
		t.Fatalf("kicks %d, interrupts %d: the test never exercised notifications", kicks, irqs)
	}
	t.Logf("%d requests, %d kicks, %d interrupts", requests, kicks, irqs)
}
