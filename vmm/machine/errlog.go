package machine

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hyperroot/hyperroot/vmm/ratelimit"
)

// Bounds of errorLog: a burst of errorBurst lines, then one per
// errorInterval.
const (
	errorBurst    = 10
	errorInterval = time.Second
)

// errorLog reports errors that happen during guest accesses (a driver
// acking features it was not offered, rings outside RAM, interrupt routes
// KVM refuses), which have no caller to return them to. Each is a guest
// action, so a driver looping on one would print a line per register
// write to the VMM's stderr, which the supervisor relays to the console:
// lines beyond the bucket are counted instead, and the next line printed
// says how many were suppressed.
type errorLog struct {
	w   io.Writer
	lim *ratelimit.Limiter

	mu         sync.Mutex
	suppressed uint64
}

func newErrorLog(w io.Writer, clock ratelimit.Clock) *errorLog {
	return &errorLog{w: w, lim: ratelimit.New(ratelimit.BucketConfig{Size: errorBurst, RefillTime: errorBurst * errorInterval}, ratelimit.BucketConfig{}, clock)}
}

// report prints err, or counts it when the guest caused too many lately.
func (l *errorLog) report(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lim.Consume(1, 0) {
		l.suppressed++
		return
	}
	if l.suppressed > 0 {
		fmt.Fprintf(l.w, "vmm: %v (%d similar errors suppressed)\n", err, l.suppressed)
		l.suppressed = 0
		return
	}
	fmt.Fprintln(l.w, "vmm:", err)
}
