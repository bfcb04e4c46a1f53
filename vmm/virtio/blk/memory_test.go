package blk

import (
	"runtime"
	"testing"
	"unsafe"
)

// heapDuring reports how many bytes of heap f allocates.
func heapDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestIdleDeviceHeap: a device the guest has not used yet costs its slots
// and little else. Each slot's list of data buffers grows with the
// requests that need it; preallocating room for the longest chain a queue
// allows cost 12 KiB per slot, 1.2 MiB resident per queue of 256.
func TestIdleDeviceHeap(t *testing.T) {
	backend := newManualBackend(1 << 20)
	for _, tc := range []struct {
		queues int
		size   uint16
	}{
		{1, 256}, {4, 256}, {1, 1024}, {2, 32768},
	} {
		var d *Device
		got := heapDuring(func() {
			var err error
			d, err = New(Options{Backend: backend, Queues: tc.queues, QueueSize: tc.size})
			if err != nil {
				t.Fatal(err)
			}
		})
		perSlot := unsafe.Sizeof(slot{}) + unsafe.Sizeof(int32(0)) // the slot and its free-list entry
		limit := uint64(tc.queues)*uint64(tc.size)*uint64(perSlot) + 16<<10
		if got > limit {
			t.Errorf("New with %d queues of %d: %d bytes of heap, want at most %d (%d per slot)", tc.queues, tc.size, got, limit, perSlot)
		}
		runtime.KeepAlive(d)
	}
}
