package vhostuser

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// cfgDev is an echo device with a config space and four queues.
type cfgDev struct {
	*echo
	space [8]byte
}

func (d *cfgDev) Queues() int { return 4 }

func (d *cfgDev) ReadConfig(off uint64, data []byte) {
	if off < uint64(len(d.space)) {
		copy(data, d.space[off:])
	}
}

func (d *cfgDev) WriteConfig(off uint64, data []byte) {
	if off < uint64(len(d.space)) {
		copy(d.space[off:], data)
	}
}

func TestFrontendConfigAndQueues(t *testing.T) {
	dev := &cfgDev{echo: newEcho(), space: [8]byte{0x52, 0x54, 0, 1, 2, 3, 1, 0}}
	s := newServer(t, dev)
	f, err := Dial(s.path)
	must(t, err)
	defer f.Close()
	proto, err := f.GetProtocolFeatures()
	must(t, err)
	if proto&ProtocolConfig == 0 {
		t.Fatalf("protocol features %#x lack CONFIG for a device with a config space", proto)
	}
	must(t, f.SetProtocolFeatures(ProtocolReplyAck|ProtocolConfig|ProtocolMQ))
	if n, err := f.GetQueueNum(); err != nil || n != 4 {
		t.Fatalf("GetQueueNum = %d, %v; want 4", n, err)
	}
	mac := make([]byte, 6)
	must(t, f.GetConfig(0, mac))
	if !bytes.Equal(mac, dev.space[:6]) {
		t.Fatalf("GetConfig = % x, want % x", mac, dev.space[:6])
	}
	must(t, f.SetConfig(6, []byte{0xaa}))
	got := make([]byte, 4)
	must(t, f.GetConfig(6, got)) // runs past the end: zeros
	if !bytes.Equal(got, []byte{0xaa, 0, 0, 0}) {
		t.Fatalf("GetConfig past SetConfig = % x", got)
	}
	// Ring 3 exists on this device, ring 4 does not.
	must(t, f.SetVringNum(3, 64))
	if err := f.SetVringNum(4, 64); !errors.Is(err, ErrRefused) {
		t.Fatalf("SetVringNum(4) = %v, want ErrRefused", err)
	}
}

// TestFrontendRefusals: with REPLY_ACK, the backend's refusals reach the
// VMM as errors from the very call that caused them.
func TestFrontendRefusals(t *testing.T) {
	g := newGuestRAM(t)
	dev := newEcho()
	s := newServer(t, dev)
	f, err := Dial(s.path)
	must(t, err)
	defer f.Close()
	must(t, f.SetProtocolFeatures(ProtocolReplyAck))
	bad := g.regions()
	bad[1].GuestAddr = 0x1000 // overlaps region 0
	tests := []struct {
		name string
		call func() error
	}{
		{"features not offered", func() error { return f.SetFeatures(1 << 62) }},
		{"overlapping regions", func() error { return f.SetMemTable(bad) }},
		{"ring size 3", func() error { return f.SetVringNum(0, 3) }},
		{"kick for ring 9", func() error { return f.SetVringKick(9, g.fd) }},
		{"config without a config space", func() error { return f.SetConfig(0, []byte{1}) }},
	}
	for _, tt := range tests {
		if err := tt.call(); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", tt.name, err)
		}
	}
	if err := f.GetConfig(0, make([]byte, 4)); err == nil {
		t.Error("GetConfig without a config space succeeded")
	}
	if err := f.SetMemTable(make([]Region, 9)); err == nil {
		t.Error("SetMemTable with 9 regions succeeded")
	}
	// The connection survived all of it.
	must(t, f.SetMemTable(g.regions()))
	if _, err := f.GetFeatures(); err != nil {
		t.Fatal(err)
	}
}

// TestFrontendTimeout: a backend that accepts the connection but never
// answers must not hang the frontend: the request fails with ErrTimeout
// after Timeout and the connection is closed.
func TestFrontendTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mute.sock")
	l, err := Listen(path)
	must(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c) // reads requests, never replies
	}()
	f, err := Dial(path)
	must(t, err)
	defer f.Close()
	f.Timeout = 100 * time.Millisecond
	start := time.Now()
	_, err = f.GetFeatures()
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("GetFeatures from a mute backend: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %s, want about 100ms", d)
	}
	if _, err := f.GetFeatures(); err == nil {
		t.Error("the connection is still usable after a timeout")
	}
}
