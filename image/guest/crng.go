package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// reportCRNG says how long after the guest's modules were loaded (virtio-rng
// among them) the kernel's crng became ready: "guest: crng ready
// after_modules_ms=<n>", or "guest: crng not ready after 5s". It polls
// getrandom with GRND_NONBLOCK, which fails with EAGAIN until the crng is
// seeded and, unlike a blocking call, does not make the kernel gather
// jitter entropy itself: only entropy credited by others (the hwrng) counts.
func reportCRNG(since time.Time) {
	var b [16]byte
	for time.Since(since) < 5*time.Second {
		if _, err := unix.Getrandom(b[:], unix.GRND_NONBLOCK); err == nil {
			fmt.Printf("guest: crng ready after_modules_ms=%d\n", time.Since(since).Milliseconds())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("guest: crng not ready after 5s")
}
