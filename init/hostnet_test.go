package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/netconf"
	"github.com/hyperroot/hyperroot/internal/netnstest"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/net/dhcp"
)

func TestPlanHostNet(t *testing.T) {
	dhcpHost := &config.Config{Host: &config.Host{Network: "lan", DHCP: true}}
	static := &config.Config{Host: &config.Host{Network: "lan", Address: netip.MustParsePrefix("10.20.0.1/24")}}
	none := &config.Config{}
	for _, tc := range []struct {
		name string
		cfg  *config.Config
		ip   string
		want hostPlan
		ok   bool
		err  string
	}{
		{"nothing", none, "", hostPlan{}, false, ""},
		{"config dhcp", dhcpHost, "", hostPlan{Device: "hr-host", DHCP: true, Source: "config"}, true, ""},
		{"config static", static, "", hostPlan{Device: "hr-host", Address: netip.MustParsePrefix("10.20.0.1/24"), Source: "config"}, true, ""},
		{"ip=dhcp on the host port", static, "dhcp", hostPlan{Device: "hr-host", DHCP: true, Source: "ip="}, true, ""},
		{"ip=dhcp without a host port", none, "dhcp", hostPlan{Device: "eth0", DHCP: true, Source: "ip="}, true, ""},
		{"ip= static overrides dhcp", dhcpHost, "10.20.0.5::10.20.0.1:255.255.255.0:box::off", hostPlan{
			Device: "hr-host", Address: netip.MustParsePrefix("10.20.0.5/24"), Gateway: netip.MustParseAddr("10.20.0.1"),
			Hostname: "box", Source: "ip="}, true, ""},
		{"ip= names the device", dhcpHost, ":::::eth1:dhcp", hostPlan{Device: "eth1", DHCP: true, Source: "ip="}, true, ""},
		{"ip=off keeps the config", static, "off", hostPlan{Device: "hr-host", Address: netip.MustParsePrefix("10.20.0.1/24"), Source: "config"}, true, ""},
		{"bad ip= keeps the config", dhcpHost, "10.0.0.300", hostPlan{Device: "hr-host", DHCP: true, Source: "config"}, true, "client-ip"},
		{"bad ip= and no config", none, "10.0.0.1:::::eth0:bootp", hostPlan{}, false, "autoconf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := planHostNet(tc.cfg, tc.ip)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want one containing %q", err, tc.err)
			}
			if ok != tc.ok || got != tc.want {
				t.Errorf("plan %+v %v, want %+v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// The namespace tests run in a child process of the test binary created
// in a network namespace of its own: hostNet's goroutines (and nclient4's)
// run on any thread, so moving one locked thread into a namespace would
// not contain them, and the tests must never touch the host's interfaces.
const hostNetChildEnv = "HYPERROOT_HOSTNET_CHILD"

// inChildNetns runs test name again in a child process in a new network
// namespace and reports whether the caller is that child, which then does
// the work.
func inChildNetns(t *testing.T) (child bool) {
	if os.Getenv(hostNetChildEnv) == t.Name() {
		return true
	}
	testenv.Need(t, unix.Geteuid() == 0, "root (network namespaces)")
	testenv.NeedTool(t, "ip", "iproute2")
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), hostNetChildEnv+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(err.Error(), "operation not permitted") {
			testenv.Need(t, false, "network namespaces: "+err.Error())
		}
		t.Fatalf("child in a new network namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("child did not pass:\n%s", out)
	}
	return false
}

// TestHostNetDHCP runs the supervisor's host-address code against the
// switch's DHCP server (net/dhcp's HandleFrame over AF_PACKET) on a veth
// pair whose client end is named hr-host, and checks with iproute2 that
// the leased address and the default route are set; that the lease is
// renewed; and that when hr-host is destroyed and created again, as a
// restarted switch does with its tap, address and route come back.
func TestHostNetDHCP(t *testing.T) {
	if inChildNetns(t) {
		hostNetChild(t)
	}
}

// ipTool runs iproute2 in the test's namespace, failing the test on error.
func ipTool(t *testing.T) func(args ...string) string {
	ip := testenv.NeedTool(t, "ip", "iproute2")
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ip, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// hostNetRun is a hostNet running in the background, with the console
// lines and errors it reported.
type hostNetRun struct {
	mu     sync.Mutex
	lines  []string
	errs   []string
	notify chan struct{}
	cancel func()
	done   chan struct{}
}

// startHostNetTest runs h, capturing its console output, until the test
// ends.
func startHostNetTest(t *testing.T, h *hostNet) *hostNetRun {
	r := &hostNetRun{notify: make(chan struct{}, 1), done: make(chan struct{})}
	h.printf = func(format string, a ...any) {
		r.mu.Lock()
		r.lines = append(r.lines, fmt.Sprintf(format, a...))
		r.mu.Unlock()
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
	h.errorf = func(step string, err error) {
		r.mu.Lock()
		r.errs = append(r.errs, step+": "+err.Error())
		r.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { defer close(r.done); h.run(ctx) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// waitApplied waits until hostNet has said n times that it configured an
// address, and checks that the n-th time it said want.
func (r *hostNetRun) waitApplied(t *testing.T, n int, want string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.lines...)
		errs := append([]string(nil), r.errs...)
		r.mu.Unlock()
		var applied []string
		for _, l := range got {
			if strings.HasPrefix(l, "host address ") && !strings.HasPrefix(l, "host address:") {
				applied = append(applied, l)
			}
		}
		if len(applied) >= n {
			if applied[n-1] != want {
				t.Fatalf("console line %d: %q, want %q (all: %q)", n, applied[n-1], want, got)
			}
			return
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no console line %d %q after 20 s; lines %q, errors %q", n, want, got, errs)
		}
	}
}

func (r *hostNetRun) checkNoErrors(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		t.Errorf("errors reported: %q", r.errs)
	}
}

// checkKernel checks with iproute2 that dev has address addr and the
// default route goes via router.
func checkKernel(t *testing.T, sh func(...string) string, dev, addr, router string) {
	t.Helper()
	if out := sh("-4", "addr", "show", dev); !strings.Contains(out, "inet "+addr+" ") || strings.Count(out, "inet ") != 1 {
		t.Errorf("%s has not exactly the address %s:\n%s", dev, addr, out)
	}
	if out := sh("-4", "route", "show", "default"); !strings.Contains(out, "default via "+router+" dev "+dev) {
		t.Errorf("no default route via %s:\n%s", router, out)
	}
}

// hostNetChild is TestHostNetDHCP inside the new namespace.
func hostNetChild(t *testing.T) {
	sh := ipTool(t)
	veth := func() {
		sh("link", "add", hostTap, "type", "veth", "peer", "name", "hr-srv")
		sh("link", "set", "hr-srv", "up")
	}
	sh("link", "set", "lo", "up")
	veth()

	var (
		mu   sync.Mutex
		acks int
	)
	srv, err := dhcp.New(dhcp.Config{
		Subnet:    netip.MustParsePrefix("10.77.0.0/24"),
		From:      netip.MustParseAddr("10.77.0.100"),
		To:        netip.MustParseAddr("10.77.0.199"),
		ServerMAC: net.HardwareAddr{0x02, 0x68, 0x72, 0, 0, 1},
		OnLease: func(net.HardwareAddr, netip.Addr) {
			mu.Lock()
			acks++
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopServer := netnstest.Serve(t, "hr-srv", srv.HandleFrame)
	defer func() { stopServer() }()

	r := startHostNetTest(t, &hostNet{
		plan:       hostPlan{Device: hostTap, DHCP: true, Source: "config"},
		renewAfter: 500 * time.Millisecond,
		dhcp:       netconf.DHCPOptions{Timeout: 500 * time.Millisecond, Retries: 4},
	})
	const want = "host address 10.77.0.100/24 router 10.77.0.1 (dhcp)"
	r.waitApplied(t, 1, want)
	checkKernel(t, sh, hostTap, "10.77.0.100/24", "10.77.0.1")

	// Renewals: the server ACKs again (REQUEST from the bound client),
	// and the same address stays without a new console line.
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		n := acks
		mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ACKs after 15 s with renewal every 500 ms", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkKernel(t, sh, hostTap, "10.77.0.100/24", "10.77.0.1")

	// The switch restarts: its tap goes, with address and route, and a
	// new one comes.
	stopServer()
	sh("link", "del", hostTap)
	veth()
	stopServer = netnstest.Serve(t, "hr-srv", srv.HandleFrame)
	r.waitApplied(t, 2, want)
	checkKernel(t, sh, hostTap, "10.77.0.100/24", "10.77.0.1")
	r.checkNoErrors(t)
}

// TestHostNetStatic applies an ip= static address with a gateway to
// hr-host, then has "the switch" put the configuration's address on it
// (as a restarted switch does with a static host address): the
// supervisor's ip= address must win again.
func TestHostNetStatic(t *testing.T) {
	if !inChildNetns(t) {
		return
	}
	sh := ipTool(t)
	sh("link", "add", hostTap, "type", "veth", "peer", "name", "hr-srv")
	plan, ok, err := planHostNet(&config.Config{Host: &config.Host{Network: "lan", Address: netip.MustParsePrefix("10.88.0.1/24")}},
		"10.88.0.5::10.88.0.1:255.255.255.0")
	if err != nil || !ok {
		t.Fatalf("plan: %v %v", ok, err)
	}
	r := startHostNetTest(t, &hostNet{plan: plan})
	const want = "host address 10.88.0.5/24 router 10.88.0.1 (static)"
	r.waitApplied(t, 1, want)
	checkKernel(t, sh, hostTap, "10.88.0.5/24", "10.88.0.1")

	// What the switch's hostPort does with the configuration's address.
	if err := netconf.SetAddress(hostTap, netip.MustParsePrefix("10.88.0.1/24")); err != nil {
		t.Fatal(err)
	}
	r.waitApplied(t, 2, want)
	checkKernel(t, sh, hostTap, "10.88.0.5/24", "10.88.0.1")
	r.checkNoErrors(t)
}
