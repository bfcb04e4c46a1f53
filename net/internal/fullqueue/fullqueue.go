// Package fullqueue bounds the wait of a frame port's write for room in a
// full device queue (a tap's, a NIC's socket buffer).
//
// Then the rest of the batch is dropped, as a full NIC drops: a write that
// waits for ever holds the port's write lock, and with it every port of
// the switch flooding to this one, for as long as the device is wedged.
package fullqueue

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// MaxWait bounds how long a write waits for room.
const MaxWait = 100 * time.Millisecond

// Wait retries a write that found the queue full, waiting for room up to
// MaxWait. The write function must return false on EAGAIN while *waiting
// is set (which makes the poller wait), and true otherwise (a first pass
// that notes the full queue and returns, so that the common case pays no
// deadline). A timeout is not an error: the frames not written are the
// caller's drops.
func Wait(f *os.File, rc syscall.RawConn, write func(uintptr) bool, waiting *bool) error {
	*waiting = true
	f.SetWriteDeadline(time.Now().Add(MaxWait))
	err := rc.Write(write)
	f.SetWriteDeadline(time.Time{})
	*waiting = false
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
