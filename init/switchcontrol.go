package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/net/pcap"
	"github.com/hyperroot/hyperroot/net/vswitch"
)

// The switch's control socket takes PID 1's requests, one per connection,
// as one line: "limits <port> rx=.. tx=.. rxpps=.. txpps=.. burst=.." (a
// NIC's limits changed live; "ok" or "error <reason>"), and "capture
// <port>".
//
// Live captures: PID 1 asks the running switch for a port's frames over
// the switch's control socket (controlSocket in its directory: root's,
// 0600, so no VMM reaches it) with one line, "capture <port>\n"; the
// switch answers "ok\n" and then streams a pcap capture until PID 1 hangs
// up, or "error <reason>\n". The switch keeps forwarding at full speed: a
// capture is a bounded ring (net/pcap) that drops what a slow reader
// cannot take. PID 1 relays the stream to an API client record by record,
// checked as hostile input (pcap.Reader): the switch is jailed because a
// guest may take it over.

// controlSocket is the switch's control socket, in its directory.
const controlSocket = "control.sock"

// maxLiveCaptures bounds the captures a switch streams at once: each holds
// a ring of a MiB or more.
const maxLiveCaptures = 8

// controlTimeout bounds how long either side waits for the other's
// request or answer line.
const controlTimeout = 10 * time.Second

// maxControlLine bounds a request or answer line.
const maxControlLine = 256

// portTap fans a port's frames out to its captures: the --capture file
// and the live streams. The port's capture function holds its own copy of
// the list, replaced on each change, so the data path takes no lock.
type portTap struct {
	p  *vswitch.Port
	mu sync.Mutex
	ws []*pcap.Writer
}

func (t *portTap) add(w *pcap.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.install(append(slices.Clip(t.ws), w))
}

func (t *portTap) remove(w *pcap.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.install(slices.DeleteFunc(slices.Clone(t.ws), func(x *pcap.Writer) bool { return x == w }))
}

// install makes ws the port's captures. t.mu must be held.
func (t *portTap) install(ws []*pcap.Writer) {
	t.ws = ws
	if len(ws) == 0 {
		t.p.Capture(nil)
		return
	}
	t.p.Capture(func(frame []byte) {
		now := time.Now()
		for _, w := range ws {
			w.WriteFrame(frame, now)
		}
	})
}

// tap returns p's tap, made on first use.
func (rs *runningSwitch) tap(p *vswitch.Port) *portTap {
	rs.tapsMu.Lock()
	defer rs.tapsMu.Unlock()
	if rs.taps == nil {
		rs.taps = map[string]*portTap{}
	}
	t := rs.taps[p.Name()]
	if t == nil {
		t = &portTap{p: p}
		rs.taps[p.Name()] = t
	}
	return t
}

// portNamed returns the port called name, or nil.
func (rs *runningSwitch) portNamed(name string) *vswitch.Port {
	for _, p := range rs.ports {
		if p.Name() == name {
			return p
		}
	}
	return nil
}

// listenControl makes the control socket, before the switch confines
// itself: root's, 0600 (PID 1 runs as root; the switch keeps the listener
// once it is another uid).
func (rs *runningSwitch) listenControl(dir string) error {
	path := filepath.Join(dir, controlSocket)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("control socket: %w", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	rs.control = l
	rs.listeners = append(rs.listeners, l)
	return nil
}

// serveControl answers PID 1's requests until the listener is closed.
func (rs *runningSwitch) serveControl() {
	for {
		c, err := rs.control.AcceptUnix()
		if err != nil {
			return
		}
		go rs.controlConn(c)
	}
}

// controlConn serves one request.
func (rs *runningSwitch) controlConn(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(controlTimeout))
	line, err := readControlLine(c)
	if err != nil {
		return
	}
	verb, args, _ := strings.Cut(line, " ")
	port, args, _ := strings.Cut(args, " ")
	p := rs.portNamed(port)
	switch {
	case verb != "capture" && verb != "limits":
		fmt.Fprintf(c, "error unknown request\n")
		return
	case p == nil:
		fmt.Fprintf(c, "error no port %q\n", port)
		return
	case verb == "limits":
		l, err := parseLimitsRequest(args)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		p.SetLimits(portLimits(l))
		rs.logf("port %s limits %s", p.Name(), formatLimitsRequest(l))
		io.WriteString(c, "ok\n")
		return
	}
	if rs.live.Add(1) > maxLiveCaptures {
		rs.live.Add(-1)
		fmt.Fprintf(c, "error busy: %d captures already\n", maxLiveCaptures)
		return
	}
	defer rs.live.Add(-1)
	if _, err := io.WriteString(c, "ok\n"); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	w, err := pcap.New(c, 0)
	if err != nil {
		return
	}
	t := rs.tap(p)
	t.add(w)
	rs.logf("capture of port %s started", p.Name())
	// PID 1 sends nothing more: its end closing (its client went, or
	// had what it asked for) ends the capture.
	io.Copy(io.Discard, io.LimitReader(c, maxControlLine))
	t.remove(w)
	c.Close() // a flush into a peer that left fails at once
	w.Close()
	rs.logf("capture of port %s ended dropped=%d", p.Name(), w.Dropped())
}

// readControlLine reads one line of at most maxControlLine bytes, a byte
// at a time so that nothing after it is consumed.
func readControlLine(r io.Reader) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < maxControlLine {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("control line too long")
}

// request sends one request line to the running switch and reads its
// answer: the connection, after "ok", or the switch's error (no port:
// api.ErrNotFound; busy: api.ErrBusy).
func (s *netSwitch) request(line string) (net.Conn, error) {
	if s == nil {
		return nil, fmt.Errorf("no switch: %w", api.ErrNotFound)
	}
	dir := s.dir
	if dir == "" {
		dir = switchDir
	}
	c, err := net.DialTimeout("unix", filepath.Join(dir, controlSocket), controlTimeout)
	if err != nil {
		return nil, fmt.Errorf("switch: %w", err)
	}
	c.SetDeadline(time.Now().Add(controlTimeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("switch: %w", err)
	}
	answer, err := readControlLine(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("switch: %w", err)
	}
	if msg, ok := strings.CutPrefix(answer, "error "); ok {
		c.Close()
		switch {
		case strings.HasPrefix(msg, "no port"):
			return nil, fmt.Errorf("switch: %s: %w", msg, api.ErrNotFound)
		case strings.HasPrefix(msg, "busy"):
			return nil, fmt.Errorf("switch: %s: %w", msg, api.ErrBusy)
		}
		return nil, fmt.Errorf("switch: %s", msg)
	}
	if answer != "ok" {
		c.Close()
		return nil, fmt.Errorf("switch: answer %q", answer)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// Capture asks the running switch for a live capture of port: the pcap
// stream, checked record by record, until the caller closes it.
func (s *netSwitch) Capture(port string) (*pcapStream, error) {
	c, err := s.request("capture " + port)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(controlTimeout))
	r, err := pcap.NewReader(bufio.NewReader(c))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("switch: %w", err)
	}
	c.SetReadDeadline(time.Time{})
	return &pcapStream{Reader: r, conn: c}, nil
}

// pcapStream is a live capture from the switch.
type pcapStream struct {
	*pcap.Reader
	conn net.Conn
}

// Close ends the capture; a Next blocked in it returns.
func (s *pcapStream) Close() error { return s.conn.Close() }

// formatLimitsRequest writes a NIC's limits as the limits request's
// arguments: bits and packets per second, the burst in nanoseconds.
func formatLimitsRequest(l config.NICLimits) string {
	return fmt.Sprintf("rx=%d tx=%d rxpps=%d txpps=%d burst=%d", l.RX, l.TX, l.RXPPS, l.TXPPS, int64(l.Burst))
}

// parseLimitsRequest reads formatLimitsRequest back: every field once.
func parseLimitsRequest(s string) (config.NICLimits, error) {
	var l config.NICLimits
	var burst uint64
	fields := map[string]*uint64{"rx": &l.RX, "tx": &l.TX, "rxpps": &l.RXPPS, "txpps": &l.TXPPS, "burst": &burst}
	f := strings.Fields(s)
	if len(f) != len(fields) {
		return l, fmt.Errorf("limits: want %d fields, got %d", len(fields), len(f))
	}
	for _, kv := range f {
		k, v, _ := strings.Cut(kv, "=")
		p, ok := fields[k]
		if !ok {
			return l, fmt.Errorf("limits: %q", kv)
		}
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return l, fmt.Errorf("limits: %q", kv)
		}
		*p = n
		delete(fields, k)
	}
	l.Burst = time.Duration(burst)
	return l, nil
}

// SetLimits asks the running switch to replace a port's limits now.
func (s *netSwitch) SetLimits(port string, l config.NICLimits) error {
	c, err := s.request(fmt.Sprintf("limits %s %s", port, formatLimitsRequest(l)))
	if err != nil {
		return err
	}
	c.Close()
	return nil
}
