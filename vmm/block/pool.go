package block

import (
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pool serves requests with a fixed set of goroutines making synchronous
// preadv/pwritev/fdatasync/fallocate calls. It works wherever io_uring is
// unavailable (disabled by sysctl, refused by seccomp, old kernels).
type Pool struct {
	*disk
	kind string
	work chan int32 // slot indices; capacity = depth, so sends never block
	wg   sync.WaitGroup
}

// NewPool serves f with o.Workers goroutines.
func NewPool(f *os.File, o Options) (*Pool, error) {
	d, err := newDisk(f, o)
	if err != nil {
		return nil, err
	}
	p := &Pool{disk: d, kind: "pool", work: make(chan int32, len(d.slots))}
	n := o.Workers
	if n <= 0 {
		n = defaultWorkers
	}
	p.wg.Add(n)
	for range n {
		go p.worker()
	}
	return p, nil
}

// Kind implements Backend.
func (p *Pool) Kind() string { return p.kind }

// Describe says how many requests the pool holds, for a dump of a stalled
// machine.
func (p *Pool) Describe() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return fmt.Sprintf("%s: %d of %d slots in flight, %d waiting for a worker", p.kind, len(p.slots)-len(p.free), len(p.slots), len(p.work))
}

// Submit implements Backend.
func (p *Pool) Submit(r Request) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _, err := p.take(&r)
	if err != nil {
		return err
	}
	p.work <- i // never blocks: at most len(slots) indices are outstanding
	return nil
}

// Commit implements Backend. The pool starts every request as it is
// submitted: its workers are already waiting, and there is no system call
// to save by batching.
func (p *Pool) Commit() {}

func (p *Pool) worker() {
	defer p.wg.Done()
	for {
		select {
		case i := <-p.work:
			err := p.run(&p.slots[i])
			p.mu.Lock()
			c, to := p.release(i, err)
			p.mu.Unlock()
			p.deliver(c, to)
		case <-p.stop:
			return
		}
	}
}

// run performs one request synchronously.
func (p *Pool) run(s *slot) error {
	switch s.req.Op {
	case Read, Write:
		for s.done < s.len {
			s.fillIov()
			n, errno := rw(s.req.Op, p.fd, s.iov, s.req.Offset+s.done)
			switch {
			case errno == unix.EINTR || errno == unix.EAGAIN:
				continue
			case errno != 0:
				return opError(s.req.Op, errno)
			case n == 0 && s.req.Op == Read:
				s.zeroRest() // end of file: the rest of the disk reads as zeros
			case n == 0:
				return ErrShortWrite
			}
			s.done += int64(n)
		}
		return nil
	case Flush:
		if err := unix.Fdatasync(p.fd); err != nil {
			return opError(Flush, errnoOf(err))
		}
		return nil
	default: // Discard, WriteZeroes
		mode := fallocMode(s.req.Op)
		for {
			err := unix.Fallocate(p.fd, mode, s.req.Offset, s.req.Length)
			if err == nil {
				return nil
			}
			errno := errnoOf(err)
			if errno == unix.EINTR {
				continue
			}
			if errno == unix.EOPNOTSUPP && fallocFallback(mode) != 0 {
				mode = fallocFallback(mode)
				continue
			}
			return opError(s.req.Op, errno)
		}
	}
}

// rw is preadv/pwritev on the slot's iovecs without allocating. The offset
// goes in the low word; the high word is 0 on 64-bit kernels (pos_from_hilo).
func rw(op Op, fd int, iov []unix.Iovec, off int64) (int, unix.Errno) {
	nr := uintptr(unix.SYS_PREADV)
	if op == Write {
		nr = unix.SYS_PWRITEV
	}
	var base unsafe.Pointer
	if len(iov) > 0 {
		base = unsafe.Pointer(&iov[0])
	}
	n, _, errno := unix.Syscall6(nr, uintptr(fd), uintptr(base), uintptr(len(iov)), uintptr(off), 0, 0)
	return int(n), errno
}

// Close implements Backend: workers finish the operation they are running,
// queued requests are dropped.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	p.closed.Store(true)
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	// Requests still queued never ran: their Completers are owed an end.
	for {
		select {
		case i := <-p.work:
			p.mu.Lock()
			c, to := p.release(i, ErrClosed)
			p.mu.Unlock()
			if to != nil {
				to.Complete(c)
			}
			continue
		default:
		}
		break
	}
	close(p.out)
	return nil
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// errnoOf extracts the errno of a failed x/sys call (EIO if there is none).
func errnoOf(err error) unix.Errno {
	if errno, ok := err.(unix.Errno); ok {
		return errno
	}
	return unix.EIO
}
