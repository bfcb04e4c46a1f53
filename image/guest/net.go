package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/netconf"
)

// The network actions exercise the VM's virtio-net NIC through the switch:
//
//	net-dhcp      lease an address on eth0 and report it
//	net-server    lease, announce "hyperroot-server <ip>" by UDP broadcast on
//	              port 5000, accept one TCP connection on port 5001, ping the
//	              sender back, receive its stream, report size and sha256
//	net-client    lease, ping the gateway if hyperroot.pinggw=1, wait for a
//	              server's announcement, ping it, send
//	              hyperroot.netbytes= bytes (default 100 MiB) of a
//	              deterministic stream, report size, sha256 and throughput
//	              (with hyperroot.netextra=1 on both: then the further
//	              tests of netbench.go: 4 streams, request/response, UDP)
//	net-isolated  lease, and listen for announcements for 20 s: on a network
//	              of its own it must hear none
//	net-outside   lease, and connect to hyperroot.outside=<ip:port> (the
//	              world beyond the uplink), read its greeting, send it back
//	net-spoof     lease, then send frames with a forged source MAC, a
//	              forged source IP and a DHCP server reply (port security
//	              must drop all three)
//
// Every one reports on the console as "guest: net ..." lines.
var netActions = map[string]func(seed uint64) error{
	"net-dhcp":     func(uint64) error { _, err := lease(); return err },
	"net-server":   netServer,
	"net-client":   netClient,
	"net-isolated": netIsolated,
	"net-outside":  netOutside,
	"net-spoof":    netSpoof,
}

const (
	ifname       = "eth0"
	announcePort = 5000
	streamPort   = 5001
)

// netLease is what DHCP gave the guest.
type netLease struct {
	ip     netip.Prefix
	router netip.Addr
}

// lease brings eth0 up, gets an address by DHCP (insomniacslk's client),
// configures it with a default route through the router, and reports
// "guest: net lease ip=<ip/len> router=<ip> mtu=<the NIC's MTU>".
func lease() (netLease, error) {
	var l netLease
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := net.InterfaceByName(ifname); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return l, fmt.Errorf("no %s: is virtio_net loaded and the NIC on the bus?", ifname)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := netconf.Up(ifname); err != nil {
		return l, err
	}
	c, err := nclient4.New(ifname, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(10))
	if err != nil {
		return l, fmt.Errorf("dhcp client: %w", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ls, err := c.Request(ctx)
	if err != nil {
		return l, fmt.Errorf("dhcp: %w", err)
	}
	ack := ls.ACK
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok {
		return l, fmt.Errorf("dhcp: no address in the ACK")
	}
	bits, _ := ack.SubnetMask().Size()
	l.ip = netip.PrefixFrom(ip, bits)
	if rs := ack.Router(); len(rs) > 0 {
		l.router, _ = netip.AddrFromSlice(rs[0].To4())
	}
	if err := netconf.SetAddress(ifname, l.ip); err != nil {
		return l, err
	}
	if l.router.IsValid() {
		if err := netconf.AddDefaultRoute(l.router); err != nil {
			return l, err
		}
	}
	mtu := 0
	if ifc, err := net.InterfaceByName(ifname); err == nil {
		mtu = ifc.MTU
	}
	fmt.Printf("guest: net lease ip=%s router=%s mtu=%d\n", l.ip, l.router, mtu)
	return l, nil
}

// broadcastConn is a UDP socket allowed to send to 255.255.255.255.
func broadcastConn(port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func netServer(uint64) error {
	l, err := lease()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", streamPort))
	if err != nil {
		return err
	}
	defer ln.Close()
	stop := make(chan struct{})
	stopAnnounce := sync.OnceFunc(func() { close(stop) })
	defer stopAnnounce()
	go announce(l.ip.Addr(), stop)
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	// Ping the client back now: it powers off once it has sent all.
	peer := conn.RemoteAddr().(*net.TCPAddr).IP
	rtt, err := ping(peer)
	if err != nil {
		return fmt.Errorf("ping %s: %w", peer, err)
	}
	fmt.Printf("guest: net ping %s rtt_us=%d\n", peer, rtt.Microseconds())
	h := sha256.New()
	start := time.Now()
	cpu0, irq0 := readCPUTimes(), readIRQs()
	n, err := io.Copy(h, conn)
	if err != nil {
		return fmt.Errorf("receive: %w after %d bytes", err, n)
	}
	secs := time.Since(start).Seconds()
	conn.Close() // tells the client everything arrived
	if l := cpuSplit(cpu0, readCPUTimes()); l != "" {
		fmt.Printf("guest: net cpu role=server %s\n", l)
	}
	if l := irqSplit(irq0, readIRQs(), float64(n)/(1<<20), irqSources); l != "" {
		fmt.Printf("guest: net irq role=server per_mib %s\n", l)
	}
	fmt.Printf("guest: net received bytes=%d sha256=%s mbps=%.1f from=%s\n", n, hex.EncodeToString(h.Sum(nil)), float64(n)*8/secs/1e6, peer)
	if netExtra() {
		stopAnnounce() // the client has found us: no broadcasts beside the tests
		return serveExtra(ln.(*net.TCPListener))
	}
	return nil
}

// announce broadcasts the server's address every 300 ms until stop.
func announce(ip netip.Addr, stop chan struct{}) {
	c, err := broadcastConn(0)
	if err != nil {
		fmt.Printf("guest: net announce: %v\n", err)
		return
	}
	defer c.Close()
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: announcePort}
	msg := []byte("hyperroot-server " + ip.String())
	for {
		c.WriteToUDP(msg, dst)
		select {
		case <-stop:
			return
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// hearServer waits up to d for a server's announcement.
func hearServer(d time.Duration) (netip.Addr, error) {
	c, err := broadcastConn(announcePort)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 256)
	for {
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return netip.Addr{}, err
		}
		if s, ok := strings.CutPrefix(string(buf[:n]), "hyperroot-server "); ok {
			if ip, err := netip.ParseAddr(s); err == nil {
				return ip, nil
			}
		}
	}
}

// netBytes is hyperroot.netbytes= from the kernel command line.
func netBytes() int64 {
	n := int64(100 << 20)
	if v := cmdlineValue("hyperroot.netbytes"); v != "" {
		if x, err := strconv.ParseInt(v, 10, 64); err == nil && x > 0 {
			n = x
		}
	}
	return n
}

func netClient(seed uint64) error {
	l, err := lease()
	if err != nil {
		return err
	}
	if cmdlineValue("hyperroot.pinggw") == "1" && l.router.IsValid() {
		// The router is the appliance's host port: its own IP stack.
		rtt, err := ping(net.IP(l.router.AsSlice()))
		if err != nil {
			return fmt.Errorf("ping the gateway %s: %w", l.router, err)
		}
		fmt.Printf("guest: net ping %s rtt_us=%d\n", l.router, rtt.Microseconds())
	}
	server, err := hearServer(120 * time.Second)
	if err != nil {
		return fmt.Errorf("no server announcement: %w", err)
	}
	rtt, err := ping(net.IP(server.AsSlice()))
	if err != nil {
		return fmt.Errorf("ping %s: %w", server, err)
	}
	fmt.Printf("guest: net ping %s rtt_us=%d\n", server, rtt.Microseconds())
	conn, err := net.DialTimeout("tcp4", netip.AddrPortFrom(server, streamPort).String(), 30*time.Second)
	if err != nil {
		return err
	}
	total := netBytes()
	var key [32]byte
	key[0] = byte(seed)
	src := rand.NewChaCha8(key)
	h := sha256.New()
	buf := make([]byte, 64<<10)
	start := time.Now()
	cpu0, irq0 := readCPUTimes(), readIRQs()
	quarter := false
	for sent := int64(0); sent < total; {
		chunk := buf[:min(int64(len(buf)), total-sent)]
		src.Read(chunk)
		h.Write(chunk)
		if _, err := conn.Write(chunk); err != nil {
			conn.Close()
			return fmt.Errorf("send: %w after %d bytes", err, sent)
		}
		sent += int64(len(chunk))
		if !quarter && sent >= total/4 && sent < total {
			// For a test that acts in the middle of the stream
			// (tools/e2e startStream): it is under way.
			quarter = true
			fmt.Printf("guest: net under way sent=%d of %d\n", sent, total)
		}
	}
	// Half-close and wait for the server to close after it has read
	// everything: powering off with data still in the socket's send
	// buffer would lose it (and time only the buffering).
	tc := conn.(*net.TCPConn)
	if l := tcpInfoLine(tc); l != "" {
		fmt.Println(l)
	}
	if l := cpuSplit(cpu0, readCPUTimes()); l != "" {
		fmt.Printf("guest: net cpu role=client %s\n", l)
	}
	if l := irqSplit(irq0, readIRQs(), float64(total)/(1<<20), irqSources); l != "" {
		fmt.Printf("guest: net irq role=client per_mib %s\n", l)
	}
	if err := tc.CloseWrite(); err != nil {
		tc.Close()
		return err
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Minute))
	if _, err := io.Copy(io.Discard, tc); err != nil {
		tc.Close()
		return fmt.Errorf("waiting for the server to finish: %w", err)
	}
	tc.Close()
	secs := time.Since(start).Seconds()
	fmt.Printf("guest: net sent bytes=%d sha256=%s mbps=%.1f\n", total, hex.EncodeToString(h.Sum(nil)), float64(total)*8/secs/1e6)
	if netExtra() {
		return netExtraClient(netip.AddrPortFrom(server, streamPort), total/extraStreams)
	}
	return nil
}

func netIsolated(uint64) error {
	if _, err := lease(); err != nil {
		return err
	}
	ip, err := hearServer(20 * time.Second)
	if err == nil {
		return fmt.Errorf("heard server %s from another network", ip)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	fmt.Println("guest: net isolated heard=none")
	return nil
}

func netOutside(uint64) error {
	if _, err := lease(); err != nil {
		return err
	}
	target := cmdlineValue("hyperroot.outside")
	if target == "" {
		return errors.New("no hyperroot.outside=<ip:port> on the command line")
	}
	conn, err := net.DialTimeout("tcp4", target, 30*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if _, err := conn.Write(buf[:n]); err != nil {
		return err
	}
	fmt.Printf("guest: net outside %s said %q\n", target, strings.TrimSpace(string(buf[:n])))
	return nil
}

// ping sends one ICMP echo request to ip (retrying for 10 s) and returns
// the round-trip time of the first reply.
func ping(ip net.IP) (time.Duration, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1500)
	for seq := 1; time.Now().Before(deadline); seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("hyperroot")}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(b, &net.IPAddr{IP: ip}); err != nil {
			return 0, err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timed out: send the next request
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == ip.String() {
				return time.Since(start), nil
			}
		}
	}
	return 0, errors.New("no echo reply")
}

// tcpInfoLine is what the kernel says of the stream's connection once its
// bytes are written (TCP_INFO): its round trip, congestion window,
// retransmissions, segments and their average size, and how long the
// sender was limited by the receiver's window or its own buffer, which
// tells a VMM whose frame path is slow from one whose guests are: the
// network benchmark logs it per round. "" when the kernel will not say.
func tcpInfoLine(c *net.TCPConn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return ""
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		return ""
	}
	perSeg := uint64(0)
	if info.Data_segs_out > 0 {
		perSeg = info.Bytes_sent / uint64(info.Data_segs_out)
	}
	return fmt.Sprintf("guest: net tcp rtt_us=%d cwnd=%d mss=%d retrans=%d data_segs_out=%d bytes_per_seg=%d pacing_mbps=%.1f busy_ms=%d rwnd_limited_ms=%d sndbuf_limited_ms=%d",
		info.Rtt, info.Snd_cwnd, info.Snd_mss, info.Total_retrans, info.Data_segs_out, perSeg,
		float64(info.Pacing_rate)*8/1e6, info.Busy_time/1000, info.Rwnd_limited/1000, info.Sndbuf_limited/1000)
}

// cpuTimes is /proc/stat's "cpu" line: ticks in user (with nice), system,
// idle (with iowait), irq, softirq and steal.
type cpuTimes [6]uint64

var cpuTimeNames = [6]string{"user", "sys", "idle", "irq", "softirq", "steal"}

// readCPUTimes reads /proc/stat; the zero value when it cannot.
func readCPUTimes() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	return parseCPUTimes(string(b))
}

func parseCPUTimes(stat string) cpuTimes {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTimes{}
	}
	var v [8]uint64 // user nice system idle iowait irq softirq steal
	for i := range v {
		n, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return cpuTimes{}
		}
		v[i] = n
	}
	return cpuTimes{v[0] + v[1], v[2], v[3] + v[4], v[5], v[6], v[7]}
}

// cpuSplit is where the guest's CPUs went between two samples, in percent
// of all ticks ("user=40 sys=12 ..."): whether a guest that moved its
// bytes slowly was busy (and with what) or waiting. "" without ticks.
func cpuSplit(from, to cpuTimes) string {
	var d cpuTimes
	var total uint64
	for i := range d {
		if to[i] >= from[i] {
			d[i] = to[i] - from[i]
		}
		total += d[i]
	}
	if total == 0 {
		return ""
	}
	parts := make([]string, len(d))
	for i, n := range d {
		parts[i] = fmt.Sprintf("%s=%d", cpuTimeNames[i], n*100/total)
	}
	return strings.Join(parts, " ")
}
