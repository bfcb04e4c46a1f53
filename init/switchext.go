package main

// The "backend program conventions" of the vhost-user specification (QEMU,
// docs/interop/vhost-user.rst) for `hyperroot switch`, so that a management
// layer that knows how to run any vhost-user backend can run this one:
//
//	--print-capabilities  print {"type":"net"} (the vhost-user.json schema
//	                      defines no features for net backends) and exit 0,
//	                      ignoring every other argument
//	--socket-path PATH    serve one extra port: listen on PATH
//	--fd N                serve one extra port on the inherited socket N,
//	                      either listening (accept one frontend at a time)
//	                      or already connected (serve that frontend)
//
// --socket-path and --fd exclude each other, as the specification says.
// The extra port joins --network (default: the configuration's first
// network) with the address --mac. The MAC is required: a switch port
// enforces its NIC's source MAC (vswitch.AddVirtioPort takes one and drops
// frames from any other), so the frontend must be configured with the same
// address (QEMU: -device virtio-net-pci,mac=...). Everything else about
// the port is what a configured VM NIC gets: DHCP with address locking
// when the network serves DHCP, counters, --capture under its port name.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/net/vswitch"
)

// extVM names the configuration entry the extra port is built from. A
// configured VM name cannot contain a colon, so it never collides with
// one; the port is called "ext:vhost-user.0" in messages and for --capture.
const extVM = "ext:vhost-user"

// extFlags are the convention flags of `hyperroot switch`. Flag values are
// checked as they are parsed (a bad one is a usage error); what needs the
// configuration (the network, MAC clashes) is checked by startSwitchExt.
type extFlags struct {
	printCaps  bool
	socketPath extPath
	fd         extFD
	network    string
	mac        extMAC
}

// addExtFlags registers the convention flags on fs.
func addExtFlags(fs *flag.FlagSet) *extFlags {
	f := &extFlags{fd: extFD{n: -1}}
	f.socketPath.other = &f.fd.set
	f.fd.other = &f.socketPath.set
	fs.BoolVar(&f.printCaps, "print-capabilities", false, "print the vhost-user backend capabilities as JSON and exit")
	fs.Var(&f.socketPath, "socket-path", "serve one extra vhost-user port listening on this socket (excludes --fd)")
	fs.Var(&f.fd, "fd", "serve one extra vhost-user port on this inherited socket descriptor, listening or\n"+
		"connected (excludes --socket-path)")
	fs.StringVar(&f.network, "network", "", "network of the extra port (default: the configuration's first)")
	fs.Var(&f.mac, "mac", "MAC address of the extra port, required with --socket-path or --fd: the port only\n"+
		"forwards frames from this source address, so give the frontend's NIC the same one")
	return f
}

// extPath is --socket-path.
type extPath struct {
	path  string
	set   bool
	other *bool // --fd given
}

func (p *extPath) String() string { return p.path }
func (p *extPath) Set(s string) error {
	if *p.other {
		return errors.New("--socket-path and --fd exclude each other")
	}
	if s == "" {
		return errors.New("empty path")
	}
	p.path, p.set = s, true
	return nil
}

// extFD is --fd.
type extFD struct {
	n     int
	set   bool
	other *bool // --socket-path given
}

func (f *extFD) String() string {
	if f.n < 0 {
		return ""
	}
	return strconv.Itoa(f.n)
}

func (f *extFD) Set(s string) error {
	if *f.other {
		return errors.New("--socket-path and --fd exclude each other")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not a descriptor number: %w", err)
	}
	// 0, 1 and 2 are the standard streams by the conventions themselves.
	if n < 3 {
		return fmt.Errorf("descriptor %d is a standard stream, not a socket", n)
	}
	f.n, f.set = n, true
	return nil
}

// extMAC is --mac.
type extMAC struct{ mac net.HardwareAddr }

func (m *extMAC) String() string {
	if m.mac == nil {
		return ""
	}
	return m.mac.String()
}

func (m *extMAC) Set(s string) error {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return err
	}
	if len(mac) != 6 || mac[0]&1 != 0 || slices.Equal(mac, make(net.HardwareAddr, 6)) {
		return fmt.Errorf("%s is not a unicast Ethernet address", mac)
	}
	m.mac = mac
	return nil
}

// wantCapabilities reports whether args ask for --print-capabilities. It
// looks before flag parsing because the conventions say every other
// option and argument is then ignored, including ones this program does
// not know.
func wantCapabilities(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--print-capabilities", "-print-capabilities", "--print-capabilities=true", "-print-capabilities=true":
			return true
		}
	}
	return false
}

// capabilities is the VHostUserBackendCapabilities object of the
// vhost-user.json schema; Features is omitted while it is empty, as the
// schema defines no feature for net backends.
type capabilities struct {
	Type     string   `json:"type"`
	Features []string `json:"features,omitempty"`
}

// printCapabilities writes the capabilities of a net backend to w and
// returns the exit code.
func printCapabilities(w io.Writer) int {
	b, err := json.Marshal(capabilities{Type: "net"})
	if err == nil {
		_, err = fmt.Fprintf(w, "%s\n", b)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hyperroot switch: print capabilities: %v\n", err)
		return vmmcli.ExitError
	}
	return vmmcli.ExitPoweroff // 0
}

// extEndpoint is where the extra port's frontend comes from: a listening
// socket (--socket-path, or a listening --fd) or one connected frontend
// (a connected --fd).
type extEndpoint struct {
	l     *net.UnixListener
	c     *net.UnixConn
	where string // "socket=PATH" or "fd=N", for messages
}

func (e *extEndpoint) Close() {
	if e.l != nil {
		e.l.Close()
	}
	if e.c != nil {
		e.c.Close()
	}
}

// enabled reports whether an extra port was asked for.
func (f *extFlags) enabled() bool { return f.socketPath.set || f.fd.set }

// extNIC checks the extra port against cfg and returns its NIC entry.
func (f *extFlags) extNIC(cfg *config.Config) (config.NIC, error) {
	if f.mac.mac == nil {
		return config.NIC{}, errors.New("--mac is required with --socket-path or --fd (the port only forwards frames from that address)")
	}
	network := f.network
	if network == "" {
		if len(cfg.Networks) == 0 {
			return config.NIC{}, errors.New("the configuration has no network for the extra port")
		}
		network = cfg.Networks[0].Name
	}
	if !slices.ContainsFunc(cfg.Networks, func(n config.Network) bool { return n.Name == network }) {
		return config.NIC{}, fmt.Errorf("--network %s: no such network in the configuration", network)
	}
	for _, vm := range cfg.VMs {
		for i, nic := range vm.NICs {
			if slices.Equal(nic.MAC, f.mac.mac) {
				return config.NIC{}, fmt.Errorf("--mac %s is also vm %s nic %d's", f.mac.mac, vm.Name, i)
			}
		}
	}
	return config.NIC{Network: network, MAC: f.mac.mac}, nil
}

// open opens the extra port's endpoint. A socket path is listened on at
// once, before the switch says "ready", so that a frontend started on that
// word finds it.
func (f *extFlags) open() (*extEndpoint, error) {
	if f.socketPath.set {
		l, err := vhostuser.Listen(f.socketPath.path)
		if err != nil {
			return nil, err
		}
		return &extEndpoint{l: l, where: "socket=" + f.socketPath.path}, nil
	}
	return inheritedSocket(f.fd.n)
}

// inheritedSocket takes over descriptor fd, which must be a Unix stream
// socket: listening (a frontend will connect) or connected (the frontend's
// end of a socketpair). On success fd itself is closed, having been
// duplicated, so that it leaks into no child process; on error it is left
// to the caller.
func inheritedSocket(fd int) (*extEndpoint, error) {
	where := "fd=" + strconv.Itoa(fd)
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, fmt.Errorf("--fd %d: not a socket: %w", fd, err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("--fd %d: socket type: %w", fd, err)
	}
	if domain != unix.AF_UNIX || typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("--fd %d: not a Unix stream socket (domain %d, type %d)", fd, domain, typ)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return nil, fmt.Errorf("--fd %d: socket state: %w", fd, err)
	}
	if listening == 0 {
		c, err := vhostuser.FileConn(fd)
		if err != nil {
			return nil, err
		}
		unix.Close(fd)
		return &extEndpoint{c: c, where: where}, nil
	}
	// os.NewFile's finalizer would close fd behind our back: wrap a
	// duplicate, which net.FileListener duplicates again.
	d, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("--fd %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(d), "vhost-user")
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("--fd %d: %w", fd, err)
	}
	l, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return nil, fmt.Errorf("--fd %d: not a Unix listener", fd)
	}
	// The socket file (if any) belongs to whoever made the socket.
	l.SetUnlinkOnClose(false)
	unix.Close(fd)
	return &extEndpoint{l: l, where: where}, nil
}

// startSwitchExt is startSwitch plus the extra port of --socket-path or
// --fd. The port is built as a NIC of a VM named extVM, so that it gets
// exactly what configured NICs get (DHCP, address locking, lease reports,
// counters, capture); buildSwitch's own socket for that NIC in dir is
// closed at once, the port being served on the endpoint instead. confine,
// if not nil, runs once everything is built and before any port is served
// (switchJail.confine); its error stops the switch.
func startSwitchExt(f *extFlags, cfg *config.Config, dir string, capture map[string]string, logf func(string, ...any),
	confine func() error) (*runningSwitch, error) {
	started := func(rs *runningSwitch) (*runningSwitch, error) {
		if confine != nil {
			if err := confine(); err != nil {
				rs.Close()
				return nil, err
			}
		}
		rs.start()
		return rs, nil
	}
	if !f.enabled() {
		rs, err := buildSwitch(cfg, dir, capture, logf)
		if err != nil {
			return nil, err
		}
		return started(rs)
	}
	nic, err := f.extNIC(cfg)
	if err != nil {
		return nil, err
	}
	ep, err := f.open()
	if err != nil {
		return nil, err
	}
	withExt := *cfg
	withExt.VMs = append(slices.Clip(cfg.VMs), config.VM{Name: extVM, NICs: []config.NIC{nic}})
	rs, err := buildSwitch(&withExt, dir, capture, logf)
	if err != nil {
		ep.Close()
		return nil, err
	}
	p := rs.byMAC.load(nic.MAC.String())
	if p == nil { // buildSwitch makes a port of every NIC
		ep.Close()
		rs.Close()
		return nil, fmt.Errorf("extra port %s was not created", portName(extVM, 0))
	}
	name := portName(extVM, 0)
	if l := rs.nicListener[name]; l != nil {
		l.Close() // and removes the socket file
		delete(rs.nicListener, name)
	}
	os.Remove(vmmcli.NICDir(dir, extVM))
	if _, err := started(rs); err != nil {
		ep.Close()
		return nil, err
	}
	rs.serveExt(ep, p, name)
	logf("port %s %s network=%s mac=%s", name, ep.where, nic.Network, nic.MAC)
	return rs, nil
}

// serveExt serves the extra port on its endpoint: a listener like a
// configured NIC's socket, or the one connection a connected --fd brought.
// After that connection ends nobody can reach the port again; the switch
// keeps serving its other ports.
func (rs *runningSwitch) serveExt(ep *extEndpoint, p *vswitch.VirtioPort, name string) {
	log := newConnLog(rs.logf, name)
	rs.connLogs = append(rs.connLogs, log)
	if ep.l != nil {
		rs.listeners = append(rs.listeners, ep.l)
		go rs.serve(ep.l, p, log)
		return
	}
	go func() {
		log.printf(" connected")
		if err := vhostuser.Serve(ep.c, p); err != nil {
			log.printf(": %v", err)
		}
		log.printf(" disconnected")
	}()
}
