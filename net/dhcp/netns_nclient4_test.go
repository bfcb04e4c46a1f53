// This test drives HandleFrame with insomniacslk's real client (nclient4)
// across a veth pair into a new network namespace.

package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"golang.org/x/sys/unix"
)

func run(t *testing.T, args ...string) error {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// vethNetns creates network namespace ns with one end of a veth pair
// (client) inside it and the other (host) in the test's namespace, both up.
func vethNetns(t *testing.T, ns, host, client string) {
	t.Helper()
	ip := testenv.NeedTool(t, "ip", "iproute2")
	testenv.Need(t, os.Geteuid() == 0, "root, to create a network namespace and a veth pair")
	if err := run(t, ip, "netns", "add", ns); err != nil {
		testenv.Need(t, false, "network namespaces: "+err.Error())
	}
	t.Cleanup(func() {
		exec.Command(ip, "link", "del", host).Run()
		exec.Command(ip, "netns", "del", ns).Run()
	})
	if err := run(t, ip, "link", "add", host, "type", "veth", "peer", "name", client, "netns", ns); err != nil {
		testenv.Need(t, false, "veth in the kernel: "+err.Error())
	}
	for _, args := range [][]string{
		{ip, "link", "set", host, "up"},
		{ip, "-n", ns, "link", "set", "lo", "up"},
		{ip, "-n", ns, "link", "set", client, "up"},
	} {
		if err := run(t, args...); err != nil {
			t.Fatal(err)
		}
	}
}

// inNetns runs f on an OS thread switched into ns, so sockets f opens
// belong to ns, then switches the thread back.
func inNetns(t *testing.T, ns string, f func() error) error {
	t.Helper()
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, e := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if e != nil {
			err = e
			return
		}
		defer orig.Close()
		target, e := os.Open("/run/netns/" + ns)
		if e != nil {
			err = e
			return
		}
		defer target.Close()
		if e := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); e != nil {
			err = fmt.Errorf("setns %s: %w", ns, e)
			return
		}
		err = f()
		if e := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); e != nil {
			// Leave the thread locked: it dies with this goroutine
			// instead of serving others from the wrong namespace.
			err = fmt.Errorf("setns back: %w", e)
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	return err
}

// servePacket answers DHCP on ifname through an AF_PACKET socket, the way
// the switch's port loop calls HandleFrame, until stop is closed.
func servePacket(t *testing.T, s *Server, ifname string, stop chan struct{}) *sync.WaitGroup {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	proto := uint16(unix.ETH_P_ALL)
	proto = proto<<8 | proto>>8 // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind AF_PACKET to %s: %v", ifname, err)
	}
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer unix.Close(fd)
		in, out := make([]byte, 2048), make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, in, 0)
			if err != nil {
				continue // timeout: look at stop again
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue // our own reply
			}
			if m, ok := s.HandleFrame(in[:n], out); ok {
				if _, err := unix.Write(fd, out[:m]); err != nil {
					t.Errorf("send reply: %v", err)
				}
			}
		}
	}()
	return &wg
}

func TestRealClientOverVeth(t *testing.T) {
	id := os.Getpid() % 100000
	ns, host, client := fmt.Sprintf("hrdhcp%d", id), fmt.Sprintf("hrd%dh", id), fmt.Sprintf("hrd%dc", id)
	vethNetns(t, ns, host, client)

	var (
		mu     sync.Mutex
		leased []netip.Addr
	)
	cfg := Config{
		Subnet:    netip.MustParsePrefix("10.77.0.0/24"),
		From:      netip.MustParseAddr("10.77.0.100"),
		To:        netip.MustParseAddr("10.77.0.199"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("1.1.1.1")},
		ServerMAC: net.HardwareAddr{0x02, 0x68, 0x72, 0, 0, 1},
		LeasePath: t.TempDir() + "/leases",
		Log:       quiet,
		OnLease: func(_ net.HardwareAddr, ip netip.Addr) {
			mu.Lock()
			leased = append(leased, ip)
			mu.Unlock()
		},
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	wg := servePacket(t, s, host, stop)
	defer func() { close(stop); wg.Wait() }()

	var c *nclient4.Client
	if err := inNetns(t, ns, func() (err error) {
		c, err = nclient4.New(client, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		return err
	}); err != nil {
		t.Fatalf("nclient4 in %s: %v", ns, err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lease, err := c.Request(ctx)
	if err != nil {
		t.Fatalf("DHCP request: %v", err)
	}
	ack := lease.ACK
	got, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if got != cfg.From {
		t.Errorf("leased %v, want %v", got, cfg.From)
	}
	if r := ack.Router(); len(r) != 1 || !r[0].Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("router %v", r)
	}
	if m := ack.SubnetMask(); m.String() != net.CIDRMask(24, 32).String() {
		t.Errorf("mask %v", m)
	}
	if d := ack.DNS(); len(d) != 2 || !d[0].Equal(net.IPv4(10, 77, 0, 1)) || !d[1].Equal(net.IPv4(1, 1, 1, 1)) {
		t.Errorf("dns %v", d)
	}
	if lt := ack.IPAddressLeaseTime(0); lt != DefaultLeaseTime {
		t.Errorf("lease time %v", lt)
	}
	if sid := ack.ServerIdentifier(); !sid.Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("server id %v", sid)
	}
	if ip, ok := s.Lookup(ack.ClientHWAddr); !ok || ip != got {
		t.Errorf("Lookup(%v) = %v %v", ack.ClientHWAddr, ip, ok)
	}
	mu.Lock()
	if len(leased) != 1 || leased[0] != got {
		t.Errorf("OnLease saw %v", leased)
	}
	mu.Unlock()

	// A restarted switch (new Server on the same lease file) gives the
	// same VM the same address.
	close(stop)
	wg.Wait()
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop = make(chan struct{})
	wg = servePacket(t, s2, host, stop)
	lease2, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptHostName("again")))
	if err != nil {
		t.Fatalf("DHCP request after restart: %v", err)
	}
	if !lease2.ACK.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("after restart leased %v, want %v", lease2.ACK.YourIPAddr, ack.YourIPAddr)
	}
}
