package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// TestQEMUVhostUserClient runs `hyperroot switch` on the host, outside the
// appliance, with two independent vhost-user frontends: two QEMUs booting
// the image's test guest with a virtio-net-pci NIC on the switch's
// sockets. The guests lease from the switch's DHCP server, find each other
// by broadcast, ping both ways and stream bytes over TCP; the consoles and
// the switch's own report must agree. It proves the switch speaks the
// vhost-user protocol as QEMU does, not just as hyperroot's VMM does.
//
// QEMU 7.2 under TCG has two quirks the command line works around:
//   - vectors=0 on the NIC: with MSI-X, starting vhost without KVM crashes
//     QEMU (SIGSEGV in msix_set_vector_notifiers from vhost_net_start); the
//     guest falls back to INTx, which QEMU relays from the call eventfds.
//   - no_timer_check on the guest's command line: two emulated CPUs on two
//     busy host cores sometimes fail the kernel's IO-APIC timer check and
//     panic before init.
func TestQEMUVhostUserClient(t *testing.T) {
	parallel(t)
	img := imageDir(t)
	qemuBin := testenv.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	goBin := testenv.NeedTool(t, "go", "golang")
	img, err := filepath.Abs(img)
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd := filepath.Join(img, "vmlinuz"), filepath.Join(img, "guest-initramfs.cpio")
	_, err = os.Stat(initrd)
	testenv.Need(t, err == nil, "no guest initramfs in "+img+": run go run ./tools/mkimage")

	const (
		netBytes = 1 << 20
		lan      = "10.20.0.0/24"
	)
	ctx, cancel := context.WithTimeout(context.Background(), waitCap)
	defer cancel()
	tmp := t.TempDir()

	// The switch, built from this checkout for the host.
	bin := filepath.Join(tmp, "hyperroot")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./init")
	build.Dir = root
	// As the appliance's binary: the switch's seccomp filter, on by
	// default, allows the Go runtime's calls, not those of cgo's C threads.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./init: %v\n%s", err, out)
	}
	vms := []struct{ name, mac, action string }{
		{"server", "52:54:00:48:52:01", "net-server"},
		{"client", "52:54:00:48:52:02", "net-client"},
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "networks:\n  - {name: lan, subnet: %s, dhcp: {from: 10.20.0.100, to: 10.20.0.199}}\nvms:\n", lan)
	for _, vm := range vms {
		// The kernel is never booted by the switch; the configuration
		// only needs one to be valid.
		fmt.Fprintf(&cfg, "  - name: %s\n    kernel: %s\n    nics:\n      - {network: lan, mac: \"%s\"}\n", vm.name, kernel, vm.mac)
	}
	cfgPath := filepath.Join(tmp, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(tmp, "switch")
	var all []*proc
	t.Cleanup(func() {
		for _, p := range all {
			for _, l := range p.Lines() {
				t.Logf("%s| %s", p.name, l)
			}
		}
	})
	capture := filepath.Join(tmp, "server.pcap")
	sw := startProc(t, ctx, "switch", bin, "switch", "--config", cfgPath, "--dir", sockDir,
		"--capture", "server.0="+capture)
	all = append(all, sw)
	if _, err := sw.waitLine(`^ready networks=1 ports=2$`, time.Minute); err != nil {
		t.Fatal(err)
	}

	started := time.Now()
	guests := map[string]*proc{}
	for _, vm := range vms {
		p := startProc(t, ctx, vm.name, qemuBin,
			"-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "256", "-nodefaults", "-nographic", "-no-reboot",
			"-object", "memory-backend-memfd,id=m,size=256M,share=on", "-numa", "node,memdev=m",
			"-chardev", "socket,id=c,path="+vmmcli.NICSocket(sockDir, vm.name, 0),
			"-netdev", "vhost-user,id=n,chardev=c",
			"-device", "virtio-net-pci,netdev=n,mac="+vm.mac+",vectors=0",
			"-kernel", kernel, "-initrd", initrd,
			"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet no_timer_check hyperroot.guest=%s hyperroot.netbytes=%d", vm.action, netBytes),
			"-serial", "stdio")
		all = append(all, p)
		guests[vm.name] = p
	}
	for _, vm := range vms {
		p := guests[vm.name]
		if _, err := p.waitLine(`guest: booted `, silence); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s booted %s after start", vm.name, p.firstAt(`guest: booted `).Sub(started).Round(time.Millisecond))
	}
	for _, vm := range vms {
		p := guests[vm.name]
		select {
		case <-p.done:
		case <-ctx.Done():
			t.Fatalf("%s (QEMU) still running after %s", vm.name, time.Since(started).Round(time.Second))
		}
	}
	t.Logf("both guests done %s after start", time.Since(started).Round(time.Millisecond))
	if err := sw.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sw.done:
	case <-time.After(10 * time.Second):
		t.Fatal("switch did not exit at SIGTERM")
	}

	// A frontend whose rings the backend never starts sees a NIC that
	// neither sends nor receives: say so before the guests' symptoms.
	if lineWith(sw.Lines(), `^port \S+ rx=\d+/\d+ tx=[1-9]`) == "" {
		t.Errorf("the switch received no frame from either QEMU: were their vrings started? (SET_VRING_ENABLE, SET_VRING_KICK)")
	}

	// Each guest leased an address of the range, and the switch reported
	// the same lease for its port.
	ips := map[string]netip.Addr{}
	for _, vm := range vms {
		lines := guests[vm.name].Lines()
		for _, l := range lines {
			if strings.Contains(l, "guest: FAIL") || strings.Contains(l, "Kernel panic") {
				t.Errorf("%s: %s", vm.name, l)
			}
		}
		s := field(lines, `guest: net lease `, "ip")
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatalf("%s: no lease on its console (%q)", vm.name, s)
		}
		ip := pfx.Addr()
		if pfx.Masked().String() != lan || ip.As4()[3] < 100 || ip.As4()[3] > 199 {
			t.Errorf("%s leased %s, want an address of 10.20.0.100-199/24", vm.name, pfx)
		}
		ips[vm.name] = ip
		want := fmt.Sprintf("lease network=lan ip=%s mac=%s port=%s.0", ip, vm.mac, vm.name)
		if lineWith(sw.Lines(), `^`+regexp.QuoteMeta(want)+`$`) == "" {
			t.Errorf("switch did not report %q", want)
		}
	}
	if ips["server"] == ips["client"] {
		t.Errorf("both guests leased %s", ips["server"])
	}

	// They pinged each other and the stream arrived whole.
	for _, pair := range [][2]string{{"server", "client"}, {"client", "server"}} {
		lines := guests[pair[0]].Lines()
		if lineWith(lines, `guest: net ping `+regexp.QuoteMeta(ips[pair[1]].String())+` rtt_us=\d+`) == "" {
			t.Errorf("%s did not ping %s (%s)", pair[0], pair[1], ips[pair[1]])
		}
	}
	var both []string
	for _, vm := range vms {
		for _, l := range guests[vm.name].Lines() {
			both = append(both, vm.name+"| "+l)
		}
	}
	checkStream(t, both, "client", "server", netBytes)
	if from := field(both, `^server\| guest: net received `, "from"); from != ips["client"].String() {
		t.Errorf("server received from %q, want the client %s", from, ips["client"])
	}

	// The switch's counters saw the stream go from the client's port to
	// the server's (rx is what the switch delivered to the guest).
	for _, c := range []struct{ port, dir string }{{"server.0", "rx"}, {"client.0", "tx"}} {
		s := field(sw.Lines(), `^port `+regexp.QuoteMeta(c.port)+` rx=`, c.dir)
		_, b, _ := strings.Cut(s, "/")
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < netBytes {
			t.Errorf("port %s %s=%s: want at least %d bytes", c.port, c.dir, s, netBytes)
		}
	}
	checkCapture(t, capture, netBytes)
	t.Logf("stream: %s; %s", field(both, `^client\| guest: net sent `, "mbps")+" Mbit/s sent",
		field(both, `^server\| guest: net received `, "mbps")+" Mbit/s received")
}

// proc is a program the test runs, its output (stdout and stderr) kept as
// lines, with the time each was read.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the output ended and the process was reaped

	mu    sync.Mutex
	lines []string
	at    []time.Time
	more  chan struct{} // closed and replaced at every new line
}

// startProc starts name's program; the test's cleanup kills it if it is
// still running and waits for it.
func startProc(t *testing.T, ctx context.Context, name, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.CommandContext(ctx, path, args...), done: make(chan struct{}), more: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	err = p.cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.add(strings.TrimRight(sc.Text(), "\r"))
		}
		r.Close()
		p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) add(line string) {
	p.mu.Lock()
	p.lines = append(p.lines, line)
	p.at = append(p.at, time.Now())
	close(p.more)
	p.more = make(chan struct{})
	p.mu.Unlock()
}

// Lines returns the output so far.
func (p *proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// firstAt returns when the first line matching pattern was read.
func (p *proc) firstAt(pattern string) time.Time {
	re := regexp.MustCompile(pattern)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, l := range p.lines {
		if re.MatchString(l) {
			return p.at[i]
		}
	}
	return time.Time{}
}

// waitLine waits up to d for a line matching pattern and returns it.
func (p *proc) waitLine(pattern string, d time.Duration) (string, error) {
	re := regexp.MustCompile(pattern)
	timeout := time.After(d)
	for seen := 0; ; {
		p.mu.Lock()
		lines, more := p.lines[seen:], p.more
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			if re.MatchString(l) {
				return l, nil
			}
		}
		select {
		case <-more:
		case <-p.done:
			if l := lineWith(p.Lines(), pattern); l != "" {
				return l, nil
			}
			return "", fmt.Errorf("%s ended without a line matching %q", p.name, pattern)
		case <-timeout:
			return "", fmt.Errorf("%s: no line matching %q within %s", p.name, pattern, d)
		}
	}
}

// checkCapture reads the pcap file the switch wrote for the server's port
// (with gopacket's own reader, independently of the writer): it must hold
// the DHCP exchange and the whole TCP stream to port 5001.
func checkCapture(t *testing.T, path string, streamBytes int64) {
	t.Helper()
	var frames, dhcpReplies int
	var payload int64
	eachFrame(t, path, false, func(pkt gopacket.Packet, _ gopacket.CaptureInfo) {
		frames++
		if udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && udp.SrcPort == 67 && udp.DstPort == 68 {
			dhcpReplies++
		}
		if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.DstPort == 5001 {
			payload += int64(len(tcp.Payload))
		}
	})
	t.Logf("capture of server.0: %d frames, %d DHCP replies, %d bytes of stream payload", frames, dhcpReplies, payload)
	if dhcpReplies < 2 {
		t.Errorf("capture has %d DHCP replies, want the OFFER and the ACK", dhcpReplies)
	}
	if payload < streamBytes {
		t.Errorf("capture has %d bytes of the stream, want %d", payload, streamBytes)
	}
}
