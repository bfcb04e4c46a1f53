package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// The network tests give the test guests virtio-net NICs on the switch's
// networks. The guests' net-* actions (image/guest/net.go) lease an address
// from the switch's DHCP server, find each other by UDP broadcast, ping and
// stream bytes over TCP, and report on the console; the switch reports
// leases and, at power-off, every port's counters.

const (
	lanNet   = "  - {name: lan, subnet: 10.20.0.0/24, dhcp: {from: 10.20.0.100, to: 10.20.0.199}}\n"
	otherNet = "  - {name: other, subnet: 10.30.0.0/24, dhcp: {from: 10.30.0.100, to: 10.30.0.199}}\n"
)

// netVM is a config entry for the test guest with NICs (YAML flow mappings
// such as "{network: lan}") and extra kernel arguments.
func netVM(name, action string, nics []string, cmdline ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `  - name: %s
    cpus: 1
    memory: 192M
    kernel: /guest/vmlinux
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 panic=-1 quiet hyperroot.guest=%s %s
    restart: never
    nics:
`, name, action, strings.Join(cmdline, " "))
	for _, n := range nics {
		fmt.Fprintf(&b, "      - %s\n", n)
	}
	return b.String()
}

func netConfig(t testing.TB, networks string, vms ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte("networks:\n"+networks+"vms:\n"+strings.Join(vms, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// field returns the value of key=value in the first console line matching
// pattern, or "".
func field(lines []string, pattern, key string) string {
	re := regexp.MustCompile(pattern)
	kv := regexp.MustCompile(`\b` + key + `=(\S+)`)
	for _, l := range lines {
		if re.MatchString(l) {
			if m := kv.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

// lineWith returns the first console line matching pattern, or "".
func lineWith(lines []string, pattern string) string {
	re := regexp.MustCompile(pattern)
	for _, l := range lines {
		if re.MatchString(l) {
			return l
		}
	}
	return ""
}

// checkStream checks that the client's stream reached the server whole:
// same length (want bytes) and same sha256 on both ends.
func checkStream(t testing.TB, lines []string, client, server string, want int64) {
	t.Helper()
	sent := lineWith(lines, `^`+client+`\| guest: net sent `)
	got := lineWith(lines, `^`+server+`\| guest: net received `)
	if sent == "" || got == "" {
		t.Fatalf("stream not reported: client %q, server %q", sent, got)
	}
	t.Logf("%s\n%s", sent, got)
	for _, l := range []string{sent, got} {
		if n := field([]string{l}, ``, "bytes"); n != strconv.FormatInt(want, 10) {
			t.Errorf("%s: want bytes=%d", l, want)
		}
	}
	if a, b := field([]string{sent}, ``, "sha256"), field([]string{got}, ``, "sha256"); a == "" || a != b {
		t.Errorf("sha256 sent %s, received %s", a, b)
	}
}

// switchJailID is the switch's jail uid with the default VM id range
// (config.IDRange.SwitchID).
const switchJailID = 199999

// checkSwitchJailed checks that each start of the switch jailed itself (n
// starts) in the network namespace it should have (the host's with a tap
// or an uplink), and that its seccomp filter refused nothing: a normal run
// is never killed by it, nor in log mode logs a call.
func checkSwitchJailed(t testing.TB, lines []string, n int, hostNet bool) {
	t.Helper()
	netns := "own"
	if hostNet {
		netns = "host"
	}
	re := regexp.MustCompile(fmt.Sprintf(`^switch\| jailed uid=%d \(root [^,]+, landlock [^,]+, %s network namespace\)$`, switchJailID, netns))
	got := 0
	for _, l := range lines {
		if re.MatchString(l) {
			got++
		}
	}
	if got != n {
		t.Errorf("the switch said %d times it was jailed as %d in the %s network namespace, want %d (%q)",
			got, switchJailID, netns, n, lineWith(lines, `^switch\| jailed`))
	}
	if l := lineWith(lines, `hyperroot: switch (exited .*reason=seccomp|seccomp: logged)`); l != "" {
		t.Errorf("the switch's seccomp filter refused a call: %s", l)
	}
}

// TestNetTraffic: two VMs on one network lease addresses from the switch,
// find each other, ping both ways and move 100 MiB over TCP with matching
// checksums; a third VM on another network leases from that network's range
// and hears nothing of the first two.
func TestNetTraffic(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		const bytes = 100 << 20
		// lan with jumbo frames: the VMM announces the MTU to the guests.
		jumbo := strings.Replace(lanNet, "{name: lan,", "{name: lan, mtu: 9000,", 1)
		cfg := netConfig(t, jumbo+otherNet,
			netVM("server", "net-server", []string{"{network: lan}"}),
			netVM("client", "net-client", []string{"{network: lan}"}, fmt.Sprintf("hyperroot.netbytes=%d", bytes)),
			netVM("loner", "net-isolated", []string{"{network: other}"}))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true})
		r := m.Wait()
		mustPass(t, r)
		lines := r.Lines
		wantLines(t, lines, "switch| ready networks=2 ports=3", "loner| guest: net isolated heard=none")
		checkSwitchJailed(t, lines, 1, false)
		lease := map[string]string{}
		for _, vm := range []string{"server", "client", "loner"} {
			lease[vm] = strings.Split(field(lines, `^`+vm+`\| guest: net lease `, "ip"), "/")[0]
			if !hasLine(lines, `^switch\| lease network=\S+ ip=`+regexp.QuoteMeta(lease[vm])+` mac=\S+ port=`+vm+`\.0$`) {
				t.Errorf("the switch did not report %s's lease of %q", vm, lease[vm])
			}
		}
		for vm, prefix := range map[string]string{"server": "10.20.0.", "client": "10.20.0.", "loner": "10.30.0."} {
			if !strings.HasPrefix(lease[vm], prefix) {
				t.Errorf("%s leased %q, want an address of its network (%s*)", vm, lease[vm], prefix)
			}
		}
		if !hasLine(lines, `^server\| guest: net lease ip=10\.20\.0\.\d+/24 router=10\.20\.0\.1 mtu=9000$`) {
			t.Error("the lease does not carry the /24 mask and the gateway 10.20.0.1 as router, or the NIC's MTU is not lan's 9000")
		}
		if !hasLine(lines, `^loner\| guest: net lease .* mtu=1500$`) {
			t.Error("the NIC on network other does not have the default MTU 1500")
		}
		wantLines(t, lines, "client| guest: net ping "+lease["server"]+" ", "server| guest: net ping "+lease["client"]+" ")
		checkStream(t, lines, "client", "server", bytes)
		// TSO frames crossed the switch whole: the server received the
		// stream in far fewer frames than 1500-byte segments would take.
		report := lineWith(lines, `^switch\| port server\.0 rx=`)
		var pkts, octets int64
		if _, err := fmt.Sscanf(field([]string{report}, ``, "rx"), "%d/%d", &pkts, &octets); err != nil || pkts == 0 {
			t.Fatalf("no receive counters for server.0 in %q", report)
		}
		t.Logf("%s: %d bytes per frame on average", report, octets/pkts)
		if octets < bytes || octets/pkts < 9000 {
			t.Errorf("server.0 received %d bytes in %d frames: TSO frames were segmented (or lost)", octets, pkts)
		}
	})
}

// TestNetPolicy: port security and rate limits. A VM forging its source MAC
// or IP, or answering as a DHCP server, has every such frame dropped and
// counted; a client whose NIC is limited delivers that rate ± 10 %. The
// limit is set from what the path delivers unlimited, measured first in the
// same run (machines differ threefold in speed under TCG): 40 % of that,
// so the limiter, not the emulated path, decides the rate.
func TestNetPolicy(t *testing.T) {
	var free float64 // Mbit/s, unlimited
	testbed(t, func(t testing.TB) {
		const bytes = 8 << 20
		cfg := netConfig(t, lanNet,
			netVM("server", "net-server", []string{"{network: lan}"}),
			netVM("client", "net-client", []string{"{network: lan}"}, fmt.Sprintf("hyperroot.netbytes=%d", bytes)))
		r := start(t, qemu.Options{Config: cfg, Oneshot: true}).Wait()
		mustPass(t, r)
		checkStream(t, r.Lines, "client", "server", bytes)
		free, _ = strconv.ParseFloat(field(r.Lines, `^server\| guest: net received `, "mbps"), 64)
	})
	if free <= 0 {
		t.Fatal("no unlimited rate measured")
	}
	limitK := int(free * 0.4 * 1000) // kbit/s
	limit := float64(limitK) / 1000  // Mbit/s
	t.Logf("unlimited: %.1f Mbit/s; limit for the policy run: %.2f Mbit/s", free, limit)
	if limitK < 64 {
		t.Fatalf("the path delivered only %.2f Mbit/s unlimited: too slow to test a limit", free)
	}
	testbed(t, func(t testing.TB) {
		bytes := int64(limit * 1e6 / 8 * 12) // 12 s at the limit
		cfg := netConfig(t, lanNet,
			netVM("server", "net-server", []string{"{network: lan}"}),
			netVM("client", "net-client", []string{fmt.Sprintf("{network: lan, limits: {tx: %dK}}", limitK)}, fmt.Sprintf("hyperroot.netbytes=%d", bytes)),
			netVM("spoofer", "net-spoof", []string{"{network: lan}"}))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true})
		r := m.Wait()
		mustPass(t, r)
		lines := r.Lines
		wantLines(t, lines, "spoofer| guest: net spoof sent mac=3 ip=3 dhcp=3")
		report := lineWith(lines, `^switch\| port spoofer\.0 rx=`)
		t.Logf("%s", report)
		for _, reason := range []string{"spoofed_mac", "spoofed_ip", "rogue_dhcp"} {
			if n, _ := strconv.Atoi(field([]string{report}, ``, reason)); n < 3 {
				t.Errorf("switch counted %s=%d for the spoofer, want at least 3", reason, n)
			}
		}
		checkStream(t, lines, "client", "server", bytes)
		mbps, _ := strconv.ParseFloat(field(lines, `^server\| guest: net received `, "mbps"), 64)
		t.Logf("client limited to %.2f Mbit/s delivered %.2f Mbit/s (unlimited %.1f)", limit, mbps, free)
		if mbps < 0.9*limit || mbps > 1.1*limit {
			t.Errorf("client limited to %.2f Mbit/s delivered %.2f Mbit/s", limit, mbps)
		}
	})
}

// TestNetSwitchRestart: the switch is killed (as a crash would) while a
// client streams to a server; the supervisor restarts it, both VMMs
// reconnect, the guests keep their leases and the stream completes intact.
func TestNetSwitchRestart(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		m, pw := startStream(t, qemu.Options{})
		fmt.Fprintln(pw, "switch kill")
		lines := checkSwitchReplaced(t, m, "hyperroot: switch exited code=137 reason=killed signal=SIGKILL")
		// Jailed again after the restart, over what its jailed run
		// left in its directory, and the guests kept their leases.
		checkSwitchJailed(t, lines, 2, false)
	})
}

// streamBytes is what the client of startStream sends: at 50 Mbit/s about
// 7 s of stream.
const streamBytes = 40 << 20

// startStream starts an appliance (o, with its config and console input
// filled in) whose client VM streams streamBytes to a server VM through
// the switch, and returns once the stream is under way: the client has
// sent a quarter of it.
func startStream(t testing.TB, o qemu.Options) (*qemu.Machine, io.Writer) {
	t.Helper()
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	o.Config = netConfig(t, lanNet,
		netVM("server", "net-server", []string{"{network: lan}"}),
		netVM("client", "net-client", []string{"{network: lan, limits: {tx: 50M}}"}, fmt.Sprintf("hyperroot.netbytes=%d", streamBytes)))
	o.Oneshot, o.Stdin = true, pr
	m := start(t, o)
	expect(t, m, `^client\| guest: net under way sent=\d+ of \d+$`)
	return m, pw
}

// checkSwitchReplaced waits for the end of a startStream run in which the
// switch was replaced mid-stream, its exit reported as exit: the run
// passed, a second switch became ready, both VMMs reconnected and the
// stream arrived whole. It returns the console's lines.
func checkSwitchReplaced(t testing.TB, m *qemu.Machine, exit string) []string {
	t.Helper()
	r := m.Wait()
	mustPass(t, r)
	wantLines(t, r.Lines, exit)
	if n := strings.Count(strings.Join(r.Lines, "\n"), "switch| ready "); n != 2 {
		t.Errorf("switch became ready %d times, want 2 (start and restart)", n)
	}
	for _, vm := range []string{"server", "client"} {
		if !hasLine(r.Lines, `^`+vm+`\| vmm: virtio-net .* backend reconnected`) {
			t.Errorf("%s's VMM did not report reconnecting", vm)
		}
	}
	checkStream(t, r.Lines, "client", "server", streamBytes)
	return r.Lines
}

// TestNetSwitchHung: a switch that stops doing anything while its process
// lives (here stopped with SIGSTOP by the hyperroot.run job
// tools/e2e/freeze, mid-stream) sends no heartbeat; PID 1 kills it as hung
// after switchHungAfter (60 s) and starts another, the VMMs reconnect, and
// the guests' TCP stream completes intact.
func TestNetSwitchHung(t *testing.T) {
	parallel(t)
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "freeze", "freeze"), "./freeze")
	testbed(t, func(t testing.TB) {
		// 30 s without a heartbeat (three missed) instead of the
		// default minute: the test waits that long for the verdict.
		m, pw := startStream(t, qemu.Options{Overlay: overlay, Append: "hyperroot.run=/freeze/freeze hyperroot.switch.hung=30s"})
		fmt.Fprintln(pw, "@run go")
		expect(t, m, `^run\| freeze: switch pid=\d+ stopped$`)
		t.Log(expect(t, m, `hyperroot: switch hung: no heartbeat for \S+: killing it$`))
		lines := checkSwitchReplaced(t, m, "hyperroot: switch exited code=137 reason=hung")
		if hasLine(lines, `^switch\| alive$`) {
			t.Error("the switch's heartbeat reached the console")
		}
	})
}

// TestNetUplink: a VM on a network bridged to the appliance's eth0 (QEMU
// user networking, the outside world here) gets its address from that
// world's DHCP server and opens a TCP connection to a server on the host.
func TestNetUplink(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		echoed := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintln(c, "hello from outside")
			c.SetReadDeadline(time.Now().Add(time.Minute))
			l, _ := bufio.NewReader(c).ReadString('\n')
			echoed <- strings.TrimSpace(l)
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		cfg := netConfig(t, "  - {name: wan, subnet: 10.0.2.0/24, gateway: 10.0.2.2, uplink: eth0}\n",
			netVM("roamer", "net-outside", []string{"{network: wan}"}, fmt.Sprintf("hyperroot.outside=10.0.2.2:%d", port)))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, UserNet: true})
		r := m.Wait()
		mustPass(t, r)
		wantLines(t, r.Lines, "switch| uplink eth0 networks=1 trunk=false",
			`roamer| guest: net outside 10.0.2.2:`+strconv.Itoa(port)+` said "hello from outside"`)
		// The uplink's AF_PACKET socket works on in the jail, without
		// CAP_NET_RAW (checked when a socket is made, not used).
		checkSwitchJailed(t, r.Lines, 1, true)
		if !hasLine(r.Lines, `^roamer\| guest: net lease ip=10\.0\.2\.\d+/24 router=10\.0\.2\.2 mtu=1500$`) {
			t.Error("the VM did not lease from QEMU's DHCP server through the uplink")
		}
		select {
		case l := <-echoed:
			if l != "hello from outside" {
				t.Errorf("the VM echoed %q", l)
			}
		default:
			t.Error("the host's server never got the VM's echo")
		}
	})
}

// TestExampleLAN boots examples/lan.yaml, the configuration the README
// offers: the host port gets its static address, the client pings the
// appliance's own IP stack through it, then the server, and streams 16 MiB.
func TestExampleLAN(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		cfg, err := filepath.Abs("../../examples/lan.yaml")
		if err != nil {
			t.Fatal(err)
		}
		m := start(t, qemu.Options{Config: cfg, Oneshot: true})
		r := m.Wait()
		mustPass(t, r)
		lines := r.Lines
		wantLines(t, lines, "switch| host port hr-host on network lan address 10.20.0.1/24",
			"hyperroot: host address 10.20.0.1/24", "client| guest: net ping 10.20.0.1 ")
		checkSwitchJailed(t, lines, 1, true)
		checkStream(t, lines, "client", "server", 16<<20)
	})
}
