package machine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
)

// TestDiskDevice checks how a configured disk becomes a device: one queue
// per vCPU up to maxDiskQueues, read-only offered when asked or when the
// descriptor is read-only, and backends closed by closeVirtio.
func TestDiskDevice(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	rw, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	ro, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	// The default holds on a virtual host only (this one, in CI).
	DefaultDiskPoll := DefaultDiskPoll
	if !cpuid.HostIsVirtual() {
		DefaultDiskPoll = 0
	}
	for _, tc := range []struct {
		name     string
		disk     Disk
		cpus     int
		queues   int
		readOnly bool
		holdoff  time.Duration
	}{
		{"1 vCPU", Disk{File: rw, ID: "a"}, 1, 1, false, DefaultDiskPoll},
		{"3 vCPUs", Disk{File: rw, IOPS: 100}, 3, 3, false, DefaultDiskPoll},
		{"64 vCPUs", Disk{File: rw, Bandwidth: 1 << 20}, 64, maxDiskQueues, false, DefaultDiskPoll},
		{"read-only", Disk{File: rw, ReadOnly: true}, 2, 2, true, DefaultDiskPoll},
		{"read-only descriptor", Disk{File: ro}, 1, 1, true, DefaultDiskPoll},
		{"poll set", Disk{File: rw, Poll: 30 * time.Microsecond}, 1, 1, false, 30 * time.Microsecond},
		{"poll off", Disk{File: rw, Poll: -1}, 1, 1, false, 0},
	} {
		m := &Machine{}
		dev, err := m.disk(tc.disk, tc.cpus, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n := len(dev.QueueSizes()); n != tc.queues {
			t.Errorf("%s: %d queues, want %d", tc.name, n, tc.queues)
		}
		if got := dev.Features()&blk.FeatureRO != 0; got != tc.readOnly {
			t.Errorf("%s: read-only offered %v, want %v", tc.name, got, tc.readOnly)
		}
		if got := dev.Holdoff(); got != tc.holdoff {
			t.Errorf("%s: holdoff %v, want %v", tc.name, got, tc.holdoff)
		}
		if k := m.DiskBackends(); len(k) != 1 || k[0] == "" {
			t.Errorf("%s: backends %q", tc.name, k)
		}
		b := m.backends[0]
		if err := m.closeVirtio(); err != nil {
			t.Errorf("%s: close: %v", tc.name, err)
		}
		if err := b.Submit(block.Request{Op: block.Flush}); !errors.Is(err, block.ErrClosed) {
			t.Errorf("%s: Submit after close = %v, want ErrClosed", tc.name, err)
		}
	}
	if _, err := (&Machine{}).disk(Disk{}, 1, nil); err == nil {
		t.Error("a disk without a file was accepted")
	}
}
