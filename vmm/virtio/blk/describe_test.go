package blk

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/block"
)

// TestDescribe: a dump's lines say where a disk's requests are. Three
// reads held by the backend are in flight on queue 0, taken from its ring
// and not used yet; the idle queue 1 has nothing; once the backend
// completes them the ring has used all three and nothing is in flight.
func TestDescribe(t *testing.T) {
	fb := newFakeBackend(1 << 20)
	fb.mu.Lock()
	fb.hold = true
	fb.mu.Unlock()
	r := newRig(t, Options{Backend: fb, Queues: 2, QueueSize: 16}, 0)
	for i := range 3 {
		q := r.newReq(typeIn, uint64(i), 512)
		r.submit(0, q, q.segs(typeIn))
	}
	deadline := time.Now().Add(10 * time.Second)
	for fb.heldCount() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads reached the backend, want 3", fb.heldCount())
		}
		time.Sleep(time.Millisecond)
	}
	want := func(lines []string, res ...string) {
		t.Helper()
		if len(lines) != len(res) {
			t.Fatalf("%d lines, want %d:\n%s", len(lines), len(res), strings.Join(lines, "\n"))
		}
		for i, re := range res {
			if !regexp.MustCompile(re).MatchString(lines[i]) {
				t.Errorf("line %d: %q does not match %q", i, lines[i], re)
			}
		}
	}
	want(r.dev.Describe(),
		`^queue 0: 3 in flight, 13 slots free, held back=-1 throttled=false busy=false kicked=false broken=false stopping=false holding=false; ring size=16 avail\.idx=3 next=3 used=0 used\.idx=0 `,
		`^queue 1: 0 in flight, 16 slots free, .*; ring size=16 avail\.idx=0 next=0 used=0 used\.idx=0 `)
	fb.release()
	r.wait(0, 3, 10*time.Second)
	want(r.dev.Describe(),
		`^queue 0: 0 in flight, 16 slots free, .*; ring size=16 avail\.idx=3 next=3 used=3 used\.idx=3 `,
		`^queue 1: 0 in flight`)
}

// TestDescribeBackend: a real backend adds its line: nothing held once a
// read has completed, and a closed io_uring says so without touching its
// unmapped ring.
func TestDescribeBackend(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := openBackend(t, be.name, diskFile(t, t.TempDir(), 1<<20, 0), block.Options{Depth: 8})
			r := newRig(t, Options{Backend: b, Queues: 1, QueueSize: 16}, 0)
			if s, _ := r.do(typeIn, 0, nil, 4096); s != statusOK {
				t.Fatalf("read: status %d", s)
			}
			kind := strings.TrimSuffix(be.name, "-async")
			idle := fmt.Sprintf(`^backend %s: 0 of 8 slots in flight, `, kind)
			if kind == "io_uring" {
				// The reaper reads its eventfd after delivering: wait
				// for that (progress, not time).
				idle += `0 SQEs not taken by the kernel, 0 CQEs not reaped, refused=false overflow=false eventfd=0$`
			} else {
				idle += `0 waiting for a worker$`
			}
			var last string
			for deadline := time.Now().Add(10 * time.Second); ; {
				lines := r.dev.Describe()
				last = lines[len(lines)-1]
				if len(lines) == 2 && regexp.MustCompile(idle).MatchString(last) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%q does not match %q", last, idle)
				}
				time.Sleep(time.Millisecond)
			}
			if kind == "io_uring" {
				b.Close()
				if got := b.(block.Describer).Describe(); got != "io_uring: closed, 0 of 8 slots in flight" {
					t.Errorf("closed: %q", got)
				}
			}
		})
	}
}
