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
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// TestNetExtra: the network benchmark's further tests over loopback, the
// guest's server and client code as they run in the guests: each prints
// its line with plausible figures, and the server ends on "done".
func TestNetExtra(t *testing.T) {
	oldTime, oldOut := extraTime, extraOut
	defer func() { extraTime, extraOut = oldTime, oldOut }()
	extraTime = 300 * time.Millisecond
	var out testenv.Buffer
	extraOut = &out

	addr, served := serve(t)
	if err := netExtraClient(addr, 1<<20); err != nil {
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

// serve runs serveExtra on a loopback listener: its address, and where
// its result arrives.
func serve(t *testing.T) (netip.AddrPort, <-chan error) {
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- serveExtra(ln) }()
	return ln.Addr().(*net.TCPAddr).AddrPort(), served
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

// TestServeExtraSaysWhichFailed: a server's test that fails (one the
// server does not know; the udp test with a client that closes instead of
// sending datagrams and "end") is said on the console at once and
// returned once the client is done, not a crash nor a hang.
func TestServeExtraSaysWhichFailed(t *testing.T) {
	oldOut := extraOut
	defer func() { extraOut = oldOut }()
	for test, want := range map[string]string{"flood": `unknown test "flood"`, "udp": "want end"} {
		var out testenv.Buffer
		extraOut = &out
		addr, served := serve(t)
		for _, what := range []string{test, "done"} {
			c, err := extraConn(addr, what)
			if err != nil {
				t.Fatal(err)
			}
			if what != "done" {
				c.Read(make([]byte, 16)) // udp: the server's "ready"; flood: its close
			}
			c.Close()
		}
		select {
		case err := <-served:
			if err == nil || !strings.Contains(err.Error(), "extra test "+test) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: server: %v", test, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s: the server did not end", test)
		}
		if !strings.Contains(out.String(), "guest: net extra-error "+test+": "+want) {
			t.Errorf("%s: the server did not say which test failed: %q", test, out.String())
		}
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

// TestTCPInfoLine: the stream's connection as the kernel describes it,
// over loopback: every field present, the segments counted.
func TestTCPInfoLine(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	l := tcpInfoLine(c.(*net.TCPConn))
	re := regexp.MustCompile(`^guest: net tcp rtt_us=\d+ cwnd=[1-9]\d* mss=[1-9]\d* retrans=\d+ data_segs_out=([1-9]\d*) bytes_per_seg=([1-9]\d*) pacing_mbps=[0-9.]+ busy_ms=\d+ rwnd_limited_ms=\d+ sndbuf_limited_ms=\d+$`)
	if !re.MatchString(l) {
		t.Fatalf("%q does not match %s", l, re)
	}
}

// TestCPUSplit: /proc/stat's cpu line read and two samples compared, in
// percent; the machine's own /proc/stat reads.
func TestCPUSplit(t *testing.T) {
	a := parseCPUTimes("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
	b := parseCPUTimes("cpu  140 10 60 830 50 5 5 0 0 0\n")
	if got, want := cpuSplit(a, b), "user=50 sys=10 idle=30 irq=5 softirq=5 steal=0"; got != want {
		t.Errorf("split %q, want %q", got, want)
	}
	if cpuSplit(a, a) != "" || parseCPUTimes("intr 1 2") != (cpuTimes{}) {
		t.Error("no ticks or no cpu line gave a split")
	}
	if readCPUTimes() == (cpuTimes{}) {
		t.Error("this machine's /proc/stat did not parse")
	}
}

// TestIRQSplit: /proc/interrupts rows by handler name (device rows) or row
// key (the architecture's), summed over CPUs, ERR's single count taken,
// and the largest differences per MiB first.
func TestIRQSplit(t *testing.T) {
	a := parseInterrupts(`           CPU0       CPU1
  0:         36          0   IO-APIC   2-edge      timer
 24:          0          0   PCI-MSI 49152-edge      virtio0-config
 25:        100         20   PCI-MSI 49153-edge      virtio0-input.0
 26:         10          0   PCI-MSI 49154-edge      virtio0-output.0
NMI:          0          0   Non-maskable interrupts
LOC:       1000       1000   Local timer interrupts
ERR:          0
`)
	if a["virtio0-input.0"] != 120 || a["LOC"] != 2000 || a["timer"] != 36 || len(a) != 7 {
		t.Fatalf("parsed %v", a)
	}
	b := parseInterrupts(`           CPU0       CPU1
 25:        300         20   PCI-MSI 49153-edge      virtio0-input.0
 26:         10          0   PCI-MSI 49154-edge      virtio0-output.0
LOC:       1100       1000   Local timer interrupts
ERR:          3
`)
	if got, want := irqSplit(a, b, 2, 8), "virtio0-input.0=100.0 LOC=50.0 ERR=1.5"; got != want {
		t.Errorf("split %q, want %q", got, want)
	}
	if got := irqSplit(a, b, 2, 1); got != "virtio0-input.0=100.0" {
		t.Errorf("split of one %q", got)
	}
	if irqSplit(a, a, 2, 8) != "" || irqSplit(a, b, 0, 8) != "" {
		t.Error("nothing moved gave a split")
	}
	if len(readIRQs()) == 0 {
		t.Error("this machine's /proc/interrupts did not parse")
	}
}
