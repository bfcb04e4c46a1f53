package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/netutil"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/net/dhcp"
	"github.com/hyperroot/hyperroot/net/vswitch"
)

// The management API (internal/api), served by PID 1: to root on the
// appliance through a unix socket, always, and on the network when the
// configuration's api: has a listen address (TLS with the appliance's own
// certificate, bearer tokens). It offers the fleet's operations, the same
// the console has.

// apiDataDir keeps the network listener's certificate, so that clients
// pin it once. It is in the appliance's RAM (a new certificate each boot)
// until a data disk is mounted there.
var apiDataDir = filepath.Join(config.DataDir, "api")

// maxAPIConns bounds the network listener's open connections: beyond it a
// client waits for its turn, and PID 1's memory stays bounded whatever
// the network sends.
const maxAPIConns = 256

// apiBackend answers the API from the fleet.
type apiBackend struct {
	f    *fleet
	sw   *netSwitch  // nil without a switch
	kvm  string      // the console's kvm line, or why KVM is unusable
	live *liveConfig // the configuration in force
}

func (b apiBackend) Host() api.Host {
	h := api.Host{Version: version, CPUs: runtime.NumCPU(), KVM: b.kvm}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		h.Memory = uint64(si.Totalram) * uint64(si.Unit)
	}
	return h
}

func (b apiBackend) VMs() []api.VM {
	b.f.mu.Lock()
	names := slices.Sorted(maps.Keys(b.f.vms))
	b.f.mu.Unlock()
	vms := make([]api.VM, 0, len(names))
	for _, n := range names {
		if vm, err := b.VM(n); err == nil {
			vms = append(vms, vm)
		}
	}
	return vms
}

func (b apiBackend) VM(name string) (api.VM, error) {
	e, err := b.entry(name)
	if err != nil {
		return api.VM{}, err
	}
	vm := api.VM{Name: name, State: api.StateStopped, CPUs: e.vm.CPUs, Memory: uint64(e.vm.Memory), Restart: string(e.vm.Restart)}
	if p := e.sup.Process(); p != nil {
		vm.State, vm.PID = api.StateRunning, p.Pid()
	}
	e.mu.Lock()
	g := e.group
	e.mu.Unlock()
	if g != nil {
		if d, err := g.CPUUsage(); err == nil {
			vm.CPUSeconds = d.Seconds()
		}
		if n, err := g.MemoryCurrent(); err == nil {
			vm.MemoryUsed = n
		}
	}
	for _, d := range e.vm.Disks {
		vm.Disks = append(vm.Disks, api.Disk{Path: d.Path, ReadOnly: d.ReadOnly})
	}
	for i, n := range e.vm.NICs {
		vm.NICs = append(vm.NICs, api.NIC{Network: n.Network, MAC: n.MAC.String(), Port: portName(name, i)})
	}
	for _, d := range e.vm.Devices {
		vm.Devices = append(vm.Devices, b.f.devices.status(name, d))
	}
	return vm, nil
}

func (b apiBackend) Leases() ([]api.Lease, error) {
	b.live.mu.Lock()
	cfg := b.live.cfg
	b.live.mu.Unlock()
	owner := map[string]string{}
	for _, vm := range cfg.VMs {
		for _, n := range vm.NICs {
			owner[n.MAC.String()] = vm.Name
		}
	}
	now := time.Now()
	var out []api.Lease
	for _, nw := range cfg.Networks {
		leases, err := dhcp.ReadLeases(filepath.Join(switchDir, nw.Name+".leases"))
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", nw.Name, err)
		}
		slices.SortFunc(leases, func(a, b dhcp.Lease) int { return a.IP.Compare(b.IP) })
		for _, l := range leases {
			if l.Expiry.Before(now) {
				continue
			}
			out = append(out, api.Lease{Network: nw.Name, IP: l.IP.String(), MAC: l.MAC.String(), VM: owner[l.MAC.String()],
				Hostname: l.Hostname, Expires: l.Expiry.UTC().Format(time.RFC3339)})
		}
	}
	return out, nil
}

func (b apiBackend) Networks() ([]api.Network, error) {
	b.live.mu.Lock()
	cfg := b.live.cfg
	b.live.mu.Unlock()
	leases, err := b.Leases()
	if err != nil {
		return nil, err
	}
	var out []api.Network
	for _, nw := range cfg.Networks {
		n := api.Network{Name: nw.Name, Subnet: nw.Subnet.String(), Gateway: nw.Gateway.String(), VLAN: nw.VLAN, Uplink: nw.Uplink, MTU: nw.MTU, Ports: []string{}}
		if nw.DHCP != nil {
			n.DHCP = nw.DHCP.From.String() + "-" + nw.DHCP.To.String()
		}
		for _, vm := range cfg.VMs {
			for i, nic := range vm.NICs {
				if nic.Network == nw.Name {
					n.Ports = append(n.Ports, fmt.Sprintf("%s.%d", vm.Name, i))
				}
			}
		}
		for _, l := range leases {
			if l.Network == nw.Name {
				n.Leases++
			}
		}
		out = append(out, n)
	}
	return out, nil
}

func (b apiBackend) Ports() []api.Port {
	if b.sw == nil {
		return nil
	}
	stats := b.sw.stats.snapshot()
	ports := make([]api.Port, 0, len(stats))
	for _, name := range slices.Sorted(maps.Keys(stats)) {
		c := stats[name]
		p := api.Port{Name: name, RxPackets: c.RxPackets, RxBytes: c.RxBytes, TxPackets: c.TxPackets, TxBytes: c.TxBytes}
		for r, n := range c.Drops {
			if n > 0 {
				if p.Drops == nil {
					p.Drops = map[string]uint64{}
				}
				p.Drops[vswitch.DropReason(r).String()] = n
			}
		}
		ports = append(ports, p)
	}
	return ports
}

// Capture asks the switch for a live capture of a port (switchcapture.go).
func (b apiBackend) Capture(port string) (api.Capture, error) {
	if b.sw == nil {
		return nil, fmt.Errorf("port %s: no switch runs (no network in the configuration): %w", port, api.ErrNotFound)
	}
	c, err := b.sw.Capture(port)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// entry is VM name's fleet entry, or the fleet's error as an ErrNotFound.
func (b apiBackend) entry(name string) (*vmEntry, error) {
	e, err := b.f.entry(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, api.ErrNotFound)
	}
	return e, nil
}

// lifecycle turns the fleet's errors into the API's kinds.
func (b apiBackend) lifecycle(name string, op func() error) error {
	if _, err := b.entry(name); err != nil {
		return err
	}
	if err := op(); err != nil {
		return fmt.Errorf("%w: %w", err, api.ErrConflict)
	}
	return nil
}

func (b apiBackend) Start(name string) error {
	return b.lifecycle(name, func() error { return b.f.StartVM(name) })
}

func (b apiBackend) Stop(name string) error {
	return b.lifecycle(name, func() error { return b.f.StopVM(name) })
}

func (b apiBackend) QoS(name, text string) (string, error) {
	if _, err := b.entry(name); err != nil {
		return "", err
	}
	var line string
	var err error
	if strings.TrimSpace(text) == "" {
		line, err = b.f.QoS(name, "")
	} else {
		// The same strict decoding as the configuration file's qos:
		// (JSON is YAML's flow style), so an API client gets the
		// same line:column messages.
		q, perr := config.ParseQoS("qos "+name, text)
		if perr != nil {
			return "", fmt.Errorf("%w: %w", perr, api.ErrInvalid)
		}
		line, err = b.f.setQoS(name, q)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, api.ErrConflict)
	}
	return line, nil
}

func (b apiBackend) Console(name string, tail int) (*api.Stream, error) {
	if _, err := b.entry(name); err != nil {
		return nil, err
	}
	past, r, cancel, err := b.f.consoles.subscribe(name, tail)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w (%d): %w", name, err, maxConsoleReaders, api.ErrBusy)
	}
	return &api.Stream{Past: past, Lines: r.lines, Dropped: r.dropped.Load, Close: cancel}, nil
}

func (b apiBackend) Send(name string, lines []string) error {
	if _, err := b.entry(name); err != nil {
		return err
	}
	for _, l := range lines {
		if err := b.f.Input(name, l); err != nil {
			return fmt.Errorf("%w: %w", err, api.ErrConflict)
		}
	}
	return nil
}

func (b apiBackend) CreateVM(text string) (api.VM, error) {
	r, err := b.live.addVM(b.f, text)
	if err != nil {
		return api.VM{}, err
	}
	if len(r.Started) != 1 {
		return api.VM{}, fmt.Errorf("vm: not added: %s: %w", r, api.ErrConflict)
	}
	name := r.Started[0]
	if why, failed := r.Failed[name]; failed {
		// A request that fails changes nothing: the VM goes again.
		if _, err := b.live.removeVM(b.f, name); err != nil {
			b.f.c.Errorf("api", fmt.Errorf("vm %s did not start and could not be removed again: %w", name, err))
		}
		return api.VM{}, fmt.Errorf("vm %s did not start (%s): not added: %w", name, why, api.ErrConflict)
	}
	return b.VM(name)
}

func (b apiBackend) DeleteVM(name string) error {
	_, err := b.live.removeVM(b.f, name)
	return err
}

func (b apiBackend) Config() string {
	b.live.mu.Lock()
	defer b.live.mu.Unlock()
	return b.live.text
}

func (b apiBackend) PutConfig(text string) (api.ConfigResult, error) {
	return b.live.apply(b.f, text)
}

func (b apiBackend) Restart(name string) error {
	return b.lifecycle(name, func() error {
		if err := b.f.StopVM(name); err != nil {
			return err
		}
		return b.f.StartVM(name)
	})
}

// serveAPI serves the API on api.SocketPath, and on the network when a
// says so, for as long as the appliance runs: a server that fails is
// started again (after a pause, so that a persistent failure does not
// spin), and the VMs never depend on it.
func serveAPI(c *console, b api.Backend, metrics http.Handler, a *config.API) {
	h := apiMux(b, metrics)
	keep := func(what string, serve func() error) {
		goGuarded(c, "api", func() {
			for {
				c.Errorf(what, serve())
				time.Sleep(5 * time.Second)
			}
		})
	}
	keep("api", func() error { return listenAPI(api.SocketPath, h) })
	if a != nil && a.Listen != "" {
		keep("api "+a.Listen, func() error { return listenAPINet(c, a, h, apiDataDir) })
	}
}

// apiMux is what both listeners serve: the API of b, and metrics at
// /metrics.
func apiMux(b api.Backend, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle("/", api.Handler(b))
	return mux
}

// listenAPI serves h on a unix socket at path that only root may use, until
// the server fails.
func listenAPI(path string, h http.Handler) error {
	l, err := listenPrivate(path)
	if err != nil {
		return err
	}
	defer l.Close()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(l)
}

// listenPrivate listens on a unix socket at path that only root may
// connect to, with no moment at which another uid could: it is made in a
// fresh directory only root can enter, made 0600 there, then renamed into
// place (replacing a stale one). PID 1 never narrows its umask for this:
// the umask is the process's, and a VMM forked meanwhile (PID 1 starts the
// VMs as the API comes up) inherited 0177 once, which made its jail's
// directories 0600 and its reconnections to the switch fail for good.
func listenPrivate(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".listen-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	at := filepath.Join(tmp, filepath.Base(path))
	l, err := net.Listen("unix", at)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(at, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(at, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// listenAPINet serves h over TLS on a's listen address to holders of a's
// tokens, until the server fails. The certificate is the one kept in dir,
// made there at the first start.
func listenAPINet(c *console, a *config.API, h http.Handler, dir string) error {
	host, _ := os.Hostname()
	cert, made, replaced, err := api.LoadOrCreateCert(dir, []string{host})
	if err != nil {
		return fmt.Errorf("certificate in %s: %w", dir, err)
	}
	if replaced != nil {
		c.Printf("api: the certificate in %s could not be read (%v): made a new one; clients must pin it again", dir, replaced)
	}
	// IP_FREEBIND: an address given in listen may come later (DHCP),
	// and the listener is there when it does.
	lc := net.ListenConfig{Control: func(network, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if strings.HasSuffix(network, "6") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", a.Listen)
	if err != nil {
		return err
	}
	defer l.Close()
	tokens := make([]api.Token, len(a.Tokens))
	names := make([]string, len(a.Tokens))
	for i, t := range a.Tokens {
		tokens[i], names[i] = api.Token{Name: t.Name, SHA256: t.SHA256}, t.Name
	}
	// Whoever reaches the address decides how many requests are
	// refused and how many handshakes fail: those lines are limited.
	refused := newLineLimit(c.Printf, "api", "refused-request")
	audit := func(r api.Request) {
		if r.Who == "" {
			refused.printf(": refused %s %s from %s: no valid token (HTTP %d)", r.Method, r.Path, r.Remote, r.Code)
			return
		}
		c.Printf("api: %s: %s %s from %s: HTTP %d", r.Who, r.Method, r.Path, r.Remote, r.Code)
	}
	errs := newLineLimit(c.Printf, "api", "server-error")
	// The status page's files hold no data: served to anyone; every
	// request for data needs a token.
	routes := http.NewServeMux()
	status := api.StatusPage()
	for _, p := range api.StatusPaths() {
		routes.Handle(p, status)
	}
	routes.Handle("/", api.RequireToken(tokens, h, audit))
	srv := &http.Server{
		Handler:           routes,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(lineWriter(func(s string) { errs.printf(": %s", s) }), "", 0),
	}
	kept := "kept in " + dir
	if made {
		kept = "made now, " + kept
	}
	c.Printf("api: https://%s certificate %s (%s) tokens %s", a.Listen, api.Fingerprint(cert.Certificate[0]), kept, strings.Join(names, ","))
	return srv.ServeTLS(netutil.LimitListener(l, maxAPIConns), "", "")
}

// lineWriter hands each write (a log line) to a function, without its
// newline.
type lineWriter func(string)

func (w lineWriter) Write(p []byte) (int, error) {
	w(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
