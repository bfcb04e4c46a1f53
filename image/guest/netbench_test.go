package main

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNetExtra: the network benchmark's further tests over loopback, the
// guest's server and client code as they run in the guests: each prints
// its line with plausible figures, and the server ends on "done".
func TestNetExtra(t *testing.T) {
	oldTime, oldOut := extraTime, extraOut
	defer func() { extraTime, extraOut = oldTime, oldOut }()
	extraTime = 300 * time.Millisecond
	var out syncBuilder
	extraOut = &out

	ln := listen(t)
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
		`(?m)^guest: net rr n=([0-9]+) tps=[0-9]+ p50_us=([0-9.]+) p99_us=([0-9.]+)$`,
		`(?m)^guest: net udp size=64 sent=([0-9]+) received=([0-9]+) pps=([0-9]+)$`,
	} {
		m := regexp.MustCompile(re).FindStringSubmatch(out.String())
		if m == nil {
			t.Errorf("no line matching %s in:\n%s", re, out.String())
			continue
		}
		var v []float64
		for _, f := range m[1:] {
			n, _ := strconv.ParseFloat(f, 64)
			if n == 0 {
				t.Errorf("%q: a zero count or rate", m[0])
			}
			v = append(v, n)
		}
		if strings.Contains(re, "p50_us") && v[2] < v[1] {
			t.Errorf("%q: p99 below p50", m[0])
		}
	}
}

// listen is a loopback TCP listener for a test's server.
func listen(t *testing.T) *net.TCPListener {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// syncBuilder is a strings.Builder the server's and client's goroutines
// may write to at once.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNetExtraClientSaysDone: a client whose test fails still tells the
// server it is done, so that the server's guest ends too (here a server
// that hangs up on the request/response test).
func TestNetExtraClientSaysDone(t *testing.T) {
	oldOut := extraOut
	defer func() { extraOut = oldOut }()
	extraOut = io.Discard
	ln := listen(t)
	heard := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			what, _ := r.ReadString('\n')
			heard <- strings.TrimSpace(what)
			if what == "stream\n" {
				io.Copy(io.Discard, r)
			}
			c.Close() // rr: hung up at once
		}
	}()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := netExtraClient(addr, 1<<10); err == nil || !strings.HasPrefix(err.Error(), "rr: ") {
		t.Errorf("netExtraClient = %v, want the rr test's error", err)
	}
	var got []string
	for len(got) < extraStreams+2 {
		select {
		case w := <-heard:
			got = append(got, w)
		case <-time.After(time.Minute):
			t.Fatalf("the server heard only %q", got)
		}
	}
	if want := []string{"stream", "stream", "stream", "stream", "rr", "done"}; !slices.Equal(got, want) {
		t.Errorf("the server heard %q, want %q", got, want)
	}
}

// TestServeExtraSaysWhichFailed: a server's test that fails is said on the
// console at once and returned once the client is done.
func TestServeExtraSaysWhichFailed(t *testing.T) {
	oldOut := extraOut
	defer func() { extraOut = oldOut }()
	var out syncBuilder
	extraOut = &out
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- serveExtra(ln) }()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	// The udp test, broken: the client closes instead of sending
	// datagrams and "end".
	c, err := extraConn(addr, "udp")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	done, err := extraConn(addr, "done")
	if err != nil {
		t.Fatal(err)
	}
	done.Close()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "extra test udp") {
			t.Errorf("server: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the server did not end")
	}
	if !strings.Contains(out.String(), "guest: net extra-error udp: want end") {
		t.Errorf("the server did not say which test failed: %q", out.String())
	}
}

// TestServeExtraRefusesUnknown: a test the server does not know is an
// error it reports at the end, not a crash.
func TestServeExtraRefusesUnknown(t *testing.T) {
	ln := listen(t)
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
