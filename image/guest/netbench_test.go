package main

import (
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNetExtra: the network benchmark's further tests over loopback, the
// guest's server and client code as they run in the guests: each prints
// its line with plausible figures, and the server ends on "done".
func TestNetExtra(t *testing.T) {
	oldTime, oldPort, oldOut := extraTime, udpBenchPort, extraOut
	defer func() { extraTime, udpBenchPort, extraOut = oldTime, oldPort, oldOut }()
	extraTime = 300 * time.Millisecond
	// A free UDP port for the server's datagrams.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	udpBenchPort = pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	var out strings.Builder
	extraOut = &out

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- serveExtra(ln) }()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := netExtraClient(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addr.Port()), 1<<20); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the server did not end on done")
	}
	for _, re := range []string{
		`(?m)^guest: net streams n=4 bytes=4194304 mbps=[0-9.]+$`,
		`(?m)^guest: net rr n=([0-9]+) tps=[0-9]+ p50_us=[0-9]+ p99_us=[0-9]+$`,
		`(?m)^guest: net udp size=64 sent=([0-9]+) received=([0-9]+) pps=([0-9]+)$`,
	} {
		m := regexp.MustCompile(re).FindStringSubmatch(out.String())
		if m == nil {
			t.Errorf("no line matching %s in:\n%s", re, out.String())
			continue
		}
		for _, v := range m[1:] {
			if n, _ := strconv.Atoi(v); n == 0 {
				t.Errorf("%q: a zero count or rate", m[0])
			}
		}
	}
}

// TestServeExtraRefusesUnknown: a test the server does not know is an
// error it reports at the end, not a crash.
func TestServeExtraRefusesUnknown(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- serveExtra(ln) }()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	c, err := extraConn(addr, "flood")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	c.Read(buf) // the server closes it
	c.Close()
	d, err := extraConn(addr, "done")
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := <-served; err == nil || !strings.Contains(err.Error(), `unknown test "flood"`) {
		t.Errorf("server: %v", err)
	}
}

func TestRRPercentiles(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Microsecond)
	}
	if p50, p99 := rrPercentiles(lat); p50 != 50*time.Microsecond || p99 != 99*time.Microsecond {
		t.Errorf("p50 %v p99 %v, want 50µs 99µs", p50, p99)
	}
	if p50, p99 := rrPercentiles(nil); p50 != 0 || p99 != 0 {
		t.Errorf("empty: %v %v", p50, p99)
	}
}
