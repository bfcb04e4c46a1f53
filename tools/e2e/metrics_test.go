package e2e

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hyperroot/hyperroot/internal/metricstest"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestMetrics: /metrics, fetched from the host with `hyperroot ctl
// metrics` and parsed by Prometheus's own text parser, moves with the
// traffic: a client VM sends a stream to a server VM over the switch; once
// both have powered off the client's port counts at least the stream;
// both are started again through the API, send another stream, and the
// count grows by at least that much. The VMs' starts and exits are there
// too (TestCtlRemote checks a running VM's CPU time and memory), and
// `hyperroot ctl leases` lists the leases the switch gave both, and
// `hyperroot ctl networks` their network with both ports and leases; KVM's
// counts of the client's vCPUs (exits by reason, injected interrupts) are
// there once its VMM has ended, and a third VM's disk requests (bytes,
// requests, latency histograms by class) add up to what its guest moved.
func TestMetrics(t *testing.T) {
	parallel(t)
	api := newRemoteAPI(t)
	const bytes = 8 << 20
	cfg := configFile(t, api.config()+"networks:\n"+lanNet+"vms:\n"+
		netVM("server", "net-server", []string{"{network: lan}"})+
		netVM("client", "net-client", []string{"{network: lan}"}, fmt.Sprintf("hyperroot.netbytes=%d", bytes))+
		diskVM("disk", 1, "192M", "disk-rw-parallel", 3, []string{"{path: /tmp/par.img, size: 32M}"}))
	testbed(t, func(t testing.TB) {
		m := start(t, api.options(qemu.Options{Config: cfg}))
		api.connect(t, m)
		scrape := func() metricstest.Families {
			t.Helper()
			fams, err := metricstest.Parse(strings.NewReader(api.must(t, "metrics")))
			if err != nil {
				t.Fatalf("parse /metrics: %v", err)
			}
			return fams
		}
		// sent is what the client's port has taken from it so far, as
		// the switch last reported (every 10 s): polled until it is at
		// least want.
		sent := func(want float64) float64 {
			t.Helper()
			deadline := time.Now().Add(waitCap)
			for {
				got := scrape().Value("hyperroot_switch_port_bytes_total", "port=client.0", "dir=tx")
				if got >= want {
					return got
				}
				if time.Now().After(deadline) {
					t.Fatalf("the client's port counts %v bytes sent, want at least %v", got, want)
				}
				time.Sleep(2 * time.Second)
			}
		}
		// Round one: the streams the VMs send at boot.
		nth(t, m, fmt.Sprintf(`^server\| guest: net received bytes=%d `, bytes), 1)
		nth(t, m, `hyperroot: vm client exited code=0 reason=poweroff$`, 1)
		first := sent(bytes)
		fams := scrape()
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"hyperroot_vm_running", []string{"vm=client"}, 0},
			{"hyperroot_vm_starts_total", []string{"vm=client"}, 1},
			{"hyperroot_vm_exits_total", []string{"vm=client", "reason=poweroff"}, 1},
			{"hyperroot_switch_port_drops_total", []string{"port=client.0", "reason=spoofed_ip"}, 0},
		} {
			if got := fams.Value(c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		// KVM's counts, which the client's VMM reported as it ended: its
		// guest wrote its console through port I/O and halted when idle.
		for _, reason := range []string{"io", "halt"} {
			if got := fams.Value("hyperroot_vm_kvm_exits_total", "vm=client", "reason="+reason); got <= 0 {
				t.Errorf("hyperroot_vm_kvm_exits_total{vm=client,reason=%s} = %v, want some", reason, got)
			}
		}
		if got := fams.Value("hyperroot_vm_kvm_events_total", "vm=client", "event=irq_injections"); got <= 0 {
			t.Errorf("no interrupts injected into the client (%v)", got)
		}
		if got := fams.Value("hyperroot_switch_port_bytes_total", "port=server.0", "dir=rx"); got < bytes {
			t.Errorf("the server's port delivered %v bytes, want at least %d", got, bytes)
		}
		// The disk VM's requests as its VMM counted them, on a disk that
		// cgroup's io.stat cannot see (a file on tmpfs): every byte the
		// guest moved with O_DIRECT, and the few its kernel read when it
		// probed the disk.
		moved := expect(t, m, `^disk\| guest: parallel ok bytes=\d+`)
		nth(t, m, `hyperroot: vm disk exited code=0 reason=poweroff$`, 1)
		total, _ := strconv.ParseFloat(regexp.MustCompile(`bytes=(\d+)`).FindStringSubmatch(moved)[1], 64)
		fams = scrape()
		blk := func(name, op string) float64 {
			return fams.Value("hyperroot_vm_virtio_blk_"+name, "vm=disk", "disk=/tmp/par.img", "op="+op)
		}
		rw := blk("bytes_total", "read") + blk("bytes_total", "write")
		t.Logf("disk VM: guest moved %.0f bytes; its VMM counted %.0f read + %.0f written in %.0f + %.0f requests, %.0f flushes",
			total, blk("bytes_total", "read"), blk("bytes_total", "write"), blk("requests_total", "read"), blk("requests_total", "write"), blk("requests_total", "flush"))
		if rw < total || rw > total+1<<20 {
			t.Errorf("the disk's VMM counted %.0f bytes read and written, the guest moved %.0f", rw, total)
		}
		if blk("requests_total", "flush") < 1 || blk("errors_total", "write") != 0 || blk("errors_total", "read") != 0 {
			t.Errorf("disk flushes %v, write errors %v, read errors %v: want some, none, none",
				blk("requests_total", "flush"), blk("errors_total", "write"), blk("errors_total", "read"))
		}
		for _, op := range []string{"read", "write"} {
			h := fams.Histogram("hyperroot_vm_virtio_blk_request_seconds", "vm=disk", "disk=/tmp/par.img", "op="+op)
			if h == nil || float64(h.GetSampleCount()) != blk("requests_total", op) || h.GetSampleSum() <= 0 {
				t.Errorf("%s latency histogram %v does not hold the %v requests", op, h, blk("requests_total", op))
				continue
			}
			t.Logf("disk VM: mean %s latency %.0f µs", op, h.GetSampleSum()/float64(h.GetSampleCount())*1e6)
		}
		// The leases the switch granted them, from its lease file.
		leases := api.must(t, "leases")
		for _, vm := range []string{"server", "client"} {
			if !regexp.MustCompile(`(?m)^lan +10\.20\.0\.1\d\d +([0-9a-f]{2}:){5}[0-9a-f]{2} +` + vm + ` +20\d\d-`).MatchString(leases) {
				t.Errorf("no lease of %s in:\n%s", vm, leases)
			}
		}
		if n := fams.Value("hyperroot_network_leases", "network=lan"); n != 2 {
			t.Errorf("hyperroot_network_leases{network=lan} = %v, want the server's and the client's", n)
		}
		// The network they are on, with both ports and both leases.
		if nets := api.must(t, "networks"); !regexp.MustCompile(`(?m)^lan +10\.20\.0\.0/24 +10\.20\.0\.1 +10\.20\.0\.100-10\.20\.0\.199 +1500 +2 server\.0,client\.0$`).MatchString(nets) {
			t.Errorf("ctl networks:\n%s", nets)
		}
		// Round two: both started again through the API, the client's
		// port captured live from the host meanwhile.
		nth(t, m, `hyperroot: vm server exited code=0 reason=poweroff$`, 1)
		api.must(t, "vm", "start", "server")
		capture := startCapture(t, api, "client.0")
		expect(t, m, `^switch\| capture of port client\.0 started$`)
		api.must(t, "vm", "start", "client")
		nth(t, m, fmt.Sprintf(`^server\| guest: net received bytes=%d `, bytes), 2)
		nth(t, m, `hyperroot: vm client exited code=0 reason=poweroff$`, 2)
		second := sent(first + bytes)
		t.Logf("client.0 sent %.0f bytes after one stream, %.0f after two", first, second)
		capture.stop(t)
		dropped := expect(t, m, `^switch\| capture of port client\.0 ended dropped=\d+$`)
		checkLiveCapture(t, capture.path, bytes, dropped)
		fams = scrape()
		if got := fams.Value("hyperroot_vm_starts_total", "vm=client"); got != 2 {
			t.Errorf("client starts = %v, want 2", got)
		}
		powerButton(t, m)
	})
}

// liveCapture is `hyperroot ctl capture` running on the host, writing a
// port's frames to path.
type liveCapture struct {
	cmd    *exec.Cmd
	path   string
	stderr *strings.Builder
}

func startCapture(t testing.TB, api *remoteAPI, port string) *liveCapture {
	t.Helper()
	c := &liveCapture{path: filepath.Join(t.TempDir(), port+".pcap"), stderr: &strings.Builder{}}
	f, err := os.Create(c.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own descriptor
	c.cmd = exec.Command(api.bin, "ctl", "capture", port)
	c.cmd.Env = api.env(api.token)
	c.cmd.Stdout, c.cmd.Stderr = f, c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("hyperroot ctl capture %s: %s", port, c.stderr)
		}
	})
	return c
}

// stop interrupts the capture, as a person would; it must not have ended
// by itself before.
func (c *liveCapture) stop(t testing.TB) {
	t.Helper()
	c.cmd.Process.Signal(os.Interrupt)
	if err := c.cmd.Wait(); c.cmd.ProcessState.Exited() {
		t.Fatalf("hyperroot ctl capture ended by itself before it was interrupted (%v): %s", err, c.stderr)
	}
}

// checkLiveCapture reads a live capture back with gopacket's reader: the
// client's DHCP exchange (at its boot, when the capture could not have
// fallen behind) and its stream to the server. The capture may have
// dropped frames (a ring of a MiB between the switch and a reader across
// PID 1, TLS and QEMU's user network), which the switch counts; what it
// kept is whole frames. The last record may be cut where ctl was
// interrupted.
func checkLiveCapture(t testing.TB, path string, streamBytes int, endLine string) {
	t.Helper()
	var frames, dhcp int
	var stream tcpStreams
	eachFrame(t, path, true, func(pkt gopacket.Packet, _ gopacket.CaptureInfo) {
		frames++
		if udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && (udp.DstPort == 67 || udp.DstPort == 68) {
			dhcp++
		}
		if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.DstPort == 5001 {
			stream.add(tcp)
		}
	})
	payload := stream.bytes()
	t.Logf("live capture of client.0: %d frames, %d DHCP, %d of the stream's %d bytes; %s", frames, dhcp, payload, streamBytes, endLine)
	if dhcp < 4 {
		t.Errorf("live capture has %d DHCP frames, want DISCOVER, OFFER, REQUEST and ACK", dhcp)
	}
	if payload == 0 || payload > streamBytes {
		t.Errorf("live capture has %d bytes of a %d-byte stream", payload, streamBytes)
	}
	if strings.HasSuffix(endLine, " dropped=0") && payload != streamBytes {
		t.Errorf("live capture dropped nothing but has %d bytes of a %d-byte stream", payload, streamBytes)
	}
}

// tcpStreams counts the distinct bytes of TCP streams seen from one side,
// by sequence number: a segment the sender retransmitted (its ACK lost
// on the way back, say, to a full receive ring) is in a capture twice but
// in the stream once.
type tcpStreams map[layers.TCPPort]*tcpStream

type tcpStream struct {
	base   uint32      // sequence number of the stream's first byte
	ranges [][2]uint32 // [start, end) relative to base
}

func (s *tcpStreams) add(tcp *layers.TCP) {
	if *s == nil {
		*s = tcpStreams{}
	}
	f := (*s)[tcp.SrcPort]
	if f == nil {
		f = &tcpStream{base: tcp.Seq}
		(*s)[tcp.SrcPort] = f
	}
	if tcp.SYN {
		f.base = tcp.Seq + 1
	}
	if n := uint32(len(tcp.Payload)); n > 0 {
		start := tcp.Seq - f.base
		f.ranges = append(f.ranges, [2]uint32{start, start + n})
	}
}

// bytes is the number of distinct stream bytes over every stream.
func (s tcpStreams) bytes() int {
	total := 0
	for _, f := range s {
		slices.SortFunc(f.ranges, func(a, b [2]uint32) int { return cmp.Compare(a[0], b[0]) })
		var end uint32
		for i, r := range f.ranges {
			if i == 0 || r[0] > end {
				total += int(r[1] - r[0])
				end = r[1]
			} else if r[1] > end {
				total += int(r[1] - end)
				end = r[1]
			}
		}
	}
	return total
}

// TestCtlNICLifecycle: `hyperroot ctl` on the host drives a VM with a NIC
// through its life on a running appliance: it creates the VM (the switch
// adds its port), follows its console stream as it boots, gets a lease
// and streams to a server VM limited to 1 Mbit/s; it raises the limit to
// 8 Mbit/s with `config apply` while the stream runs (no restart); it
// stops the VM and deletes it (the switch takes the port off). The rates
// are measured on the client's own frames, captured live at its port
// (`ctl capture`) with the switch's timestamps: over 10 s before the
// change, at the old limit; over 10 s after, at least half as much again
// as the old limit and not above the new one. The new limit is far above
// what the emulated path carries when the machine is busy (2.85 Mbit/s
// was seen beside another test): the test shows the old limit gone, not
// the path's speed.
func TestCtlNICLifecycle(t *testing.T) {
	parallel(t)
	api := newRemoteAPI(t)
	const (
		streamBytes = 32 << 20 // more than the test lets through: it ends first
		before      = 1e6      // bit/s
		after       = 8e6
		window      = 10 * time.Second
	)
	client := func(limit string) string {
		return netVM("client", "net-client", []string{"{network: lan, limits: {tx: " + limit + "}}"}, fmt.Sprintf("hyperroot.netbytes=%d", streamBytes))
	}
	base := api.config() + "networks:\n" + lanNet + "vms:\n" + netVM("server", "net-server", []string{"{network: lan}"})
	cfg, vmFile, next := configFile(t, base), configFile(t, asMapping(client("1M"))), configFile(t, base+client("8M"))
	testbed(t, func(t testing.TB) {
		m := start(t, api.options(qemu.Options{Config: cfg}))
		api.connect(t, m)
		if out := api.must(t, "vm", "create", "-f", vmFile); !regexp.MustCompile(`^vm client running pid [1-9]\d*\n$`).MatchString(out) {
			t.Fatalf("vm create: %q", out)
		}
		expect(t, m, `^switch\| port client\.0 added network=lan mac=([0-9a-f]{2}:){5}[0-9a-f]{2}$`)
		capture := startCapture(t, api, "client.0")
		expect(t, m, `^switch\| capture of port client\.0 started$`)
		console := followConsole(t, api, "client")
		console.until(t, `^guest: net lease ip=10\.20\.0\.1\d\d/`)
		// It pings the server just before it streams.
		console.until(t, `^guest: net ping 10\.20\.0\.1\d\d rtt_us=`)
		time.Sleep(window + 3*time.Second)
		if out := api.must(t, "config", "apply", "-f", next); out != "config applied: nic-limits client unchanged server\n" {
			t.Errorf("config apply: %q", out)
		}
		expect(t, m, `^switch\| port client\.0 limits rx=0 tx=8000000 rxpps=0 txpps=0 burst=0$`)
		time.Sleep(window + 3*time.Second)
		capture.stop(t)
		expect(t, m, `^switch\| capture of port client\.0 ended dropped=0$`)
		early, late := streamRates(t, capture.path, window)
		t.Logf("client.0 sent %.2f Mbit/s limited to %.0f, then %.2f Mbit/s limited to %.0f", early/1e6, before/1e6, late/1e6, after/1e6)
		if early < 0.85*before || early > 1.15*before {
			t.Errorf("before the change: %.2f Mbit/s, limit %.0f", early/1e6, before/1e6)
		}
		if late < 1.5*before || late > 1.15*after {
			t.Errorf("after the change: %.2f Mbit/s, limit %.0f (before it, %.0f)", late/1e6, after/1e6, before/1e6)
		}
		if n := strings.Count(strings.Join(m.Lines(), "\n"), "hyperroot: vm client started "); n != 1 {
			t.Errorf("the client was started %d times, want once: the change must not restart it", n)
		}
		api.must(t, "vm", "stop", "client")
		if out := api.must(t, "vm", "delete", "client"); !strings.Contains(out, "client") {
			t.Errorf("vm delete: %q", out)
		}
		expect(t, m, `^switch\| port client\.0 removed$`)
		if nets := api.must(t, "networks"); !regexp.MustCompile(`(?m)^lan .* server\.0$`).MatchString(nets) {
			t.Errorf("networks after the delete:\n%s", nets)
		}
		if ports := api.must(t, "ports"); strings.Contains(ports, "client.0") {
			t.Errorf("ports after the delete:\n%s", ports)
		}
		powerButton(t, m)
	})
}

// asMapping turns a config list item ("  - name: x\n    key: ...") into
// the mapping alone, as `ctl vm create -f` takes it.
func asMapping(item string) string {
	lines := strings.Split(strings.TrimRight(item, "\n"), "\n")
	for i, l := range lines {
		lines[i] = l[min(4, len(l)):]
	}
	return strings.Join(lines, "\n") + "\n"
}

// consoleFollower is `hyperroot ctl vm console` running on the host.
type consoleFollower struct{ lines chan string }

func followConsole(t testing.TB, api *remoteAPI, vm string) *consoleFollower {
	t.Helper()
	cmd := exec.Command(api.bin, "ctl", "vm", "console", vm, "1000")
	cmd.Env = api.env(api.token)
	stream, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	f := &consoleFollower{lines: make(chan string, 10000)}
	go func() {
		sc := bufio.NewScanner(stream)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
	}()
	return f
}

// until reads the stream until a line matches pattern; the stream ending
// first (the appliance's watchdog stops a silent machine) fails the test.
func (f *consoleFollower) until(t testing.TB, pattern string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	for l := range f.lines {
		if re.MatchString(l) {
			return l
		}
	}
	t.Fatalf("the console stream ended before a line matched %q", pattern)
	return ""
}

// streamRates reads a live capture of a client's port and returns the
// rate (bit/s of whole frames) of its stream to the server's port 5001
// over window after its first frame and over window before its last,
// leaving a second out at each end.
func streamRates(t testing.TB, path string, window time.Duration) (early, late float64) {
	t.Helper()
	type frame struct {
		at   time.Time
		bits float64
	}
	var frames []frame
	eachFrame(t, path, true, func(pkt gopacket.Packet, ci gopacket.CaptureInfo) {
		if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.DstPort == 5001 {
			frames = append(frames, frame{ci.Timestamp, float64(ci.Length) * 8})
		}
	})
	if len(frames) < 2 || frames[len(frames)-1].at.Sub(frames[0].at) < 2*window+2*time.Second {
		t.Fatalf("live capture: %d frames of the stream, not %v of it", len(frames), 2*window+2*time.Second)
	}
	rate := func(from time.Time) float64 {
		var bits float64
		for _, f := range frames {
			if !f.at.Before(from) && f.at.Before(from.Add(window)) {
				bits += f.bits
			}
		}
		return bits / window.Seconds()
	}
	return rate(frames[0].at.Add(time.Second)), rate(frames[len(frames)-1].at.Add(-window - time.Second))
}

// eachFrame reads a capture file with gopacket's reader (independently of
// the switch's writer) and calls fn with each frame decoded as Ethernet.
// A live capture (cut, true) may end in a record cut where its reader was
// interrupted.
func eachFrame(t testing.TB, path string, cut bool, fn func(gopacket.Packet, gopacket.CaptureInfo)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("capture %s: %v", path, err)
	}
	for n := 0; ; n++ {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF || (cut && err == io.ErrUnexpectedEOF) {
			return
		}
		if err != nil {
			t.Fatalf("capture %s: frame %d: %v", path, n, err)
		}
		fn(gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy), ci)
	}
}

// TestTCPStreams: a capture's stream bytes are counted once however often
// the sender retransmitted them, across the sequence number's wrap, and
// per connection.
func TestTCPStreams(t *testing.T) {
	seg := func(src layers.TCPPort, seq uint32, syn bool, n int) *layers.TCP {
		return &layers.TCP{SrcPort: src, DstPort: 5001, Seq: seq, SYN: syn, BaseLayer: layers.BaseLayer{Payload: make([]byte, n)}}
	}
	var s tcpStreams
	isn := uint32(1<<32 - 1000) // the stream wraps
	s.add(seg(40000, isn, true, 0))
	s.add(seg(40000, isn+1, false, 1448))
	s.add(seg(40000, isn+1+1448, false, 1448))
	s.add(seg(40000, isn+1, false, 1448))          // retransmitted
	s.add(seg(40000, isn+1+1000, false, 1448+500)) // re-segmented, overlapping both
	s.add(seg(40000, isn+1+2896, false, 100))
	s.add(seg(40001, 7, true, 0))
	s.add(seg(40001, 8, false, 10))
	if got, want := s.bytes(), 2896+100+10; got != want {
		t.Fatalf("stream bytes %d, want %d", got, want)
	}
}
