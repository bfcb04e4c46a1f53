package qcow2

import (
	"fmt"
	"sync"

	"github.com/hyperroot/hyperroot/vmm/block"
)

// HostLimit is the largest host offset an image's tables may hold: the
// disk size to give the block backend that serves the image file (its
// block.Options.Size), since the file grows while it is served.
const HostLimit = maxHostOffset

// Backend serves an Image to a virtio-blk device as a block.Backend.
//
// A read or write that falls in clusters the image owns and may write in
// place (most requests once a guest has written its disk) is translated
// to one request on the image file's own backend: the same io_uring or
// thread pool, the same inline page-cache path, with no allocation and no
// extra goroutine. Everything else (reads of the backing file, zero or
// compressed clusters; first writes, which allocate; discards) takes the
// slow path: goroutines that run the Image's synchronous methods, two for
// reads and one for everything that changes tables, which keeps metadata
// updates in order without locks across I/O.
type Backend struct {
	im   *Image
	file block.Backend // the image file, offsets are host offsets

	mu      sync.Mutex
	closing bool
	free    []*job // unused jobs; its length bounds the slow path's queue
	reads   chan *job
	writes  chan *job

	out  chan block.Completion
	stop chan struct{}
	wg   sync.WaitGroup
}

// job is a slow-path request, with copies of what Submit's caller may
// reuse once it returns.
type job struct {
	req  block.Request
	bufs [][]byte
}

// maxGather bounds the buffer a slow-path request is gathered into, so a
// first write of a whole cluster allocates it without reading what it
// replaces; larger requests go buffer by buffer.
const maxGather = 4 << 20

// slowReaders is how many goroutines serve slow-path reads: a clone
// booting reads most of its base image through them.
const slowReaders = 2

// NewBackend serves im, whose file file serves (opened with block.Options
// Size HostLimit). depth bounds slow-path requests queued at once.
func NewBackend(im *Image, file block.Backend, depth int) (*Backend, error) {
	if a := file.Alignment(); a.Offset > 1 {
		return nil, fmt.Errorf("qcow2: the image file is opened with O_DIRECT, which qcow2 images do not support yet")
	}
	if depth <= 0 {
		depth = 256
	}
	b := &Backend{
		im: im, file: file,
		reads:  make(chan *job, depth),
		writes: make(chan *job, depth),
		out:    make(chan block.Completion, depth),
		stop:   make(chan struct{}),
	}
	b.free = make([]*job, depth)
	for i := range b.free {
		b.free[i] = &job{}
	}
	b.wg.Add(slowReaders + 1)
	for range slowReaders {
		go b.serve(b.reads)
	}
	go b.serve(b.writes)
	return b, nil
}

// Submit implements block.Backend.
func (b *Backend) Submit(r block.Request) error {
	n, err := b.check(&r)
	if err != nil {
		return err
	}
	if r.Done == nil {
		r.Done = b
	}
	switch r.Op {
	case block.Flush:
		// Every completed write is in the file already: data by the
		// file's backend, tables by the slow path's pwrites.
		return b.file.Submit(r)
	case block.Read, block.Write:
		if host, ok := b.fast(r.Op, r.Offset, n); ok {
			r.Offset = host
			return b.file.Submit(r)
		}
	}
	return b.queue(r)
}

// check validates r against the virtual disk and returns its length.
func (b *Backend) check(r *block.Request) (int64, error) {
	var n int64
	switch r.Op {
	case block.Read, block.Write:
		if r.Op == block.Write && b.im.ro {
			return 0, block.ErrReadOnly
		}
		if len(r.Bufs) > 1024 {
			return 0, fmt.Errorf("%w: %d buffers", block.ErrInvalid, len(r.Bufs))
		}
		for _, p := range r.Bufs {
			n += int64(len(p))
		}
	case block.Discard, block.WriteZeroes:
		if b.im.ro {
			return 0, block.ErrReadOnly
		}
		if r.Length <= 0 {
			return 0, fmt.Errorf("%w: %v of length %d", block.ErrInvalid, r.Op, r.Length)
		}
		n = r.Length
	case block.Flush:
		return 0, nil
	default:
		return 0, fmt.Errorf("%w: %v", block.ErrInvalid, r.Op)
	}
	if size := b.im.Size(); r.Offset < 0 || n > size || r.Offset > size-n {
		return 0, block.ErrOutOfRange
	}
	return n, nil
}

// fast returns the host offset of n bytes at off when they are one run
// of data clusters the request may use in place.
func (b *Backend) fast(op block.Op, off, n int64) (int64, bool) {
	if n == 0 {
		return 0, false
	}
	b.im.mu.Lock()
	x, err := b.im.lookup(off, n)
	b.im.mu.Unlock()
	// Only clusters the image owns alone: a shared one is copied on
	// write by the slow path, which a read in flight must not race.
	if err != nil || x.kind != kData || x.n != n || !x.copied {
		return 0, false
	}
	return x.host, true
}

// queue hands r to the slow path.
func (b *Backend) queue(r block.Request) error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return block.ErrClosed
	}
	if len(b.free) == 0 {
		b.mu.Unlock()
		return block.ErrBusy
	}
	j := b.free[len(b.free)-1]
	b.free = b.free[:len(b.free)-1]
	j.req = r
	j.bufs = append(j.bufs[:0], r.Bufs...)
	j.req.Bufs = nil
	if r.Op == block.Read {
		b.reads <- j // never blocks: the channels hold every job
	} else {
		b.writes <- j
	}
	b.mu.Unlock()
	return nil
}

// serve runs slow-path jobs until the channel closes; after Close began,
// jobs complete with ErrClosed.
func (b *Backend) serve(jobs chan *job) {
	defer b.wg.Done()
	var gather []byte
	for j := range jobs {
		r := &j.req
		c := block.Completion{Cookie: r.Cookie}
		b.mu.Lock()
		closing := b.closing
		b.mu.Unlock()
		switch {
		case closing:
			c.Err = block.ErrClosed
		case r.Op == block.Read || r.Op == block.Write:
			c.N, c.Err = b.transfer(r.Op, j.bufs, r.Offset, &gather)
		default:
			c.Err = b.im.Zero(r.Offset, r.Length, false)
			if c.Err == nil {
				c.N = r.Length
			}
		}
		if c.Err != nil && c.Err != block.ErrClosed {
			c.Err = fmt.Errorf("qcow2 %v: %w", r.Op, c.Err)
		}
		done := r.Done
		clear(j.bufs)
		j.req = block.Request{}
		b.mu.Lock()
		b.free = append(b.free, j)
		b.mu.Unlock()
		done.Complete(c)
	}
}

// transfer reads or writes bufs at off through the Image, gathered into
// one buffer when small enough.
func (b *Backend) transfer(op block.Op, bufs [][]byte, off int64, gather *[]byte) (int64, error) {
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	if n <= maxGather && len(bufs) > 1 {
		if int64(cap(*gather)) < n {
			*gather = make([]byte, n)
		}
		g := (*gather)[:n]
		if op == block.Write {
			at := 0
			for _, p := range bufs {
				at += copy(g[at:], p)
			}
			_, err := b.im.WriteAt(g, off)
			return n, err
		}
		if _, err := b.im.ReadAt(g, off); err != nil {
			return 0, err
		}
		for _, p := range bufs {
			g = g[copy(p, g):]
		}
		return n, nil
	}
	for _, p := range bufs {
		var err error
		if op == block.Write {
			_, err = b.im.WriteAt(p, off)
		} else {
			_, err = b.im.ReadAt(p, off)
		}
		if err != nil {
			return 0, err
		}
		off += int64(len(p))
	}
	return n, nil
}

// Complete delivers the completions of requests submitted without Done.
func (b *Backend) Complete(c block.Completion) {
	select {
	case b.out <- c:
	case <-b.stop:
	}
}

// Commit implements block.Backend.
func (b *Backend) Commit() { b.file.Commit() }

// Inline implements block.Backend: a request the fast path takes may
// complete on the caller's goroutine as a raw file's would.
func (b *Backend) Inline(r *block.Request) (block.Completion, bool) {
	if r.Op != block.Read && r.Op != block.Write {
		return block.Completion{}, false
	}
	n, err := b.check(r)
	if err != nil {
		return block.Completion{}, false
	}
	host, ok := b.fast(r.Op, r.Offset, n)
	if !ok {
		return block.Completion{}, false
	}
	off := r.Offset
	r.Offset = host
	c, ok := b.file.Inline(r)
	r.Offset = off
	return c, ok
}

// Completions implements block.Backend.
func (b *Backend) Completions() <-chan block.Completion { return b.out }

// Size implements block.Backend: the virtual disk's size.
func (b *Backend) Size() int64 { return b.im.Size() }

// ReadOnly implements block.Backend.
func (b *Backend) ReadOnly() bool { return b.im.ro }

// Alignment implements block.Backend.
func (b *Backend) Alignment() block.Alignment { return block.Alignment{} }

// Kind implements block.Backend; it says how many leaked clusters the
// image's Open gave back, if any: a sign its last writer was killed.
func (b *Backend) Kind() string {
	if n := b.im.Reclaimed; n > 0 {
		return fmt.Sprintf("qcow2 on %s, %d leaked clusters given back", b.file.Kind(), n)
	}
	return "qcow2 on " + b.file.Kind()
}

// Describe implements block.Describer: the slow path's jobs in use and
// queued, then the image file's backend.
func (b *Backend) Describe() string {
	b.mu.Lock()
	s := fmt.Sprintf("qcow2: %d of %d slow-path jobs in use (%d reads, %d writes queued)", cap(b.free)-len(b.free), cap(b.free), len(b.reads), len(b.writes))
	b.mu.Unlock()
	if d, ok := b.file.(block.Describer); ok {
		s += "; " + d.Describe()
	}
	return s
}

// Close implements block.Backend: queued slow-path requests complete with
// ErrClosed, then the file's backend closes. It does not close files.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return nil
	}
	b.closing = true
	close(b.reads)
	close(b.writes)
	close(b.stop) // completions nobody receives any more are dropped
	b.mu.Unlock()
	b.wg.Wait()
	err := b.file.Close()
	close(b.out)
	return err
}
