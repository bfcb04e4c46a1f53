package block

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// inlineIovecs bounds the buffers of a request Inline takes, so that the
// iovec array can live on the stack (4 KiB of it); longer scatter lists go
// the asynchronous way. 256 holds a 1 MiB request of 4 KiB guest pages,
// what Linux sends for sequential I/O: with the earlier bound of 8 every
// such request went to io_uring (on tmpfs an io-wq thread) and its reaper,
// two thread wake-ups for the same copy, and sequential reads ran at 0.68
// of QEMU's rate.
const inlineIovecs = 256

// Inline implements Backend for both implementations.
//
// Why: a guest's small random read of a cached image is a memory copy of a
// few microseconds, while handing it to a pool goroutine or to io_uring (on
// tmpfs, whose reads io_uring punts to an io-wq kernel thread) and back
// costs two or three thread wake-ups, each tens of microseconds when the
// VMM itself runs nested under an emulator. QEMU's linux-aio and io_uring
// paths do the same for reads (RWF_NOWAIT first). On tmpfs and ramfs the
// page cache is the file: there is no device to wait for, so plain
// preadv/pwritev run inline; elsewhere RWF_NOWAIT makes the kernel answer
// EAGAIN instead of starting device I/O, and the request falls back.
func (d *disk) Inline(r *Request) (Completion, bool) {
	if !d.inline || (r.Op != Read && r.Op != Write) || len(r.Bufs) > inlineIovecs || d.closed.Load() {
		return Completion{}, false
	}
	var flags uintptr
	if !d.memory {
		if (r.Op == Read && d.noWaitRead.Load()) || (r.Op == Write && d.noWaitWrite.Load()) {
			return Completion{}, false
		}
		flags = unix.RWF_NOWAIT
	}
	n, _, err := d.check(r)
	if err != nil {
		return Completion{}, false // Submit reports it, with its completion semantics
	}
	var iov [inlineIovecs]unix.Iovec
	cnt := 0
	for _, b := range r.Bufs {
		if len(b) == 0 {
			continue
		}
		iov[cnt].Base = &b[0]
		iov[cnt].SetLen(len(b))
		cnt++
	}
	var done int64
	for done < n {
		got, errno := rw2(r.Op, d.fd, iov[:cnt], r.Offset+done, flags)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EOPNOTSUPP && flags != 0:
			// This file system takes no RWF_NOWAIT for this
			// operation (ext4's buffered writes, tmpfs before 6.6
			// when not recognised): stop asking.
			if r.Op == Read {
				d.noWaitRead.Store(true)
			} else {
				d.noWaitWrite.Store(true)
			}
			return Completion{}, false
		case errno != 0:
			// EAGAIN (not cached) or a real error: the asynchronous
			// path retries and reports.
			return Completion{}, false
		case got == 0 && r.Op == Read:
			zeroFrom(r.Bufs, done) // past the end of the file: zeros
			done = n
			continue
		case got == 0:
			return Completion{}, false
		case int64(got) < n-done && flags != 0:
			// Partly cached: the rest would wait for the device.
			return Completion{}, false
		}
		done += int64(got)
		cnt = advance(iov[:cnt], got)
	}
	return Completion{Cookie: r.Cookie, N: n}, true
}

// rw2 is preadv2/pwritev2 without allocating; as with rw, the offset goes in
// the low word.
//
// A read is a raw system call, invisible to the Go scheduler, because it
// never waits: RWF_NOWAIT answers EAGAIN instead of starting device I/O,
// on tmpfs the page cache is the file, and a read allocates no page cache
// (it may fault guest RAM in, as a vCPU's KVM_RUN, raw too, does). It is
// a copy, up to 1 MiB for a sequential request. Entered as a plain system
// call, a copy longer than 20 µs (a 1 MiB one takes milliseconds under the
// TCG test bed) had the runtime's monitor hand the caller's P to another
// thread (a futex wake) and then poll every 20 µs for the next millisecond:
// per 1 MiB read 1 futex call and 5.7 of the monitor's nanosleeps, whose
// timer interrupts also interrupt a running vCPU (2026-12-07, the disk
// benchmark's seqread). The caller keeps its P for the copy; a collection
// waits for it to end. A write stays a plain call: it allocates page cache,
// and past the VM cgroup's memory.high the kernel makes the writer sleep
// (up to 2 s) before it returns, which must not hold a P, nor a collection,
// for that long.
func rw2(op Op, fd int, iov []unix.Iovec, off int64, flags uintptr) (int, unix.Errno) {
	var base unsafe.Pointer
	if len(iov) > 0 {
		base = unsafe.Pointer(&iov[0])
	}
	if op == Write {
		n, _, errno := unix.Syscall6(unix.SYS_PWRITEV2, uintptr(fd), uintptr(base), uintptr(len(iov)), uintptr(off), 0, flags)
		return int(n), errno
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(base), uintptr(len(iov)), uintptr(off), 0, flags)
	return int(n), errno
}

// advance drops the first n bytes from iov in place and returns how many
// iovecs remain.
func advance(iov []unix.Iovec, n int) int {
	i := 0
	for i < len(iov) && n >= int(iov[i].Len) {
		n -= int(iov[i].Len)
		i++
	}
	if i < len(iov) && n > 0 {
		iov[i].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[i].Base), n))
		iov[i].SetLen(int(iov[i].Len) - n)
	}
	return copy(iov, iov[i:])
}

// zeroFrom clears the bytes of bufs from offset skip on.
func zeroFrom(bufs [][]byte, skip int64) {
	for _, b := range bufs {
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		clear(b[skip:])
		skip = 0
	}
}
