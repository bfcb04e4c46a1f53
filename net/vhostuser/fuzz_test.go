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
