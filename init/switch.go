package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/cliflag"
	"github.com/hyperroot/hyperroot/internal/netconf"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/dhcp"
	"github.com/hyperroot/hyperroot/net/pcap"
	"github.com/hyperroot/hyperroot/net/tap"
	"github.com/hyperroot/hyperroot/net/uplink"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/net/vswitch"
	"github.com/hyperroot/hyperroot/vmm/ratelimit"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// switchDir is where the supervisor's switch keeps its vhost-user sockets
// and lease files: tmpfs, so it survives a restart of the switch (leases
// stay stable) but not of the appliance.
const switchDir = "/run/hyperroot/switch"

// portName names a VM NIC's switch port in messages and for --capture.
func portName(vm string, index int) string { return fmt.Sprintf("%s.%d", vm, index) }

// hostTap is the name of the tap device of the appliance's host port.
const hostTap = "hr-host"

// switchMain is `hyperroot switch`: the userspace virtio-net switch for the
// networks and VM NICs of a configuration file. It serves one vhost-user
// socket per NIC, DHCP on networks with a range, the appliance's host port
// (a tap device) and the uplinks, until SIGTERM.
func switchMain(args []string) int {
	// vhost-user backend program conventions (switchext.go).
	if wantCapabilities(args) {
		return printCapabilities(os.Stdout)
	}
	// SIGTERM and SIGINT are handled from the start: a jailed switch is
	// the init of its PID namespace, for which the kernel drops a signal
	// that has no handler, so it must exit by itself. Ignoring
	// stopReadySignal tells the supervisor so (switchproc.go); a SIGTERM
	// that comes during set-up waits in sigc.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT)
	signal.Ignore(stopReadySignal)
	defer signal.Reset(unix.SIGTERM, unix.SIGINT, stopReadySignal) // for tests calling switchMain
	fs := flag.NewFlagSet("switch", flag.ContinueOnError)
	ext := addExtFlags(fs)
	var (
		cfgPath = fs.String("config", "", "configuration file with networks and VM NICs (required)")
		dir     = fs.String("dir", switchDir, "directory for the vhost-user sockets and DHCP lease files")
		jailID  = fs.Int("jail", 0, "jail the switch as this uid and gid once set up (it must run as root in the\n"+
			"namespaces the supervisor gives it: see switchproc.go)")
		scMode = fs.String("seccomp", vmmcli.DefaultSeccomp, "seccomp filter once set up: kill (a refused system call kills the switch),\n"+
			"log (it is logged, for development) or off")
		captures cliflag.Strings
	)
	fs.Var(&captures, "capture", "write a port's traffic to a pcap file, repeatable: PORT=FILE (ports are\n"+
		"<vm>.<nic index>, host, uplink:<ifname>)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: hyperroot switch --config FILE [--dir DIR] [--capture PORT=FILE]...\n"+
			"         [--socket-path PATH | --fd N] [--network NAME] [--mac MAC]\n"+
			"       hyperroot switch --print-capabilities\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return vmmcli.ExitUsage
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return vmmcli.ExitUsage
	}
	mode, err := seccomp.ParseMode(*scMode)
	if err != nil || *jailID < 0 {
		fmt.Fprintf(os.Stderr, "hyperroot switch: --seccomp %q --jail %d: want kill, log or off, and a uid other than 0\n", *scMode, *jailID)
		return vmmcli.ExitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "hyperroot switch: %v\n", err)
		return vmmcli.ExitError
	}
	data, err := os.ReadFile(*cfgPath)
	if err != nil {
		return fail(err)
	}
	cfg, err := config.Parse(*cfgPath, data)
	if err != nil {
		return fail(err)
	}
	capt := map[string]string{}
	for _, c := range captures {
		port, file, ok := strings.Cut(c, "=")
		if !ok || port == "" || file == "" {
			fmt.Fprintf(os.Stderr, "hyperroot switch: --capture %q: want PORT=FILE\n", c)
			return vmmcli.ExitUsage
		}
		capt[port] = file
	}
	// Plain lines on stdout: the supervisor relays them as "switch| <line>",
	// and "ready ..." tells it the sockets are served.
	logf := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	j := switchJail{id: *jailID, mode: mode, captures: len(capt) > 0, logf: logf}
	if j.dir, err = filepath.Abs(*dir); err != nil {
		return fail(err)
	}
	if err := j.prepare(cfg); err != nil {
		return fail(err)
	}
	s, err := startSwitchExt(ext, cfg, j.dir, capt, logf, j.confine)
	if err != nil {
		return fail(err)
	}
	stop := make(chan struct{})
	// "alive" now and after each healthy probe: the heartbeat PID 1
	// watches (switchproc.go), which catches a switch that cannot watch
	// itself (stopped, or its threads starved).
	fmt.Println(aliveLine)
	go s.sw.Watch(stop, watchEvery, watchRounds, func(ports []string) {
		fmt.Printf("stalled: a delivery into %s made no progress for %s: exiting, to be restarted\n",
			strings.Join(ports, ", "), (watchRounds-1)*watchEvery)
		os.Exit(vmmcli.ExitStalled)
	}, func() {
		// Each port's counters, then the heartbeat: PID 1 keeps the
		// last of each for /metrics and relays neither.
		s.reportPorts(func(p *vswitch.Port) { fmt.Println(statsPrefix + portReport(p)) })
		fmt.Println(aliveLine)
	})
	<-sigc
	close(stop)
	s.Close()
	return vmmcli.ExitPoweroff
}

// The switch's liveness check (vswitch.Switch.Watch): a port that holds one
// delivery for watchRounds probes watchEvery apart (20 to 30 s) has stopped
// every port that forwards to it while the process looks alive. The switch
// then exits with vmmcli.ExitStalled and its supervisor restarts it as it
// would a crashed one. Nothing legitimate holds a delivery for seconds: a
// port's receive signal and its writes do not block.
//
// Each probe that finds nothing stalled prints aliveLine, which PID 1 takes
// as the switch's heartbeat and does not relay: a switch that sends none
// for switchHungAfter is killed and restarted (reason=hung).
const (
	watchEvery  = 10 * time.Second
	watchRounds = 3
	aliveLine   = "alive"
	// statsPrefix starts a line of a port's counters (portReport), sent
	// with each heartbeat and not relayed.
	statsPrefix = "stats "
)

// runningSwitch is a switch serving a configuration.
type runningSwitch struct {
	sw        *vswitch.Switch
	logf      func(string, ...any)
	listeners []*net.UnixListener
	frames    []vswitch.Frames
	captures  []*pcap.Writer
	files     []*os.File
	connLogs  []*connLog // flushed at Close

	// The ports, for the counters report and the control socket's
	// requests; VM ports come and go with PID 1's requests
	// (switchcontrol.go), so mu guards them after start.
	mu          sync.Mutex
	ports       []*vswitch.Port
	nicListener map[string]*net.UnixListener // a VM port's socket, by port name
	added       int                          // VM ports added since start, against the jail's descriptors

	// The data path reads these at every frame (local) and DHCP ACK
	// (leased): copies replaced whole when a VM port comes or goes.
	dhcpOf cowMap[*vswitch.Port, *dhcp.Server]
	byMAC  cowMap[string, *vswitch.VirtioPort]

	// The networks and their DHCP servers, as built; read-only.
	nets    map[string]*vswitch.Network
	servers map[string]*dhcp.Server

	toServe  []func() // buildSwitch's ports, for start
	networks int      // for the ready line

	// Captures (switchcapture.go): PID 1's requests come on control.
	control *net.UnixListener
	tapsMu  sync.Mutex
	taps    map[string]*portTap // by port name
	live    atomic.Int32        // live captures streaming
}

// startSwitch builds the switch for cfg and starts serving. Errors about
// one piece (an uplink NIC that does not exist) stop the whole switch: a
// half-configured network would look like a working one.
func startSwitch(cfg *config.Config, dir string, capture map[string]string, logf func(string, ...any)) (*runningSwitch, error) {
	rs, err := buildSwitch(cfg, dir, capture, logf)
	if err != nil {
		return nil, err
	}
	rs.start()
	return rs, nil
}

// buildSwitch opens and makes everything the switch for cfg uses (its
// ports, sockets, tap, uplinks, DHCP servers) without serving the VM ports
// yet: start does, once the process has confined itself (switchJail).
func buildSwitch(cfg *config.Config, dir string, capture map[string]string, logf func(string, ...any)) (*runningSwitch, error) {
	rs := &runningSwitch{logf: logf, nicListener: map[string]*net.UnixListener{}}
	claims := openClaims6(filepath.Join(dir, claims6File), logf)
	rs.sw = vswitch.New(vswitch.Options{Local: rs.local, Fault: func(port string, v any, stack []byte) {
		logf("port %s: internal error: panic: %v (recovered; the port's transmit queue, or its receive backlog's waker, stopped until the VM resets the queue)\n%s", port, v, indentStack(stack))
	}, Claimed6: claims.claimed})
	ok := false
	defer func() {
		if !ok {
			rs.Close()
		}
	}()
	nets := map[string]*vswitch.Network{}
	servers := map[string]*dhcp.Server{}
	configured := map[string]config.Network{}
	for _, n := range cfg.Networks {
		configured[n.Name] = n
		nw, err := rs.sw.AddNetwork(n.Name, n.VLAN)
		if err != nil {
			return nil, err
		}
		nets[n.Name] = nw
		if n.DHCP == nil {
			continue
		}
		srv, err := dhcp.New(dhcp.Config{
			Subnet: n.Subnet, Router: n.Gateway, From: n.DHCP.From, To: n.DHCP.To,
			ServerMAC: switchMAC(n.Name), LeasePath: filepath.Join(dir, n.Name+".leases"),
			OnLease: rs.leased, OnNewLease: rs.logLease(n.Name),
		})
		if err != nil {
			return nil, fmt.Errorf("network %s: dhcp: %w", n.Name, err)
		}
		servers[n.Name] = srv
	}
	// The VM ports are served only once all exist and hold their IPv6
	// claims from before a restart: a guest must not take a neighbour's
	// address in between.
	type served struct {
		l    *net.UnixListener
		p    *vswitch.VirtioPort
		name string
	}
	var serve []served
	for _, vm := range cfg.VMs {
		for i, nic := range vm.NICs {
			name := portName(vm.Name, i)
			srv := servers[nic.Network]
			p, err := rs.sw.AddVirtioPort(name, vswitch.VirtioConfig{
				Network: nets[nic.Network], MAC: nic.MAC, LockIP: srv != nil,
				Limits: portLimits(nic.Limits),
			})
			if err != nil {
				return nil, err
			}
			rs.byMAC.store(nic.MAC.String(), p)
			rs.ports = append(rs.ports, p.Port)
			if srv != nil {
				rs.dhcpOf.store(p.Port, srv)
				// A lease granted before a restart of the switch still
				// holds: the guest keeps using its address.
				if ip, ok := srv.Lookup(nic.MAC); ok {
					p.AllowIP(ip)
				}
			}
			if err := rs.capture(p.Port, capture); err != nil {
				return nil, err
			}
			if i == 0 {
				if err := vmSocketDir(dir, vm); err != nil {
					return nil, err
				}
			}
			l, err := listenNIC(dir, vm, i)
			if err != nil {
				return nil, err
			}
			rs.nicListener[name] = l
			serve = append(serve, served{l, p, name})
		}
	}
	ports := map[string]*vswitch.VirtioPort{}
	for _, s := range serve {
		ports[s.name] = s.p
	}
	claims.restore(ports)
	for _, s := range serve {
		rs.toServe = append(rs.toServe, func() {
			log := newConnLog(logf, s.name)
			rs.connLogs = append(rs.connLogs, log)
			go rs.serve(s.l, s.p, log)
		})
	}
	rs.networks = len(cfg.Networks)
	rs.nets, rs.servers = nets, servers
	if h := cfg.Host; h != nil {
		if err := rs.hostPort(h, nets[h.Network], servers[h.Network], configured[h.Network].MTU, capture); err != nil {
			return nil, err
		}
	}
	if err := rs.uplinks(cfg, nets, capture); err != nil {
		return nil, err
	}
	if err := rs.listenControl(dir); err != nil {
		return nil, err
	}
	ok = true
	return rs, nil
}

// start serves the VM ports' sockets (their VMMs waited in the listeners'
// backlogs since buildSwitch) and says the switch is ready.
func (rs *runningSwitch) start() {
	for _, f := range rs.toServe {
		f()
	}
	rs.toServe = nil
	go rs.serveControl()
	rs.logf("ready networks=%d ports=%d", rs.networks, rs.byMAC.len())
}

// vmSocketDir makes the directory of vm's NIC sockets (vmmcli.NICDir),
// owned by the VM's jail uid and gid, 0700: the jail binds that directory,
// and only that one, into the VMM's root so that the VMM, no longer root,
// can reconnect after a restart of the switch, and no other VM can reach
// it (the switch's directory is its jail uid's, 0700). It is never removed while
// the VMM runs: the VMM's bind holds the directory itself, and a new one
// at the same path would not be seen through it. Run by a user other than
// root (by hand, on a host), the switch keeps it its own.
func vmSocketDir(dir string, vm config.VM) error {
	d := vmmcli.NICDir(dir, vm.Name)
	if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("vm %s: socket directory: %w", vm.Name, err)
	}
	st, err := os.Lstat(d)
	if err != nil {
		return fmt.Errorf("vm %s: socket directory: %w", vm.Name, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("vm %s: socket directory %s is not a directory", vm.Name, d)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		return fmt.Errorf("vm %s: socket directory: %w", vm.Name, err)
	}
	return ownByVM(d, vm)
}

// listenNIC listens on the socket of vm's NIC i, owned by the VM's jail
// uid and gid, 0600.
func listenNIC(dir string, vm config.VM, i int) (*net.UnixListener, error) {
	path := vmmcli.NICSocket(dir, vm.Name, i)
	l, err := vhostuser.Listen(path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("vm %s: socket: %w", vm.Name, err)
	}
	if err := ownByVM(path, vm); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// ownByVM gives path to vm's jail uid and gid, when the switch runs as
// root and the VM has one.
func ownByVM(path string, vm config.VM) error {
	if vm.ID <= 0 || os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(path, vm.ID, vm.ID); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return nil
}

// serve accepts the VMM of one NIC, one connection at a time: a VM that
// reconnects (after its VMM restarted) gets the port again. It ends when
// Close closes the listener (nothing waits for it: the switch exits then).
// A frontend the backend cuts off (vhost-user's Serve returns an error) is
// counted by the port (its report's cutoffs=) and may connect again; its
// lines are rate-limited by log, its connections by acceptRate.
func (rs *runningSwitch) serve(l *net.UnixListener, p *vswitch.VirtioPort, log *connLog) {
	pace := ratelimit.New(acceptRate, ratelimit.BucketConfig{}, nil)
	for {
		for !pace.Consume(1, 0) {
			time.Sleep(pace.Wait(1, 0))
		}
		c, err := l.AcceptUnix()
		if err != nil {
			return // closed
		}
		log.printf(" connected")
		if err := vhostuser.Serve(c, p); err != nil {
			log.printf(": %v", err)
		}
		c.Close()
		log.printf(" disconnected")
	}
}

// acceptRate paces each port's connections: after a burst of 20, five a
// second. A VMM connects once when it starts and once after a restart of
// the switch; a frontend that connects and hangs up, or gets itself cut
// off, in a loop would otherwise keep the switch's CPUs, which forward
// every other port's frames, busy with handshakes. Its next connection
// waits in the socket's backlog meanwhile.
var acceptRate = ratelimit.BucketConfig{Size: 20, RefillTime: 4 * time.Second}

// leased unlocks a port's new address when network's DHCP server ACKs it,
// and reports the lease.
// leased unlocks a leased address on the port of the MAC it was leased to,
// at every ACK (renewals included: the lock follows the lease).
func (rs *runningSwitch) leased(mac net.HardwareAddr, ip netip.Addr) {
	if p := rs.byMAC.load(mac.String()); p != nil {
		p.AllowIP(ip)
	}
}

// logLease reports new and changed leases on the console; renewals are
// not reported, so a guest renewing every few seconds cannot flood it.
func (rs *runningSwitch) logLease(network string) func(net.HardwareAddr, netip.Addr) {
	return func(mac net.HardwareAddr, ip netip.Addr) {
		port := "-"
		if p := rs.byMAC.load(mac.String()); p != nil {
			port = p.Name()
		}
		rs.logf("lease network=%s ip=%s mac=%s port=%s", network, ip, mac, port)
	}
}

// local answers DHCP requests: the switch's own service, before
// forwarding. Other frames pass on.
func (rs *runningSwitch) local(p *vswitch.Port, frame []byte) bool {
	srv := rs.dhcpOf.load(p)
	if srv == nil {
		return false
	}
	var out [1536]byte
	n, ok := srv.HandleFrame(frame, out[:])
	if !ok {
		return false
	}
	if err := p.Inject(out[:n]); err != nil {
		rs.logf("port %s: dhcp reply: %v", p.Name(), err)
	}
	return true
}

// hostPort puts the appliance's own IP stack on network nw through a tap
// device, with a static address. With address dhcp the tap stays without
// one: the supervisor (PID 1) holds the lease, since the tap and its
// address vanish whenever this process restarts (init/hostnet.go).
func (rs *runningSwitch) hostPort(h *config.Host, nw *vswitch.Network, srv *dhcp.Server, mtu int, capture map[string]string) error {
	t, err := tap.Open(hostTap, tap.Options{Offload: true, MAC: switchMAC("host:" + h.Network), MTU: mtu})
	if err != nil {
		return fmt.Errorf("host port: %w", err)
	}
	rs.frames = append(rs.frames, t)
	if !h.DHCP {
		if err := netconf.SetAddress(hostTap, h.Address); err != nil {
			return fmt.Errorf("host port: %w", err)
		}
	}
	p, err := rs.sw.AddFramePort("host", t, vswitch.FrameConfig{Networks: []*vswitch.Network{nw}, Offload: true})
	if err != nil {
		return err
	}
	rs.ports = append(rs.ports, p.Port)
	if srv != nil {
		rs.dhcpOf.store(p.Port, srv)
	}
	addr := h.Address.String()
	if h.DHCP {
		addr = "dhcp (by the supervisor)"
	}
	rs.logf("host port %s on network %s address %s", hostTap, h.Network, addr)
	return rs.capture(p.Port, capture)
}

// uplinks bridges networks to physical NICs: one AF_PACKET port per NIC,
// a trunk carrying every network that names it (tagged by VLAN id, the
// VLAN-0 network untagged).
func (rs *runningSwitch) uplinks(cfg *config.Config, nets map[string]*vswitch.Network, capture map[string]string) error {
	byNIC := map[string][]*vswitch.Network{}
	var names []string
	for _, n := range cfg.Networks {
		if n.Uplink == "" {
			continue
		}
		if byNIC[n.Uplink] == nil {
			names = append(names, n.Uplink)
		}
		byNIC[n.Uplink] = append(byNIC[n.Uplink], nets[n.Name])
	}
	sort.Strings(names)
	for _, ifname := range names {
		u, err := uplink.Open(ifname, uplink.Options{})
		if err != nil {
			return fmt.Errorf("uplink %s: %w", ifname, err)
		}
		rs.frames = append(rs.frames, u)
		ns := byNIC[ifname]
		trunk := len(ns) > 1 || ns[0].VLAN() != 0
		p, err := rs.sw.AddFramePort("uplink:"+ifname, u, vswitch.FrameConfig{Networks: ns, Trunk: trunk, Offload: true})
		if err != nil {
			return err
		}
		rs.ports = append(rs.ports, p.Port)
		rs.logf("uplink %s networks=%d trunk=%v", ifname, len(ns), trunk)
		if err := rs.capture(p.Port, capture); err != nil {
			return err
		}
	}
	return nil
}

// capture starts writing p's frames to a pcap file if capture names it.
func (rs *runningSwitch) capture(p *vswitch.Port, capture map[string]string) error {
	file, ok := capture[p.Name()]
	if !ok {
		return nil
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("capture %s: %w", p.Name(), err)
	}
	w, err := pcap.New(f, 0)
	if err != nil {
		f.Close()
		return fmt.Errorf("capture %s: %w", p.Name(), err)
	}
	rs.files = append(rs.files, f)
	rs.captures = append(rs.captures, w)
	rs.tap(p).add(w)
	rs.logf("capturing port %s to %s", p.Name(), file)
	return nil
}

// Close stops serving (listeners, frame ports, the switch, captures) and
// reports every port's counters.
func (rs *runningSwitch) Close() {
	rs.mu.Lock()
	for _, l := range rs.listeners {
		l.Close()
	}
	for _, l := range rs.nicListener {
		l.Close()
	}
	for _, l := range rs.connLogs {
		l.flush()
	}
	for _, p := range rs.ports {
		rs.logf("%s", portReport(p))
	}
	rs.mu.Unlock()
	rs.sw.Close()
	for _, f := range rs.frames {
		f.Close()
	}
	for _, w := range rs.captures {
		w.Close()
	}
	for _, f := range rs.files {
		f.Close()
	}
}

// portLimits turns a NIC's configured limits into the port's token
// buckets; a burst is given as a duration of each rate.
func portLimits(l config.NICLimits) vswitch.Limits {
	rate := func(bits, pps uint64) vswitch.Rate {
		r := vswitch.Rate{BitsPerSecond: bits, PacketsPerSecond: pps}
		if l.Burst > 0 {
			// Never below one whole 64 KiB TSO frame, which could
			// otherwise never pass.
			r.BurstBits = max(uint64(float64(bits)*l.Burst.Seconds()), 8*(64<<10+64))
			r.BurstPackets = max(uint64(float64(pps)*l.Burst.Seconds()), 1)
			if bits == 0 {
				r.BurstBits = 0
			}
			if pps == 0 {
				r.BurstPackets = 0
			}
		}
		return r
	}
	return vswitch.Limits{Rx: rate(l.RX, l.RXPPS), Tx: rate(l.TX, l.TXPPS)}
}

// portReport is a port's counters as one line: "port <name> rx=<packets>/
// <bytes> tx=<packets>/<bytes>", the non-zero drop counts by reason, the
// connections cut off ("cutoffs=<n>") and the frames that waited for the
// VM's receive buffers ("queued=<n>") if any.
func portReport(p *vswitch.Port) string { return formatPortReport(p.Name(), p.Counters()) }

// formatPortReport is portReport of a port's name and counters
// (parsePortReport reads it back).
func formatPortReport(name string, c vswitch.Counters) string {
	var b strings.Builder
	fmt.Fprintf(&b, "port %s rx=%d/%d tx=%d/%d", name, c.RxPackets, c.RxBytes, c.TxPackets, c.TxBytes)
	for r, n := range c.Drops {
		if n > 0 {
			fmt.Fprintf(&b, " %s=%d", vswitch.DropReason(r), n)
		}
	}
	if c.CutOffs > 0 {
		fmt.Fprintf(&b, " cutoffs=%d", c.CutOffs)
	}
	if c.RxQueued > 0 {
		fmt.Fprintf(&b, " queued=%d", c.RxQueued)
	}
	return b.String()
}

// switchMAC is the locally administered MAC the switch answers from on a
// network (DHCP), stable across restarts.
func switchMAC(network string) net.HardwareAddr {
	return config.DefaultMAC("hyperroot-switch "+network, 0)
}
