package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// kmsgAction prints the kernel's log as it stands, every record with the
// kernel's own timestamp ("guest: kmsg <seconds> <text>"), for a boot
// timeline: a guest booted `quiet` (so that the log costs no console exits
// while it boots) with `initcall_debug` says where its kernel's time went.
// The log buffer must hold the boot (log_buf_len= on the command line).
func kmsgAction(uint64) error {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kmsg: %w", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 8192)
	out := bytes.NewBuffer(nil)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case err == unix.EAGAIN:
			os.Stdout.Write(out.Bytes())
			return nil
		case err == unix.EPIPE:
			continue // records overwritten before we read them
		case err != nil:
			return fmt.Errorf("read /dev/kmsg: %w", err)
		}
		// "prio,seq,usec,flags;text\n" (Documentation/ABI/testing/dev-kmsg)
		rec := string(buf[:n])
		head, text, ok := strings.Cut(rec, ";")
		if !ok {
			continue
		}
		f := strings.Split(head, ",")
		if len(f) < 3 {
			continue
		}
		text, _, _ = strings.Cut(text, "\n")
		var usec uint64
		fmt.Sscan(f[2], &usec)
		fmt.Fprintf(out, "guest: kmsg %d.%06d %s\n", usec/1e6, usec%1e6, text)
	}
}
