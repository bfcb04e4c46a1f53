package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/tap"
)

const (
	sumA = "785ad73908d0b721bfb8b83a35b6c03de312d95cb49708b69d2001ce2101fc4e"
	sumB = "0000000000000000000000000000000000000000000000000000000000000000"
)

func TestParseNetLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		kind string
		rep  netReport
		ok   bool
	}{
		{"guest: net received bytes=104857600 sha256=" + sumA + " mbps=18.5 from=10.20.0.101", "received", netReport{104857600, sumA, 18.5}, true},
		{"guest: net sent bytes=67108864 sha256=" + sumA + " mbps=16.6", "sent", netReport{67108864, sumA, 16.6}, true},
		{"[ 3.2] guest: net sent mbps=1e3 sha256=" + sumB + " bytes=0\r", "sent", netReport{0, sumB, 1000}, true}, // any order, prefixed
		{"guest: net sent bytes=1 sha256=" + sumA, "", netReport{}, false},                                        // no rate
		{"guest: net sent bytes=1 mbps=2", "", netReport{}, false},                                                // no sum
		{"guest: net sent sha256=" + sumA + " mbps=2", "", netReport{}, false},                                    // no count
		{"guest: net sent bytes=-1 sha256=" + sumA + " mbps=2", "", netReport{}, false},
		{"guest: net sent bytes=1x sha256=" + sumA + " mbps=2", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + strings.ToUpper(sumA) + " mbps=2", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + sumA[:63] + " mbps=2", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + sumA + " mbps=NaN", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + sumA + " mbps=+Inf", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + sumA + " mbps=-3", "", netReport{}, false},
		{"guest: net sent bytes=1 sha256=" + sumA + " mbps=1e999", "", netReport{}, false},
		{"guest: net ping 10.20.0.100 rtt_us=532", "", netReport{}, false},
		{"guest: net lease ip=10.20.0.100/24 router=10.20.0.1", "", netReport{}, false},
		{"guest: net ", "", netReport{}, false},
		{"", "", netReport{}, false},
	} {
		kind, rep, ok := parseNetLine(tc.line)
		if kind != tc.kind || rep != tc.rep || ok != tc.ok {
			t.Errorf("parseNetLine(%q) = %q, %+v, %v; want %q, %+v, %v", tc.line, kind, rep, ok, tc.kind, tc.rep, tc.ok)
		}
	}
}

// FuzzParseNetLine: guest output never panics the parser, and what it
// accepts is a report with usable figures.
func FuzzParseNetLine(f *testing.F) {
	f.Add("guest: net received bytes=104857600 sha256=" + sumA + " mbps=18.5 from=10.20.0.101")
	f.Add("guest: net sent bytes=67108864 sha256=" + sumA + " mbps=16.6")
	f.Add("guest: net sent bytes=1 sha256= mbps=0x1p-2")
	f.Add("guest: net ")
	for _, l := range extraLines {
		f.Add(l)
	}
	f.Add("guest: net udp size=64 sent=1e19 received=1 pps=1")
	f.Fuzz(func(t *testing.T, line string) {
		// The further tests' lines: a figure taken is a finite,
		// non-negative number, and only of a known test.
		var x netExtraReport
		parseExtraLine(line, &x)
		for _, v := range []float64{x.streamsMbps, x.rrP50, x.rrP99, x.rrTPS, x.udpPPS, float64(x.udpSent), float64(x.udpReceived)} {
			if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("%q gave %s", line, x)
			}
		}
		if len(x.have) > 1 {
			t.Fatalf("one line counted as %v", x.have)
		}
		kind, rep, ok := parseNetLine(line)
		if !ok {
			if kind != "" || rep != (netReport{}) {
				t.Fatalf("rejected line returned %q, %+v", kind, rep)
			}
			return
		}
		if (kind != "sent" && kind != "received") || rep.bytes < 0 || !isSHA256Hex(rep.sum) ||
			rep.mbps < 0 || math.IsNaN(rep.mbps) || math.IsInf(rep.mbps, 0) {
			t.Fatalf("accepted %q as %q %+v", line, kind, rep)
		}
	})
}

// TestNetBenchConfig: the configuration the switch reads parses, and says
// what the benchmark means: one DHCP network, a server and a client that
// streams the asked number of bytes, one NIC each with distinct MACs.
func TestNetBenchConfig(t *testing.T) {
	const bytes = 12345
	cfg, err := config.Parse("bench.yaml", []byte(netBenchConfig(bytes)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Networks) != 1 || cfg.Networks[0].DHCP == nil || cfg.Networks[0].Subnet.String() != netBenchSubnet {
		t.Fatalf("networks = %+v, want one DHCP network %s", cfg.Networks, netBenchSubnet)
	}
	if len(cfg.VMs) != 2 {
		t.Fatalf("%d VMs, want 2", len(cfg.VMs))
	}
	server, client := cfg.VMs[0], cfg.VMs[1]
	if !strings.Contains(server.Cmdline, "hyperroot.guest=net-server") {
		t.Errorf("server cmdline %q", server.Cmdline)
	}
	if !strings.Contains(client.Cmdline, "hyperroot.guest=net-client") ||
		!strings.Contains(client.Cmdline, fmt.Sprintf("hyperroot.netbytes=%d", bytes)) {
		t.Errorf("client cmdline %q", client.Cmdline)
	}
	for _, vm := range cfg.VMs {
		if len(vm.NICs) != 1 || vm.NICs[0].Network != netBenchNetwork || vm.CPUs != 1 || vm.Memory.String() != benchMemory {
			t.Errorf("vm %s: %+v", vm.Name, vm)
		}
	}
	if server.NICs[0].MAC.String() == client.NICs[0].MAC.String() {
		t.Errorf("both NICs have MAC %s", server.NICs[0].MAC)
	}
}

// TestNetArgv: each contender's VMM command line carries the VM's kernel,
// command line and NIC, attached to that contender's network.
func TestNetArgv(t *testing.T) {
	cfg, err := config.Parse("bench.yaml", []byte(netBenchConfig(1)))
	if err != nil {
		t.Fatal(err)
	}
	vm := cfg.VMs[1]
	mac := vm.NICs[0].MAC.String()
	sw := &switchNet{e: &env{hyperroot: "/bin/hyperroot"}, dir: "/run/b"}
	got := sw.Argv(vm)
	i := slices.Index(got, "--nic")
	if got[0] != "/bin/hyperroot" || got[1] != "vmm" || i < 0 || i+1 >= len(got) {
		t.Fatalf("hyperroot argv %q", got)
	}
	nic, err := vmmcli.ParseNIC(got[i+1])
	if err != nil || nic.Socket != "/run/b/client/0.sock" || nic.MAC.String() != mac {
		t.Errorf("--nic %q: %+v, %v", got[i+1], nic, err)
	}
	if slices.Contains(got, "--jail") {
		t.Errorf("hyperroot argv %q jails a VMM the benchmark starts itself", got)
	}
	if j := slices.Index(got, "--cmdline"); j < 0 || got[j+1] != vm.Cmdline {
		t.Errorf("hyperroot argv %q lacks the cmdline", got)
	}
	for _, vhost := range []bool{true, false} {
		br := &bridgeNet{taps: map[string]string{"client.0": "hrbtap7"}, vhost: vhost}
		q := strings.Join(br.Argv(vm), " ")
		for _, want := range []string{
			qemuPath + " -enable-kvm -cpu host -M pc -smp 1 -m 256 ",
			"-netdev tap,id=n0,ifname=hrbtap7,script=no,downscript=no,vhost=" + onOff(vhost) + " ",
			"-device virtio-net-pci,netdev=n0,mac=" + mac + ",romfile=",
			"-append " + vm.Cmdline,
		} {
			if !strings.Contains(q, want) {
				t.Errorf("qemu argv %q lacks %q", q, want)
			}
		}
	}
}

func transcript(lines ...string) netConsole {
	return collectNet(strings.NewReader(strings.Join(lines, "\n")+"\n"), nil)
}

// extraLines are a client's reports of the further tests, as
// image/guest/netbench.go prints them.
var extraLines = []string{
	"guest: net streams n=4 bytes=67108864 mbps=310.5",
	"guest: net rr n=5120 tps=1706 p50_us=540 p99_us=1630",
	"guest: net udp size=64 sent=90210 received=88000 pps=29333",
}

// TestParseExtraLine: the further tests' lines, each field checked; a line
// with a bad or missing field counts for nothing.
func TestParseExtraLine(t *testing.T) {
	nc := transcript(append([]string{"[ 9.1] guest: net streams n=4 bytes=1 mbps=NaN"}, extraLines...)...)
	x := nc.extra
	if x.streamsMbps != 310.5 || x.rrP50 != 540 || x.rrP99 != 1630 || x.rrTPS != 1706 || x.udpPPS != 29333 || x.udpSent != 90210 || x.udpReceived != 88000 {
		t.Errorf("parsed %s", x)
	}
	for _, bad := range []string{
		"guest: net streams n=4 bytes=1 mbps=NaN",
		"guest: net streams n=4 bytes=1 mbps=-1",
		"guest: net streams n=4 bytes=1",
		"guest: net rr n=1 tps=1 p50_us=1e999 p99_us=2",
		"guest: net udp size=64 sent=1 received=x pps=1",
		"guest: net udp size=64 sent=1e19 received=1 pps=1",
		"guest: net udp size=64 sent=1.5 received=1 pps=1",
		"guest: net udp",
		"guest: net sent bytes=1 sha256=00 mbps=1",
	} {
		var y netExtraReport
		parseExtraLine(bad, &y)
		if len(y.have) != 0 {
			t.Errorf("%q counted: %s", bad, y)
		}
	}
}

// TestJudgeNet: a round counts only when both guests reported the same
// stream of the asked size and powered off cleanly.
func TestJudgeNet(t *testing.T) {
	const want = 1000
	recv := func(n int, sum string) string {
		return fmt.Sprintf("guest: net received bytes=%d sha256=%s mbps=20.5 from=10.77.0.101", n, sum)
	}
	sent := func(n int, sum string) string {
		return fmt.Sprintf("guest: net sent bytes=%d sha256=%s mbps=19.0", n, sum)
	}
	const clean, crashed = unix.WaitStatus(0), unix.WaitStatus(4 << 8)
	for _, tc := range []struct {
		name           string
		server, client netConsole
		sws, cws       unix.WaitStatus
		mbps           float64
		err            string
	}{
		{"ok", transcript("guest: booted", "guest: net cpu role=server user=50", recv(want, sumA)), transcript(append([]string{"client| guest: net tcp rtt_us=900 cwnd=10", "client| guest: net irq role=client per_mib LOC=2.0", sent(want, sumA)}, extraLines...)...), clean, clean, 20.5, ""},
		{"no further tests", transcript("guest: booted", recv(want, sumA)), transcript(append([]string{sent(want, sumA)}, extraLines[:2]...)...), clean, clean, 0, `reported no "udp" test`},
		{"client failed", transcript("guest: booted"), transcript("guest: FAIL net-client: no server announcement: i/o timeout"),
			crashed, crashed, 0, "the client guest failed: guest: FAIL net-client"},
		{"server silent", transcript("guest: booted", "guest: net lease ip=10.77.0.100/24"), transcript(sent(want, sumA)),
			unix.WaitStatus(unix.SIGKILL), clean, 0, `reported nothing received (exit killed signal=SIGKILL); console ended with ["guest: booted"`},
		{"short", transcript(recv(want-1, sumA)), transcript(sent(want, sumA)), clean, clean, 0, "server guest received 999 bytes, want 1000"},
		{"corrupt", transcript(recv(want, sumB)), transcript(sent(want, sumA)), clean, clean, 0, "stream corrupted"},
		{"client crashed, server killed", transcript("guest: booted"), transcript("guest: booted", "hyperroot vmm: client: exits 700 (io 650, mmio 50)"),
			unix.WaitStatus(unix.SIGKILL), crashed, 0, `the client's VMM exited crash`},
		{"triple fault", transcript("guest: booted"), transcript("hyperroot vmm: client: crash after 40.4s (vCPU 0: triple fault)"),
			unix.WaitStatus(unix.SIGKILL), crashed, 0, "the guest triple-faulted: the client's (hyperroot vmm: client: crash"},
		{"crash after report", transcript(recv(want, sumA)), transcript(sent(want, sumA)), clean, crashed, 0, "client's VMM exited crash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := judgeNet(tc.server, tc.client, tc.sws, tc.cws, want)
			mbps := res.mbps
			if tc.err == "" {
				if err != nil || mbps != tc.mbps || res.extra.rrP50 != 540 || res.tcp != "rtt_us=900 cwnd=10" ||
					!slices.Equal(res.guest, []string{"cpu role=server user=50", "irq role=client per_mib LOC=2.0"}) {
					t.Fatalf("judgeNet = %v (tcp %q, guest %q), %v; want %v", mbps, res.tcp, res.guest, err, tc.mbps)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("judgeNet = %v, %v; want an error with %q", mbps, err, tc.err)
			}
		})
	}
}

func TestCollectNetTail(t *testing.T) {
	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("line %d\r", i))
	}
	nc := transcript(lines...)
	if len(nc.tail) != 8 || nc.tail[0] != "line 12" || nc.tail[7] != "line 19" {
		t.Errorf("tail = %q", nc.tail)
	}
}

func TestNetTable(t *testing.T) {
	got := netTable([]string{"hyperroot", "qemu"}, map[string][]float64{
		"hyperroot": {10, 30, 20},
		"qemu":      {40, 45, 5},
	})
	want := []string{
		"contender          mbps  (median Mbit/s of 3 rounds, TCP VM to VM; higher is better)",
		"hyperroot          20.0",
		"qemu               40.0",
		"ratio              0.50  (hyperroot/qemu)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("netTable:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := netTable([]string{"hyperroot", "qemu"}, map[string][]float64{"hyperroot": {1}}); !strings.HasPrefix(got[3], "ratio                 -") {
		t.Errorf("no qemu figure: %q", got[3])
	}
}

// inNewNetns runs fn on a locked thread moved into a fresh network
// namespace, so that the bridge and taps never touch the host's.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// TestBridgeNet builds the QEMU contender's network in a new namespace and
// plays a guest on it: a DHCP DISCOVER written into one tap must come back
// as an OFFER from the benchmark's range (the responder on the bridge works
// and the bridge forwards to the tap), and reach the other tap too (both
// are ports of one bridge). Close must remove bridge and taps.
func TestBridgeNet(t *testing.T) {
	testenv.Need(t, unix.Geteuid() == 0, "root (network namespaces, bridges, taps)")
	cfg, err := config.Parse("bench.yaml", []byte(netBenchConfig(1)))
	if err != nil {
		t.Fatal(err)
	}
	inNewNetns(t, func() {
		br, err := openBridgeNet(cfg, "hrtestbr0")
		if err != nil {
			t.Error(err)
			return
		}
		defer func() {
			if err := br.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			for _, name := range []string{"hrtestbr0", "hrbtap0", "hrbtap1"} {
				if _, err := net.InterfaceByName(name); err == nil {
					t.Errorf("%s still exists after Close", name)
				}
			}
		}()
		if len(br.taps) != 2 || br.taps["server.0"] == "" || br.taps["client.0"] == "" {
			t.Errorf("taps = %v", br.taps)
			return
		}
		a, err := tap.Open(br.taps["client.0"], tap.Options{})
		if err != nil {
			t.Error(err)
			return
		}
		defer a.Close()
		b, err := tap.Open(br.taps["server.0"], tap.Options{})
		if err != nil {
			t.Error(err)
			return
		}
		defer b.Close()
		mac := cfg.VMs[1].NICs[0].MAC
		discover, err := dhcpv4.NewDiscovery(mac)
		if err != nil {
			t.Error(err)
			return
		}
		frame := dhcpFrame(t, mac, discover.ToBytes())
		var offer *dhcpv4.DHCPv4
		var flooded bool
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && (offer == nil || !flooded) {
			// Repeat the DISCOVER: the first may meet a port that is
			// still coming up.
			if _, err := a.WriteBatch([][]byte{frame}); err != nil {
				t.Error(err)
				return
			}
			if offer == nil {
				offer = readDHCP(a, 68, time.Now().Add(500*time.Millisecond))
			}
			if !flooded {
				flooded = readDHCP(b, 67, time.Now().Add(200*time.Millisecond)) != nil
			}
		}
		if offer == nil {
			t.Error("no DHCP OFFER came back through the bridge")
			return
		}
		ip, _ := netip.AddrFromSlice(offer.YourIPAddr.To4())
		from, to := netip.MustParseAddr(netBenchFrom), netip.MustParseAddr(netBenchTo)
		if offer.MessageType() != dhcpv4.MessageTypeOffer || ip.Less(from) || to.Less(ip) {
			t.Errorf("reply %s offering %s, want an OFFER in %s-%s", offer.MessageType(), ip, from, to)
		}
		if !flooded {
			t.Error("the DISCOVER did not reach the other tap")
		}
	})
}

// dhcpFrame wraps a DHCP client message in Ethernet/IPv4/UDP broadcast,
// after the zero virtio_net_hdr a tap.Tap expects.
func dhcpFrame(t *testing.T, src net.HardwareAddr, payload []byte) []byte {
	eth := layers.Ethernet{SrcMAC: src, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	udp := layers.UDP{SrcPort: 68, DstPort: 67}
	if err := udp.SetNetworkLayerForChecksum(&ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, &eth, &ip, &udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append(make([]byte, tap.HdrLen), buf.Bytes()...)
}

// readDHCP reads frames from tp until deadline and returns the first DHCP
// message sent to UDP port dstPort, or nil.
func readDHCP(tp *tap.Tap, dstPort layers.UDPPort, deadline time.Time) *dhcpv4.DHCPv4 {
	tp.SetReadDeadline(deadline)
	buf := make([]byte, tap.HdrLen+2048)
	lens := []int{0}
	for {
		n, err := tp.ReadBatch([][]byte{buf}, lens)
		if err != nil || n == 0 {
			return nil
		}
		pkt := gopacket.NewPacket(buf[tap.HdrLen:lens[0]], layers.LayerTypeEthernet, gopacket.Default)
		udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || udp.DstPort != dstPort {
			continue
		}
		if m, err := dhcpv4.FromBytes(udp.Payload); err == nil {
			return m
		}
	}
}

// fakeVM plays a VMM for netPair: it prints lines, then exits with exit,
// or with hang waits until killed; asked for a dump, it prints dump's
// lines if it has any (hyperroot's VMM), as the dump's.
type fakeVM struct {
	lines []string
	exit  unix.WaitStatus
	hang  bool
	dump  []string
}

func fakeStarter(vms map[string]fakeVM) vmmStarter {
	return func(name string, _ []string) (*vmmRun, error) {
		vm := vms[name]
		pr, pw := io.Pipe()
		wait := make(chan unix.WaitStatus, 1)
		killed := make(chan struct{})
		var once sync.Once
		v := &vmmRun{wait: wait, console: make(chan netConsole, 1), booted: make(chan struct{}),
			kill:  func() { once.Do(func() { close(killed) }) },
			close: func() { pr.Close() }}
		if vm.dump != nil {
			v.dump = func() {
				for _, l := range append(vm.dump, "end") {
					fmt.Fprintln(pw, dumpLine+l)
				}
			}
		}
		go func() { v.console <- collectNet(pr, v.booted) }()
		go func() {
			for _, l := range vm.lines {
				fmt.Fprintln(pw, l)
			}
			ws := vm.exit
			if vm.hang {
				<-killed
				ws = unix.WaitStatus(unix.SIGKILL)
			}
			pw.Close()
			wait <- ws
		}()
		return v, nil
	}
}

// TestNetPair: the round's outcome from what the two VMMs do: both report
// and power off (a figure), one guest fails while the other waits for it
// (the waiter is killed at once, the failure named), both fall silent (a
// stall, after the timeout, with the dumps of the VMMs that dump: the
// benchmark runs a stall again only where it cannot be ours).
func TestNetPair(t *testing.T) {
	const want = 64
	recv := fmt.Sprintf("guest: net received bytes=%d sha256=%s mbps=12.5 from=10.77.0.101", want, sumA)
	sent := fmt.Sprintf("guest: net sent bytes=%d sha256=%s mbps=12.0", want, sumA)
	for _, tc := range []struct {
		name    string
		vms     map[string]fakeVM
		mbps    float64
		err     string
		stalled bool
		storm   bool
	}{
		{"ok", map[string]fakeVM{"server": {lines: []string{"guest: booted", recv}}, "client": {lines: append([]string{sent}, extraLines...)}}, 12.5, "", false, false},
		{"client fails, server waits", map[string]fakeVM{
			"server": {lines: []string{"guest: booted"}, hang: true},
			"client": {lines: []string{"guest: FAIL net-client: no server announcement"}, exit: unix.WaitStatus(4 << 8)},
		}, 0, "the client guest failed", false, false},
		{"both silent", map[string]fakeVM{
			"server": {lines: []string{"guest: booted"}, hang: true},
			"client": {lines: []string{"guest: net lease ip=10.77.0.101/24"}, hang: true},
		}, 0, `no result within 300ms; server console ended with ["guest: booted"], client's with ["guest: net lease`, true, false},
		{"both silent, dumped", map[string]fakeVM{
			"server": {lines: []string{"guest: booted"}, hang: true, dump: []string{"vcpu 0: halted"}},
			"client": {lines: []string{"guest: net lease ip=10.77.0.101/24"}, hang: true, dump: []string{"vcpu 0: runnable"}},
		}, 0, "client's with [\"guest: net lease ip=10.77.0.101/24\"]; the server VMM's dump:\nvcpu 0: halted; the client VMM's dump:\nvcpu 0: runnable", true, false},
		{"the client's guest in the test bed's storm", map[string]fakeVM{
			"server": {lines: []string{"guest: booted"}, hang: true, dump: []string{"vcpu 0: halted"}},
			"client": {lines: []string{"guest: net lease ip=10.77.0.101/24"}, hang: true,
				dump: []string{"vcpu 0: pf_guest+24120 exits+24120 insn_emulation+24120"}},
		}, 0, "the test bed's page-fault storm (the client's guest): stalled: no result", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res, err := netPair(fakeStarter(tc.vms), nil, nil, want, 300*time.Millisecond)
			mbps := res.mbps
			if time.Since(start) > 5*time.Second {
				t.Errorf("netPair took %s", time.Since(start))
			}
			if tc.err == "" {
				if err != nil || mbps != tc.mbps {
					t.Fatalf("netPair = %v, %v; want %v", mbps, err, tc.mbps)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || errors.Is(err, errNetStalled) != tc.stalled ||
				errors.Is(err, errPageFaultStorm) != tc.storm {
				t.Fatalf("netPair = %v, %v; want an error with %q (stalled %v, storm %v)", mbps, err, tc.err, tc.stalled, tc.storm)
			}
		})
	}
}

// TestNetAgain: only the test bed's faults run a round again; a stall of
// a VMM whose dump blames nothing on the test bed is not retried.
func TestNetAgain(t *testing.T) {
	stall := fmt.Errorf("%w: no result within 4m0s", errNetStalled)
	storm := fmt.Errorf("%w (the client's guest): %w", errPageFaultStorm, stall)
	triple := fmt.Errorf("%w: vCPU 1", errGuestTripleFault)
	for _, tc := range []struct {
		name            string
		err             error
		dumps, multiTCG bool
		want            bool
	}{
		{"ours stalled", stall, true, true, false},
		{"ours in the storm", storm, true, false, true},
		{"the peer stalled", stall, false, false, true},
		{"triple fault, multi-vCPU TCG", triple, true, true, true},
		{"triple fault elsewhere", triple, true, false, false},
		{"the guest failed", errors.New("the client guest failed"), false, true, false},
		{"a figure", nil, true, true, false},
	} {
		if got := netAgain(tc.err, tc.dumps, tc.multiTCG); got != tc.want {
			t.Errorf("%s: netAgain = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestTapCounters: a round's frames per tap, in the guest's direction (a
// tap's tx is the guest's rx), as the difference of two readings.
func TestTapCounters(t *testing.T) {
	dir := t.TempDir()
	old := sysClassNet
	sysClassNet = dir
	defer func() { sysClassNet = old }()
	write := func(tap string, tx, txb, rx, rxb int) {
		stats := filepath.Join(dir, tap, "statistics")
		if err := os.MkdirAll(stats, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]int{"tx_packets": tx, "tx_bytes": txb, "rx_packets": rx, "rx_bytes": rxb} {
			if err := os.WriteFile(filepath.Join(stats, name), []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("tap0", 10, 1000, 5, 300)
	write("tap1", 1, 100, 1, 100)
	var lines []string
	b := &bridgeNet{taps: map[string]string{"server.0": "tap0", "client.0": "tap1", "gone.0": "tap9"},
		logf: func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }}
	end, err := b.Start()
	if err != nil {
		t.Fatal(err)
	}
	write("tap0", 110, 9000, 25, 1300)
	end()
	want := []string{"bench: net tap client.0 rx=0/0 tx=0/0", "bench: net tap server.0 rx=100/8000 tx=20/1000"}
	if !slices.Equal(lines, want) {
		t.Errorf("lines %q, want %q", lines, want)
	}
	if _, err := readTapCounters(filepath.Join(dir, "tap9")); err == nil {
		t.Error("a missing tap read")
	}
}
