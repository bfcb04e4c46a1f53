package main

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/svirt"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
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
	p    *vswitch.Port
	gone chan struct{} // closed when the port is removed: its live captures end
	mu   sync.Mutex
	ws   []*pcap.Writer
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
	if t == nil || t.p != p { // none yet, or a removed port's of that name
		t = &portTap{p: p, gone: make(chan struct{})}
		rs.taps[p.Name()] = t
	}
	return t
}

// portNamed returns the port called name, or nil.
func (rs *runningSwitch) portNamed(name string) *vswitch.Port {
	rs.mu.Lock()
	defer rs.mu.Unlock()
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
	line, files, err := readControlRequest(c)
	defer func() {
		for _, f := range files {
			f.Close() // what a request did not take
		}
	}()
	if err != nil {
		return
	}
	verb, args, _ := strings.Cut(line, " ")
	port, args, _ := strings.Cut(args, " ")
	answer := func(err error) {
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		io.WriteString(c, "ok\n")
	}
	switch verb {
	case "add":
		if len(files) != 1 {
			answer(fmt.Errorf("add %s: want the port's listening socket, got %d descriptors", port, len(files)))
			return
		}
		f := files[0]
		files = nil
		answer(rs.addPort(port, args, f))
		return
	case "remove":
		answer(rs.removePort(port))
		return
	case "capture", "limits":
	default:
		answer(errors.New("unknown request"))
		return
	}
	p := rs.portNamed(port)
	if p == nil {
		answer(fmt.Errorf("no port %q", port))
		return
	}
	if verb == "limits" {
		l, err := parseLimitsRequest(args)
		if err == nil {
			p.SetLimits(portLimits(l))
			rs.logf("port %s limits %s", p.Name(), formatLimitsRequest(l))
		}
		answer(err)
		return
	}
	if rs.live.Add(1) > maxLiveCaptures {
		rs.live.Add(-1)
		answer(fmt.Errorf("busy: %d captures already", maxLiveCaptures))
		return
	}
	c.SetDeadline(time.Time{})
	var w *pcap.Writer
	if _, err = io.WriteString(c, "ok\n"); err == nil {
		w, err = pcap.New(c, 0)
	}
	if err != nil {
		rs.live.Add(-1)
		return
	}
	t := rs.tap(p)
	t.add(w)
	rs.logf("capture of port %s started", p.Name())
	// PID 1 sends nothing more: its end closing (its client went, or
	// had what it asked for) ends the capture, as the port's removal
	// does.
	ended := make(chan struct{})
	go func() {
		select {
		case <-t.gone:
			c.Close()
		case <-ended:
		}
	}()
	io.Copy(io.Discard, io.LimitReader(c, maxControlLine))
	close(ended)
	t.remove(w)
	c.Close() // a flush into a peer that left fails at once
	w.Close()
	rs.live.Add(-1)
	rs.logf("capture of port %s ended dropped=%d", p.Name(), w.Dropped())
}

// readControlRequest reads a request line and the descriptors sent with
// it (SCM_RIGHTS, with the line's first bytes): at most one line of
// maxControlLine bytes, at most maxControlFiles descriptors.
func readControlRequest(c *net.UnixConn) (string, []*os.File, error) {
	buf := make([]byte, maxControlLine)
	oob := make([]byte, unix.CmsgSpace(maxControlFiles*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var files []*os.File
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, ferr := unix.ParseUnixRights(&m)
			if ferr != nil {
				continue
			}
			for _, fd := range fds {
				files = append(files, os.NewFile(uintptr(fd), "control"))
			}
		}
		if perr != nil && err == nil {
			err = perr
		}
	}
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = errors.New("control request: too many descriptors")
	}
	line := buf[:n]
	for err == nil && !bytes.Contains(line, []byte("\n")) {
		if len(line) >= maxControlLine {
			err = errors.New("control line too long")
			break
		}
		var more int
		more, err = c.Read(buf[len(line):])
		line = buf[:len(line)+more]
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return "", nil, err
	}
	before, _, _ := bytes.Cut(line, []byte("\n"))
	return string(before), files, nil
}

// maxControlFiles bounds the descriptors a request may carry.
const maxControlFiles = 4

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
func (s *netSwitch) request(line string, files ...*os.File) (net.Conn, error) {
	if s == nil {
		return nil, fmt.Errorf("no switch: %w", api.ErrNotFound)
	}
	nc, err := net.DialTimeout("unix", filepath.Join(s.directory(), controlSocket), controlTimeout)
	if err != nil {
		return nil, fmt.Errorf("switch: %w", err)
	}
	c := nc.(*net.UnixConn)
	c.SetDeadline(time.Now().Add(controlTimeout))
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix([]byte(line+"\n"), oob, nil); err != nil {
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
	br := bufio.NewReader(c)
	r, err := pcap.NewReader(br)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("switch: %w", err)
	}
	c.SetReadDeadline(time.Time{})
	return &pcapStream{Reader: r, br: br, conn: c}, nil
}

// pcapStream is a live capture from the switch.
type pcapStream struct {
	*pcap.Reader
	br   *bufio.Reader
	conn net.Conn
}

// Buffered is how much of the stream has been read from the switch and
// not returned yet.
func (s *pcapStream) Buffered() int { return s.br.Buffered() }

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

// reportPorts calls report with each port, holding the ports still: a
// port's last report comes before the line that says it was removed, on
// which PID 1 forgets it.
func (rs *runningSwitch) reportPorts(report func(*vswitch.Port)) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, p := range rs.ports {
		report(p)
	}
}

// maxAddedPorts bounds the VM ports a switch adds after it started: its
// jail's descriptor limit was set for its configuration's ports and this
// many more (switchjail.go). A switch that restarts starts with every
// port of the configuration in force, and this room again.
const maxAddedPorts = 16

// addPort adds a VM NIC's port, as "add <vm>.<index> <network> <mac>
// <limits>" asks, served on l: PID 1 made the socket (root's work: it
// lies in the VM's own directory), the switch serves it as it serves its
// configuration's.
func (rs *runningSwitch) addPort(name, args string, f *os.File) error {
	defer f.Close()
	network, args, _ := strings.Cut(args, " ")
	macText, args, _ := strings.Cut(args, " ")
	nw := rs.nets[network]
	mac, err := net.ParseMAC(macText)
	switch {
	case !api.ValidPort(name) || !strings.Contains(name, "."):
		return fmt.Errorf("add %q: not a VM port's name", name)
	case nw == nil:
		return fmt.Errorf("add %s: no network %q", name, network)
	case err != nil || len(mac) != 6:
		return fmt.Errorf("add %s: mac %q", name, macText)
	}
	limits, err := parseLimitsRequest(args)
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	fl, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	l, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return fmt.Errorf("add %s: the descriptor is not a unix socket listener", name)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.added >= maxAddedPorts {
		l.Close()
		return fmt.Errorf("busy: %d ports added since the switch started (it makes room for more when it restarts)", maxAddedPorts)
	}
	if rs.byMAC.load(mac.String()) != nil {
		l.Close()
		return fmt.Errorf("add %s: mac %s is another port's", name, mac)
	}
	srv := rs.servers[network]
	p, err := rs.sw.AddVirtioPort(name, vswitch.VirtioConfig{Network: nw, MAC: mac, LockIP: srv != nil, Limits: portLimits(limits)})
	if err != nil {
		l.Close()
		return err
	}
	rs.added++
	rs.ports = append(rs.ports, p.Port)
	rs.nicListener[name] = l
	if srv != nil {
		rs.dhcpOf.store(p.Port, srv)
		if ip, ok := srv.Lookup(mac); ok {
			p.AllowIP(ip)
		}
	}
	rs.byMAC.store(mac.String(), p)
	log := newConnLog(rs.logf, name)
	rs.connLogs = append(rs.connLogs, log)
	go rs.serve(l, p, log)
	rs.logf("port %s added network=%s mac=%s", name, network, mac)
	return nil
}

// removePort takes a VM's port off the switch, its socket with it (PID 1
// stopped the VM first).
func (rs *runningSwitch) removePort(name string) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	l := rs.nicListener[name]
	i := slices.IndexFunc(rs.ports, func(p *vswitch.Port) bool { return p.Name() == name })
	if l == nil || i < 0 {
		return fmt.Errorf("no port %q", name)
	}
	p := rs.ports[i]
	l.Close()
	delete(rs.nicListener, name)
	rs.ports = slices.Delete(rs.ports, i, i+1)
	rs.added = max(rs.added-1, 0) // its connection and descriptors go with it
	rs.tapsMu.Lock()
	if t := rs.taps[name]; t != nil && t.p == p {
		close(t.gone)
		delete(rs.taps, name)
	}
	rs.tapsMu.Unlock()
	rs.dhcpOf.delete(p)
	for mac, v := range rs.byMAC.snapshot() {
		if v.Port == p {
			rs.byMAC.delete(mac)
		}
	}
	rs.logf("%s", portReport(p)) // its last counters
	if err := p.Remove(); err != nil {
		return err
	}
	rs.logf("port %s removed", name)
	return nil
}

// cowMap is a map the data path reads without a lock: a writer replaces
// it whole with a changed copy (writes are rare: a port added or removed).
type cowMap[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (c *cowMap[K, V]) load(k K) V {
	var zero V
	if m := c.m.Load(); m != nil {
		return (*m)[k]
	}
	return zero
}

func (c *cowMap[K, V]) snapshot() map[K]V {
	if m := c.m.Load(); m != nil {
		return *m
	}
	return nil
}

func (c *cowMap[K, V]) len() int { return len(c.snapshot()) }

func (c *cowMap[K, V]) store(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := maps.Clone(c.snapshot())
	if m == nil {
		m = map[K]V{}
	}
	m[k] = v
	c.m.Store(&m)
}

func (c *cowMap[K, V]) delete(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := maps.Clone(c.snapshot())
	delete(m, k)
	c.m.Store(&m)
}

// AddPort asks the running switch to serve NIC i of vm: PID 1 makes the
// VM's socket directory and the socket (root's work, as the switch does
// at its start) and hands the listening socket over.
func (s *netSwitch) AddPort(vm config.VM, i int) error {
	if s == nil {
		return errors.New("no switch runs")
	}
	dir := s.directory()
	name := portName(vm.Name, i)
	// A socket something serves is a port's already: making a new one
	// there would take it from that port.
	if c, err := net.DialTimeout("unix", vmmcli.NICSocket(dir, vm.Name, i), controlTimeout); err == nil {
		c.Close()
		return fmt.Errorf("add %s: the port exists", name)
	}
	if err := vmSocketDir(dir, vm); err != nil {
		return err
	}
	var l *net.UnixListener
	listen := func() (err error) {
		l, err = listenNIC(dir, vm, i)
		return err
	}
	mk := listen
	if s.sockLabel != "" {
		// The switch's, as if it had made it: the VMM may connect to
		// the switch's sockets, not to PID 1's.
		mk = func() error { return svirt.Socket(s.sockLabel, listen) }
	}
	if err := mk(); err != nil {
		return err
	}
	// The switch serves the socket from now on: closing PID 1's copy
	// must not remove the file.
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return err
	}
	defer f.Close()
	nic := vm.NICs[i]
	c, err := s.request(fmt.Sprintf("add %s %s %s %s", name, nic.Network, nic.MAC, formatLimitsRequest(nic.Limits)), f)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// RemovePort asks the running switch to take a VM NIC's port off.
func (s *netSwitch) RemovePort(name string) error {
	c, err := s.request("remove " + name)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// directory is the switch's directory: its control socket and the VMs'
// socket directories are there.
func (s *netSwitch) directory() string { return cmp.Or(s.dir, switchDir) }
