package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The network benchmark's further tests (hyperroot.netextra=1 on both
// guests' command lines, tools/bench net): after the one stream, the
// client drives the server through more connections to its stream port,
// each opened with a line saying what it is for:
//
//	stream   the client sends until it half-closes; the server reads it all
//	         and closes
//	rr       one-byte requests, each answered with one byte, until the
//	         client closes (TCP_RR: the latency of a round trip)
//	udp      the server listens on a UDP port and answers "ready <port>";
//	         the client sends udpBenchSize-byte datagrams there for
//	         extraTime, then "end"; once no datagram has come for udpQuiet
//	         the server answers "got <n> <µs from its first datagram to its
//	         last>"
//	done     the server is finished (the client sends it even after a
//	         failed test, so that the server's guest ends too)
//
// and reports, one line each:
//
//	guest: net streams n=<conns> bytes=<total> mbps=<aggregate>
//	guest: net rr n=<round trips> tps=<per s> p50_us=<> p99_us=<>
//	guest: net udp size=<bytes> sent=<n> received=<n> pps=<received per s>
//
// A server's test that fails prints "guest: net extra-error <test>: <why>"
// at once. The rates are measured over a fixed time, not waited on: a
// slower machine gives fewer samples, not a failure. Every blocking step
// has a deadline, so a peer that vanished ends the test with an error
// rather than a guest that hangs until the benchmark's timeout.
var (
	extraTime = 3 * time.Second
	// extraOut receives the report lines (the console; tests replace it).
	extraOut io.Writer = os.Stdout
)

const (
	udpBenchSize = 64
	extraStreams = 4
	// udpQuiet: the server's count is final once no datagram has come for
	// this long after the client's "end" (datagrams still in the rings).
	udpQuiet = 300 * time.Millisecond
	// rrMax bounds the latencies kept (preallocated: the loop allocates
	// nothing per round trip).
	rrMax = 1 << 20
	// extraWait bounds each wait for the peer beyond the tests' own time.
	extraWait = time.Minute
)

// netExtra reports whether the command line asks for the further tests.
func netExtra() bool { return cmdlineValue("hyperroot.netextra") == "1" }

// serveExtra answers the client's further tests on ln until it says done.
func serveExtra(ln *net.TCPListener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	for {
		ln.SetDeadline(time.Now().Add(5 * extraWait))
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("waiting for the client's next test: %w", err)
		}
		r := bufio.NewReader(conn)
		conn.SetReadDeadline(time.Now().Add(extraWait))
		what, err := r.ReadString('\n')
		conn.SetReadDeadline(time.Time{})
		if err != nil {
			conn.Close()
			return fmt.Errorf("extra test: %w", err)
		}
		what = strings.TrimSpace(what)
		if what == "done" {
			conn.Close()
			wg.Wait() // the client has finished with every test
			select {
			case err := <-errc:
				return err
			default:
				return nil
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			var err error
			switch what {
			case "stream":
				_, err = io.Copy(io.Discard, r)
			case "rr":
				err = echoBytes(r, conn)
			case "udp":
				err = countDatagrams(conn, r)
			default:
				err = fmt.Errorf("unknown test %q", what)
			}
			if err != nil {
				fmt.Fprintf(extraOut, "guest: net extra-error %s: %v\n", what, err)
				select {
				case errc <- fmt.Errorf("extra test %s: %w", what, err):
				default:
				}
			}
		}()
	}
}

// echoBytes answers each byte read from r with one byte on w.
func echoBytes(r io.Reader, w io.Writer) error {
	var b [1]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if _, err := w.Write(b[:]); err != nil {
			return err
		}
	}
}

// countDatagrams is the server's side of the udp test, on its control
// connection c (read through r).
func countDatagrams(c net.Conn, r *bufio.Reader) error {
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return err
	}
	var n atomic.Int64
	var first, last atomic.Int64 // monotonic µs since start
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := uc.ReadFromUDPAddrPort(buf); err != nil {
				return // closed
			}
			t := time.Since(start).Microseconds()
			if n.Add(1) == 1 {
				first.Store(t)
			}
			last.Store(t)
		}
	}()
	defer func() { uc.Close(); <-done }()
	if _, err := fmt.Fprintf(c, "ready %d\n", uc.LocalAddr().(*net.UDPAddr).Port); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(extraTime + extraWait))
	if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "end" {
		return fmt.Errorf("want end, got %q (%v)", line, err)
	}
	for prev := int64(-1); ; {
		time.Sleep(udpQuiet)
		if cur := n.Load(); cur == prev {
			break
		} else {
			prev = cur
		}
	}
	uc.Close()
	<-done
	_, err = fmt.Fprintf(c, "got %d %d\n", n.Load(), last.Load()-first.Load())
	return err
}

// netExtraClient runs the further tests against the server at addr (its
// stream port) and prints their lines.
func netExtraClient(addr netip.AddrPort, perStream int64) (err error) {
	defer func() {
		// Done, whatever happened: the server's guest ends too.
		c, derr := extraConn(addr, "done")
		if derr == nil {
			derr = c.Close()
		}
		err = errors.Join(err, derr)
	}()
	if err := extraStreamsTest(addr, perStream); err != nil {
		return fmt.Errorf("streams: %w", err)
	}
	if err := rrTest(addr); err != nil {
		return fmt.Errorf("rr: %w", err)
	}
	if err := udpTest(addr); err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	return nil
}

// extraConn opens a connection for test what.
func extraConn(addr netip.AddrPort, what string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp4", addr.String(), 30*time.Second)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if _, err := io.WriteString(tc, what+"\n"); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// extraStreamsTest sends perStream bytes on each of extraStreams
// connections at once; the rate is the total over the time until the
// server has read the last of them (it closes each at its end).
func extraStreamsTest(addr netip.AddrPort, perStream int64) error {
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	conns := make([]*net.TCPConn, extraStreams)
	for i := range conns {
		c, err := extraConn(addr, "stream")
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return err
		}
		conns[i] = c
	}
	start := time.Now()
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * extraWait))
			for sent := int64(0); sent < perStream; {
				n, err := c.Write(buf[:min(int64(len(buf)), perStream-sent)])
				if err != nil {
					errs[i] = err
					return
				}
				sent += int64(n)
			}
			if err := c.CloseWrite(); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = io.Copy(io.Discard, c) // until the server has read it all
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	total := perStream * int64(len(conns))
	fmt.Fprintf(extraOut, "guest: net streams n=%d bytes=%d mbps=%.1f\n", len(conns), total, float64(total)*8/secs/1e6)
	return nil
}

// rrTest times one-byte round trips on one connection for extraTime.
func rrTest(addr netip.AddrPort) error {
	c, err := extraConn(addr, "rr")
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetNoDelay(true)
	lat := make([]time.Duration, 0, rrMax)
	var b [1]byte
	start := time.Now()
	c.SetDeadline(start.Add(extraTime + extraWait))
	for time.Since(start) < extraTime && len(lat) < rrMax {
		t := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return err
		}
		lat = append(lat, time.Since(t))
	}
	secs := time.Since(start).Seconds()
	p50, p99 := rrPercentiles(lat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	fmt.Fprintf(extraOut, "guest: net rr n=%d tps=%.0f p50_us=%.1f p99_us=%.1f\n", len(lat), float64(len(lat))/secs, us(p50), us(p99))
	return nil
}

// rrPercentiles sorts lat and returns its median and 99th percentile
// (nearest rank).
func rrPercentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(lat))+0.999999) - 1
		return lat[min(max(i, 0), len(lat)-1)]
	}
	return rank(0.50), rank(0.99)
}

// udpTest sends udpBenchSize-byte datagrams to the server for extraTime and
// reports what it counted.
func udpTest(addr netip.AddrPort) error {
	c, err := extraConn(addr, "udp")
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(extraWait))
	line, err := r.ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] != "ready" {
		return fmt.Errorf("want ready <port>, got %q (%v)", line, err)
	}
	port, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil {
		return fmt.Errorf("server said %q: %w", line, err)
	}
	uc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr.Addr(), uint16(port))))
	if err != nil {
		return err
	}
	defer uc.Close()
	msg := make([]byte, udpBenchSize)
	sent := 0
	start := time.Now()
	uc.SetWriteDeadline(start.Add(extraTime + extraWait))
	for time.Since(start) < extraTime {
		// Counted as sent once the socket took it: one the guest's own
		// queue drops later (Linux does not say so for UDP without
		// IP_RECVERR) counts as sent and lost.
		if _, err := uc.Write(msg); err == nil {
			sent++
		}
	}
	c.SetDeadline(time.Now().Add(extraWait + 2*udpQuiet))
	if _, err := io.WriteString(c, "end\n"); err != nil {
		return err
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return err
	}
	f = strings.Fields(line)
	if len(f) != 3 || f[0] != "got" {
		return fmt.Errorf("server said %q", line)
	}
	got, err1 := strconv.ParseInt(f[1], 10, 64)
	us, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("server said %q: %w", line, err)
	}
	pps := 0.0
	if got > 1 && us > 0 {
		pps = float64(got-1) / (float64(us) / 1e6)
	}
	fmt.Fprintf(extraOut, "guest: net udp size=%d sent=%d received=%d pps=%.0f\n", udpBenchSize, sent, got, pps)
	return nil
}
