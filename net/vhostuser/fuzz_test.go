package vhostuser

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fuzzRegions map the test memfd at fixed frontend addresses, so that
// fuzzed SET_VRING_ADDR payloads can hit them.
func fuzzRegions(g *guestRAM) []Region {
	r := g.regions()
	r[0].UserAddr, r[1].UserAddr = 0x7f0000000000, 0x7f0000100000
	return r
}

// FuzzServe streams arbitrary bytes into a backend that already has guest
// memory and ring 0's eventfds: whatever the frontend sends, Serve must
// neither panic nor hang, and must stop every ring it started once the
// connection ends.
func FuzzServe(f *testing.F) {
	seeds := seedMessages()
	f.Add(bytes.Join(seeds, nil))
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		g := newGuestRAM(t)
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := FileConn(pair[0])
		unix.Close(pair[0])
		if err != nil {
			t.Fatal(err)
		}
		cc, err := FileConn(pair[1])
		unix.Close(pair[1])
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		dev := newEcho()
		done := make(chan error, 1)
		go func() { done <- Serve(sc, dev) }()
		drained := make(chan struct{})
		go func() { io.Copy(io.Discard, cc); close(drained) }()

		kick, _ := unix.Eventfd(1, unix.EFD_CLOEXEC)
		call, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
		defer unix.Close(kick)
		defer unix.Close(call)
		c := newConn(cc)
		regions := fuzzRegions(g)
		for _, m := range []struct {
			req Request
			p   []byte
			fds []int
		}{
			{SetProtocolFeatures, appendU64(nil, ProtocolReplyAck|ProtocolMQ), nil},
			{SetMemTable, appendMemTable(nil, regions), []int{g.fd, g.fd}},
			{SetVringKick, appendU64(nil, 0), []int{kick}},
			{SetVringCall, appendU64(nil, 0), []int{call}},
		} {
			if err := c.send(m.req, 0, m.p, m.fds); err != nil {
				t.Fatal(err)
			}
		}
		cc.Write(stream)
		cc.CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve still running 10s after the frontend stopped sending")
		}
		<-drained
		if n := dev.running(); n != 0 {
			t.Fatalf("%d rings still running after Serve returned", n)
		}
	})
}

// FuzzMap maps a real memfd of a fuzzed size (odd ones included) with
// fuzzed seals through one or two fuzzed regions. Map must refuse any
// file that could shrink under the mapping and any region beyond the
// file; whatever it accepts must be safe to touch everywhere (a SIGBUS
// here kills the fuzzer, as it would the switch), must stay so when the
// frontend tries to shrink the file, and Slice and Translate must agree
// with the regions.
func FuzzMap(f *testing.F) {
	f.Add(uint32(1<<16), uint8(7), uint64(0), uint32(1<<16), uint32(0), uint64(0x7f0000000000), uint64(0x100), false)
	f.Add(uint32(1<<16+12), uint8(2), uint64(0x1000), uint32(0x2000), uint32(4), uint64(0x7f0000000004), uint64(0x1ffc), true)
	f.Add(uint32(4097), uint8(0), uint64(0), uint32(4096), uint32(0), uint64(0x10000), uint64(0), false)
	f.Add(uint32(8192), uint8(4), uint64(0), uint32(8192), uint32(0), uint64(0x10000), uint64(8191), false)
	f.Fuzz(func(t *testing.T, fileSize uint32, seals uint8, gpa uint64, size, off uint32, ua, probe uint64, two bool) {
		fileSize %= 1 << 20
		fd, err := unix.MemfdCreate("fuzz-map", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Ftruncate(fd, int64(fileSize)); err != nil {
			t.Fatal(err)
		}
		want := 0
		for i, s := range []int{unix.F_SEAL_SHRINK, unix.F_SEAL_GROW, unix.F_SEAL_SEAL} {
			if seals&(1<<i) != 0 {
				want |= s
			}
		}
		if want != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, want); err != nil {
				t.Fatal(err)
			}
		}
		regions := []Region{{GuestAddr: gpa, Size: uint64(size), UserAddr: ua, Offset: uint64(off), Fd: fd}}
		if two {
			// A second region right after the first in both spaces,
			// over the rest of the file.
			r := regions[0]
			rest := uint64(fileSize) - min(uint64(fileSize), r.Offset+r.Size)
			regions = append(regions, Region{GuestAddr: r.GuestAddr + r.Size + 0x1000, Size: rest &^ 3,
				UserAddr: r.UserAddr + r.Size + 0x1000, Offset: r.Offset + r.Size, Fd: fd})
		}
		m, err := Map(regions)
		if err != nil {
			return
		}
		defer m.Close()
		if want&unix.F_SEAL_SHRINK == 0 {
			t.Fatalf("mapped a memfd that can shrink (seals %#x)", want)
		}
		for _, r := range regions {
			if r.Offset+r.Size > uint64(fileSize) {
				t.Fatalf("mapped region %+v beyond the %d-byte file", r, fileSize)
			}
		}
		// The frontend tries to pull the memory away.
		if err := unix.Ftruncate(fd, 0); err == nil {
			t.Fatal("a sealed memfd shrank")
		}
		for _, r := range regions {
			b, err := m.Slice(r.GuestAddr, r.Size)
			if err != nil || uint64(len(b)) != r.Size {
				t.Fatalf("Slice of the whole region %+v: %d bytes, %v", r, len(b), err)
			}
			b[0]++
			b[len(b)-1]++
			p := probe % r.Size
			if gpa, err := m.Translate(r.UserAddr + p); err != nil || gpa != r.GuestAddr+p {
				t.Fatalf("Translate(%#x) = %#x, %v; want %#x", r.UserAddr+p, gpa, err, r.GuestAddr+p)
			}
			if v, err := m.Slice(r.GuestAddr+p, 1); err != nil || &v[0] != &b[p] {
				t.Fatalf("Slice(%#x, 1) is not the region's byte %d: %v", r.GuestAddr+p, p, err)
			}
			if _, err := m.Slice(r.GuestAddr+p, r.Size-p+1); err == nil {
				t.Fatalf("Slice past the end of region %+v succeeded", r)
			}
		}
	})
}
