package main

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// diskChurn writes vda as a busy database would, until the VM is killed:
// workers write 4-64 KiB at random places across the whole disk (on a
// new qcow2 clone, nearly every write allocates a cluster), now and then
// discard a range, and every round ends with a flush. It says each round
// that is flushed, so that a test can kill the VMM in the middle of the
// next one.
func diskChurn(seed uint64) error {
	const workers, perRound = 4, 32
	f, size, err := openDirect()
	if err != nil {
		return err
	}
	defer f.Close()
	// Another sequence at every boot: a restarted VM writes elsewhere.
	seed ^= uint64(time.Now().UnixNano())
	for round := 1; ; round++ {
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[w] = churnWorker(f.Fd(), size, rand.New(rand.NewPCG(seed, uint64(round*workers+w))), perRound)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		fmt.Printf("guest: churn round %d flushed\n", round)
	}
}

func churnWorker(fd uintptr, size int64, rng *rand.Rand, n int) error {
	const maxLen = 64 << 10
	buf, err := alignedBuf(maxLen)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for range n {
		blocks := size / 4096
		off := rng.Int64N(blocks) * 4096
		l := min(int64(1+rng.IntN(maxLen/4096))*4096, size-off)
		if rng.IntN(16) == 0 {
			// BLKDISCARD takes {offset, length}.
			r := [2]uint64{uint64(off), uint64(l)}
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKDISCARD, uintptr(unsafe.Pointer(&r))); e != 0 {
				return fmt.Errorf("discard %d+%d: %w", off, l, e)
			}
			continue
		}
		stamp := rng.Uint64()
		for i := 0; i < int(l); i += 8 {
			*(*uint64)(unsafe.Pointer(&buf[i])) = stamp + uint64(i)
		}
		if _, err := unix.Pwrite(int(fd), buf[:l], off); err != nil {
			return fmt.Errorf("write %d+%d: %w", off, l, err)
		}
	}
	return nil
}
