package serial

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// Defaults of BufferOptions.
const (
	DefaultBufferSize = 64 << 10
	DefaultFlushSize  = 4 << 10
	DefaultIdle       = 10 * time.Millisecond
	DefaultMaxBlock   = 50 * time.Millisecond
)

// BufferOptions configure a Buffer; zero fields take the defaults above.
type BufferOptions struct {
	// Size bounds the bytes held while the writer is busy: a burst the
	// reader has not taken yet.
	Size int
	// FlushSize is how much of a line without a newline is held before it
	// is written anyway.
	FlushSize int
	// Idle is how long the start of a partial line (a prompt, a line the
	// guest is still printing when it hangs) waits before it is written.
	Idle time.Duration
	// MaxBlock is the longest a Write waits for room when the reader is
	// slower than the guest; after that the bytes that do not fit are
	// dropped and counted (Dropped), and later Writes drop at once until
	// the writer gets a write through.
	MaxBlock time.Duration
}

// Buffer is the UART's Options.Out for a VMM whose console is a pipe or a
// terminal. The UART hands out one byte per guest THR write; unbuffered,
// that is one write(2) per byte and a vCPU blocked by every slow read of
// the other end. A Buffer collects bytes and a goroutine of its own writes
// them: a whole line per write(2) (on '\n', at FlushSize bytes, or Idle
// after the first unwritten byte), so a vCPU only ever copies into memory,
// and waits at most MaxBlock when the reader falls a whole Size behind.
//
// Flush writes what is held at once; the VMM calls it (or Close) on every
// exit path, so the last partial line of a crashing guest is not lost.
// Buffer is safe for concurrent use.
type Buffer struct {
	w         io.Writer
	flushSize int
	idle      time.Duration
	maxBlock  time.Duration

	mu      sync.Mutex
	idleCh  *sync.Cond // signalled when the writer goroutine finishes a write
	buf     []byte     // bytes waiting for the writer goroutine
	spare   []byte     // the writer goroutine's buffer, in use while writing
	writing bool
	closed  bool
	stalled bool // a Write timed out waiting for room; drop until a write completes
	armed   bool // the idle timer is running
	idleDue bool // the idle timer fired: write a partial line too
	midLine bool // the last byte written was not a newline
	dropped uint64

	kick  chan struct{} // to the writer goroutine: there is something to write
	room  chan struct{} // from the writer goroutine: a write completed
	done  chan struct{} // closed by Close
	ended chan struct{} // closed when the writer goroutine returns
	timer *time.Timer
}

// NewBuffer returns a Buffer writing to w, and starts its goroutine; Close
// ends it.
func NewBuffer(w io.Writer, o BufferOptions) *Buffer {
	if o.Size <= 0 {
		o.Size = DefaultBufferSize
	}
	if o.FlushSize <= 0 || o.FlushSize > o.Size {
		o.FlushSize = min(DefaultFlushSize, o.Size)
	}
	if o.Idle <= 0 {
		o.Idle = DefaultIdle
	}
	if o.MaxBlock <= 0 {
		o.MaxBlock = DefaultMaxBlock
	}
	b := &Buffer{
		w: w, flushSize: o.FlushSize, idle: o.Idle, maxBlock: o.MaxBlock,
		buf:   make([]byte, 0, o.Size),
		spare: make([]byte, 0, o.Size),
		kick:  make(chan struct{}, 1),
		room:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		ended: make(chan struct{}),
	}
	b.idleCh = sync.NewCond(&b.mu)
	b.timer = time.AfterFunc(time.Hour, b.idleFired)
	b.timer.Stop()
	go b.run()
	return b
}

// Write takes p into the buffer; it always reports len(p), as a serial
// line cannot refuse bytes. It does not allocate unless the reader stalls.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if b.closed {
		// After Close (the VMM is exiting): write through.
		_, _ = b.w.Write(p)
		return n, nil
	}
	var deadline *time.Timer // only when the reader is a buffer behind
	for len(p) > 0 {
		room := cap(b.buf) - len(b.buf)
		if room == 0 {
			b.signal()
			if b.stalled {
				break
			}
			if deadline == nil {
				deadline = time.NewTimer(b.maxBlock)
			}
			b.mu.Unlock()
			select {
			case <-b.room:
			case <-deadline.C:
				b.mu.Lock()
				b.stalled = true
				continue
			}
			b.mu.Lock()
			continue
		}
		k := min(room, len(p))
		chunk := p[:k]
		p = p[k:]
		b.buf = append(b.buf, chunk...)
		switch {
		case bytes.IndexByte(chunk, '\n') >= 0 || len(b.buf) >= b.flushSize:
			b.signal()
		case !b.armed:
			b.armed = true
			b.timer.Reset(b.idle)
		}
	}
	if deadline != nil {
		deadline.Stop()
	}
	b.dropped += uint64(len(p))
	return n, nil
}

// idleFired is the idle timer: the partial line held has waited long
// enough (a prompt), write it.
func (b *Buffer) idleFired() {
	b.mu.Lock()
	b.idleDue = true
	b.mu.Unlock()
	b.signal()
}

// signal wakes the writer goroutine; it never blocks.
func (b *Buffer) signal() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it swaps the buffers and writes outside the
// mutex, so Write only waits for a full buffer, never for the reader.
func (b *Buffer) run() {
	defer close(b.ended)
	for {
		select {
		case <-b.kick:
		case <-b.done:
			return
		}
		b.mu.Lock()
		if b.writing || len(b.buf) == 0 { // Flush took it
			b.mu.Unlock()
			continue
		}
		data := b.buf
		b.buf, b.spare = b.spare[:0], data
		b.writing, b.armed = true, false
		b.timer.Stop()
		// Whole lines only, unless the idle timer fired or a long line
		// fills FlushSize: the start of the next line waits for the
		// rest of it (or for Idle), so the reader gets whole lines and
		// the VMM's own notes can go between them (BetweenLines).
		if i := bytes.LastIndexByte(data, '\n'); !b.idleDue && len(data) < b.flushSize && i >= 0 && i < len(data)-1 {
			b.buf = append(b.buf, data[i+1:]...)
			data = data[:i+1]
			b.armed = true
			b.timer.Reset(b.idle)
		}
		b.idleDue = false
		b.mu.Unlock()

		_, _ = b.w.Write(data)

		b.mu.Lock()
		b.midLine = data[len(data)-1] != '\n'
		b.writing, b.stalled = false, false
		b.idleCh.Broadcast()
		b.mu.Unlock()
		b.freed()
	}
}

// freed tells a Write waiting for room that a buffer was written; it
// never blocks.
func (b *Buffer) freed() {
	select {
	case b.room <- struct{}{}:
	default:
	}
}

// Flush writes everything held, after any write in progress, and returns
// when it is written. It blocks on the reader: exit paths, not vCPUs, call
// it.
func (b *Buffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *Buffer) flushLocked() error {
	for b.writing {
		b.idleCh.Wait()
	}
	var err error
	if len(b.buf) > 0 {
		_, err = b.w.Write(b.buf)
		b.midLine = b.buf[len(b.buf)-1] != '\n'
		b.buf = b.buf[:0]
		b.stalled = false
		b.freed()
	}
	b.armed = false
	b.timer.Stop()
	return err
}

// EndLine is Flush, then a newline if the guest's output ended in the
// middle of a line: at the machine's end, the VMM's own report of it
// (a crash mid-line) starts a line of its own.
func (b *Buffer) EndLine() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.flushLocked(); err != nil {
		return err
	}
	if !b.midLine {
		return nil
	}
	b.midLine = false
	_, err := b.w.Write([]byte{'\n'})
	return err
}

// Close flushes and ends the writer goroutine; later Writes go straight
// to the underlying writer. It is idempotent.
func (b *Buffer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	err := b.flushLocked()
	b.closed = true
	close(b.done)
	b.mu.Unlock()
	<-b.ended
	return err
}

// BetweenLines runs note, which writes the VMM's own lines to the same
// reader by another way (stderr into the pipe stdout is), when what was
// written of the guest's output ends a line, so that a note never lands
// in the middle of one of the guest's lines (a guest printing a long line
// under nested emulation can take longer than Idle, whose first part is
// then written alone). It waits up to wait for the guest to end a line it
// has begun, then ends it itself and runs note: a prompt may never end.
// Bytes the guest writes meanwhile are held and follow the note.
func (b *Buffer) BetweenLines(wait time.Duration, note func()) {
	deadline := time.Now().Add(wait)
	b.mu.Lock()
	defer b.mu.Unlock()
	for (b.writing || b.midLine) && !b.closed && time.Now().Before(deadline) {
		b.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		b.mu.Lock()
	}
	// A line that never ended (a login prompt) is ended here: the note
	// must start a line to be read as the VMM's, not the guest's.
	if b.midLine && !b.writing && !b.closed {
		b.w.Write([]byte{'\n'})
		b.midLine = false
	}
	note()
}

// Dropped reports how many bytes were lost because the reader stayed a
// whole buffer behind for longer than MaxBlock.
func (b *Buffer) Dropped() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}
