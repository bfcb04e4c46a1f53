package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/seccomp"
	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// switchTrapEnv, when set, makes the test binary run as `hyperroot switch`
// (the supervisor runs its own binary for every role) and make a call its
// filter refuses, socket(AF_INET), as soon as the filter is loaded
// (testHookSwitchConfined). The switch must then run unjailed: a jailed one
// gets no environment.
const switchTrapEnv = "HYPERROOT_TEST_SWITCH_TRAP"

func trappingSwitch(args []string) int {
	testHookSwitchConfined = func() { unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0) }
	return switchMain(args)
}

// switchLan is the test's configuration: two VMs on a DHCP network.
const switchLan = `networks:
  - {name: lan, subnet: 10.20.0.0/24, dhcp: {from: 10.20.0.100, to: 10.20.0.199}}
vms:
  - {name: a, kernel: /k, nics: [{network: lan, mac: "52:54:00:00:00:0a"}]}
  - {name: b, kernel: /k, nics: [{network: lan, mac: "52:54:00:00:00:0b"}]}
`

// TestSwitchJailed runs the real switch as the supervisor does, jailed and
// under its seccomp filter, on the host: two peers play VMMs on its
// sockets, one leases an address by DHCP (the jailed switch rewrites its
// lease file) and broadcasts a frame the other receives, then the switch is
// killed and restarted (root again, over what its jailed run left) and the
// peers reconnect. Where the kernel log can be read, the filter runs in log
// mode and the test fails on any call it logs, naming it; otherwise in kill
// mode, where such a call kills the switch.
func TestSwitchJailed(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (namespaces, pivot_root, setuid, chown)")
	_, err := os.Stat("/proc/sys/kernel/seccomp/actions_avail")
	testenv.Need(t, err == nil, "the kernel has no seccomp filters")
	bin := testenv.JailableTest(t)
	tmp := t.TempDir()
	cfgPath := filepath.Join(tmp, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(switchLan), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(cfgPath, []byte(switchLan))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "switch")
	// What a switch taken over could have left for the next, root, one.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(tmp, "secret")
	os.WriteFile(secret, []byte("root's\n"), 0o600)
	os.Symlink(secret, filepath.Join(dir, claims6File))
	os.WriteFile(filepath.Join(dir, "a"), nil, 0o600) // where a's socket directory belongs

	out := &syncBuffer{}
	c := newConsole(out)
	// The kernel prints its seccomp records whether or not audit is
	// on, where it has audit at all.
	mode := seccomp.Kill
	kmsg, err := os.Open("/dev/kmsg")
	if err == nil {
		kmsg.Seek(0, 2)
		mode = seccomp.Log
	}
	sc := newSeccompLog(c, mode)
	if kmsg != nil {
		go sc.follow(kmsg)
		defer kmsg.Close()
	}
	st := switchStart{cfgPath: cfgPath, cfg: cfg, seccomp: sc, path: bin, dir: dir}
	sw, err := startNetSwitch(c, child.Direct{}, st, time.Minute)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	defer func() {
		sw.Stop(10 * time.Second)
		c.Flush(5 * time.Second)
		t.Logf("console:\n%s", out.String())
	}()
	if b, _ := os.ReadFile(secret); string(b) != "root's\n" {
		t.Errorf("the root switch wrote through a symbolic link its directory held: %q", b)
	}
	wantID := cfg.Jail.IDs.SwitchID()
	jailed := regexp.MustCompile(fmt.Sprintf(`switch\| jailed uid=%d \(root pivot_root, landlock \S+ \S+, own network namespace\)`, wantID))
	for deadline := time.Now().Add(10 * time.Second); !jailed.MatchString(out.String()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no jailed line for uid %d:\n%s", wantID, out.String())
			break
		}
	}
	pid := sw.sup.Process().Pid()
	st1 := status(t, pid)
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000",
		"CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"} {
		if st1[k] != want {
			t.Errorf("switch %s %q, want %q", k, st1[k], want)
		}
	}
	if !strings.HasPrefix(st1["Uid"], fmt.Sprint(wantID)) {
		t.Errorf("switch uid %q, want %d", st1["Uid"], wantID)
	}

	a, b := dialGuest(t, dir, "a", cfg.VMs[0].NICs[0].MAC), dialGuest(t, dir, "b", cfg.VMs[1].NICs[0].MAC)
	ip := a.lease(t)
	t.Logf("a leased %s", ip)
	leases, err := os.ReadFile(filepath.Join(dir, "lan.leases"))
	if err != nil || !strings.Contains(string(leases), ip.String()) {
		t.Errorf("lease file after the lease: %v\n%s", err, leases)
	}
	if fi, err := os.Stat(filepath.Join(dir, "lan.leases")); err == nil && fi.Sys().(*syscall.Stat_t).Uid != uint32(wantID) {
		t.Errorf("the lease file is uid %d's, want the jailed switch's", fi.Sys().(*syscall.Stat_t).Uid)
	}
	a.send(t, udpFrame(a.mac, layers.EthernetBroadcast, ip, net.IPv4bcast, []byte("hello b")))
	if f := b.receive(t, func(f []byte) bool { return strings.Contains(string(f), "hello b") }); f == nil {
		t.Error("b did not receive a's broadcast")
	}

	// Killed and restarted: root again over what the jailed run left,
	// then jailed again; the peers reconnect and a keeps its lease.
	if err := sw.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for strings.Count(out.String(), "switch| ready") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(out.String(), "switch| ready"); n != 2 {
		t.Fatalf("switch ready %d times, want 2 (start and restart):\n%s", n, out.String())
	}
	a, b = dialGuest(t, dir, "a", cfg.VMs[0].NICs[0].MAC), dialGuest(t, dir, "b", cfg.VMs[1].NICs[0].MAC)
	if again := a.lease(t); !again.Equal(ip) {
		t.Errorf("a leased %s after the restart, had %s", again, ip)
	}
	b.send(t, udpFrame(b.mac, layers.EthernetBroadcast, net.IPv4zero, net.IPv4bcast, []byte("hello a")))
	time.Sleep(100 * time.Millisecond) // b holds no lease: dropped, not forwarded

	// PID 1's live requests, under the jail and the filter: a VM port
	// added (PID 1 makes its socket), served and leased, captured,
	// limited, and removed.
	macC, _ := net.ParseMAC("52:54:00:00:00:0c")
	if err := sw.AddPort(config.VM{Name: "c", NICs: []config.NIC{{Network: "lan", MAC: macC}}}, 0); err != nil {
		t.Fatal(err)
	}
	capture, err := sw.Capture("c.0")
	if err != nil {
		t.Fatal(err)
	}
	gc := dialGuest(t, dir, "c", macC)
	t.Logf("c, added live, leased %s", gc.lease(t))
	if rec, err := capture.Next(); err != nil || len(rec) < 16+14 {
		t.Errorf("capture of c.0: %d bytes, %v", len(rec), err)
	}
	capture.Close()
	if err := sw.SetLimits("c.0", config.NICLimits{TX: 1e6}); err != nil {
		t.Error(err)
	}
	if err := sw.RemovePort("c.0"); err != nil {
		t.Error(err)
	}
	sw.Stop(10 * time.Second)
	c.Flush(5 * time.Second)
	if strings.Contains(out.String(), "seccomp: logged") || strings.Contains(out.String(), "reason=seccomp") {
		t.Errorf("the switch's filter refused calls:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "switch exited code=0 reason=poweroff") {
		t.Errorf("the switch did not stop cleanly on SIGTERM:\n%s", out.String())
	}
}

// status reads /proc/<pid>/status.
func status(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestSwitchSeccompKill: a switch its filter kills is reported with
// reason=seccomp and the call's name from the kernel's audit record, and
// restarted. It runs unjailed (the trap travels in the environment).
func TestSwitchSeccompKill(t *testing.T) {
	_, err := os.Stat("/proc/sys/kernel/seccomp/actions_avail")
	testenv.Need(t, err == nil, "the kernel has no seccomp filters")
	kmsg, err := os.Open("/dev/kmsg")
	testenv.Need(t, err == nil, "the kernel log (/dev/kmsg), where the kernel records what seccomp killed")
	defer kmsg.Close()
	kmsg.Seek(0, 2)
	tmp := t.TempDir()
	cfgPath := filepath.Join(tmp, "config.yaml")
	os.WriteFile(cfgPath, []byte(switchLan), 0o644)
	t.Setenv(switchTrapEnv, "1")
	out := &syncBuffer{}
	c := newConsole(out)
	sc := newSeccompLog(c, seccomp.Kill)
	go sc.follow(kmsg)
	// The supervisor's switch, unjailed, with its filter in kill mode; a
	// binary without cgo, as the product's (cgo's threads, and the race
	// detector's, make calls of their own).
	st := switchStart{cfgPath: cfgPath, seccomp: sc, unjailed: true, dir: filepath.Join(tmp, "switch"), path: testenv.JailableTest(t)}
	sw, err := startNetSwitch(c, child.Direct{}, st, 5*time.Second)
	if err == nil {
		t.Fatal("the trapped switch became ready")
	}
	waitFor(t, out, "hyperroot: switch exited code=159 reason=seccomp syscall=socket")
	sw.Stop(5 * time.Second)
	if !strings.Contains(out.String(), "hyperroot: switch restarting in ") {
		t.Errorf("the killed switch was not restarted:\n%s", out.String())
	}
}

// testGuest plays a VMM's virtio-net NIC on a switch socket: guest RAM in a
// sealed memfd, a receive and a transmit ring.
type testGuest struct {
	mac    net.HardwareAddr
	fe     *vhostuser.Frontend
	ram    *virtiotest.RAM
	rx, tx *virtiotest.Driver
	kick   [2]int
	txNext uint64
	rxBuf  map[uint16]uint64 // receive chain head -> its buffer
}

const (
	guestRing = 64
	guestMem  = 1 << 20
	guestBuf  = 2048
	guestBufs = 64 << 10 // receive buffers from here, transmit after them
	netHdr    = 12       // virtio_net_hdr_v1
)

// dialGuest connects to vm's NIC 0 socket in dir, as its VMM, and starts
// both rings with receive buffers posted.
func dialGuest(t *testing.T, dir, vm string, mac net.HardwareAddr) *testGuest {
	t.Helper()
	var fe *vhostuser.Frontend
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if fe, err = vhostuser.Dial(vmmcli.NICSocket(dir, vm, 0)); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("vm %s: %v", vm, err)
	}
	t.Cleanup(func() { fe.Close() })
	g := &testGuest{mac: mac, fe: fe}
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	unix.Ftruncate(fd, guestMem)
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	mem, err := unix.Mmap(fd, 0, guestMem, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	g.ram = virtiotest.WrapRAM(virtiotest.Region{GPA: 0, Bytes: mem})
	const base = 0x7f0000000000
	step := func(what string, err error) {
		if err != nil {
			t.Fatalf("vm %s: %s: %v", vm, what, err)
		}
	}
	_, err = fe.GetFeatures()
	step("features", err)
	step("protocol features", fe.SetProtocolFeatures(vhostuser.ProtocolReplyAck))
	step("owner", fe.SetOwner())
	step("features", fe.SetFeatures(virtio.FeatureVersion1|vhostuser.FeatureProtocolFeatures))
	step("memory", fe.SetMemTable([]vhostuser.Region{{Size: guestMem, UserAddr: base, Fd: fd}}))
	for q, ringBase := range []uint64{0, 8 << 10} {
		l := virtiotest.Contiguous(ringBase, guestRing)
		d, err := virtiotest.NewDriver(g.ram, l)
		step("ring", err)
		kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		step("kick", err)
		call, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		step("call", err)
		t.Cleanup(func() { unix.Close(kick); unix.Close(call) })
		g.kick[q] = kick
		step("num", fe.SetVringNum(q, guestRing))
		step("base", fe.SetVringBase(q, 0))
		step("addr", fe.SetVringAddr(vhostuser.VringAddr{Index: uint32(q), Desc: base + l.Desc, Avail: base + l.Avail, Used: base + l.Used}))
		step("call", fe.SetVringCall(q, call))
		step("kick", fe.SetVringKick(q, kick))
		step("enable", fe.SetVringEnable(q, true))
		if q == 0 {
			g.rx, g.rxBuf = d, map[uint16]uint64{}
			for i := range guestRing {
				g.postRx(guestBufs + uint64(i)*guestBuf)
			}
			g.notify(0)
		} else {
			g.tx = d
		}
	}
	return g
}

func (g *testGuest) postRx(addr uint64) {
	if head, ok := g.rx.Post(virtiotest.Buf{Addr: addr, Len: guestBuf, Write: true}); ok {
		g.rxBuf[head] = addr
	}
}

func (g *testGuest) notify(q int) { unix.Write(g.kick[q], []byte{1, 0, 0, 0, 0, 0, 0, 0}) }

// send transmits one frame and waits until the switch took it.
func (g *testGuest) send(t *testing.T, frame []byte) {
	t.Helper()
	addr := guestBufs + guestRing*guestBuf + (g.txNext%guestRing)*guestBuf
	g.txNext++
	b, err := g.ram.Slice(addr, guestBuf)
	if err != nil {
		t.Fatal(err)
	}
	clear(b[:netHdr])
	n := copy(b[netHdr:], frame)
	want := g.tx.UsedIdx() + 1
	if _, ok := g.tx.Post(virtiotest.Buf{Addr: addr, Len: uint32(netHdr + n)}); !ok {
		t.Fatal("transmit ring full")
	}
	g.notify(1)
	for deadline := time.Now().Add(20 * time.Second); g.tx.UsedIdx() != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the switch did not take the frame")
		}
	}
	g.tx.Reap(nil)
}

// receive returns the first frame received that match accepts, or nil
// after a while; buffers are posted again.
func (g *testGuest) receive(t *testing.T, match func([]byte) bool) []byte {
	t.Helper()
	var used []virtiotest.Used
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var err error
		if used, err = g.rx.Reap(used[:0]); err != nil {
			t.Fatal(err)
		}
		for _, u := range used {
			addr := g.rxBuf[u.Head]
			b, err := g.ram.Slice(addr, uint64(u.Len))
			if err != nil || u.Len < netHdr {
				continue
			}
			frame := append([]byte(nil), b[netHdr:]...)
			g.postRx(addr)
			g.notify(0)
			if match(frame) {
				return frame
			}
		}
	}
	return nil
}

// lease runs DHCP DISCOVER/OFFER/REQUEST/ACK and returns the address.
func (g *testGuest) lease(t *testing.T) net.IP {
	t.Helper()
	xid := binary.BigEndian.Uint32(g.mac[2:])
	dhcp := func(typ layers.DHCPMsgType, opts ...layers.DHCPOption) []byte {
		d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6,
			Xid: xid, ClientHWAddr: g.mac, Options: append([]layers.DHCPOption{
				layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(typ)})}, opts...)}
		return udpFrame(g.mac, layers.EthernetBroadcast, net.IPv4zero, net.IPv4bcast, nil, d)
	}
	reply := func(want layers.DHCPMsgType) *layers.DHCPv4 {
		var got *layers.DHCPv4
		g.receive(t, func(f []byte) bool {
			p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
			d, ok := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
			if !ok || d.Xid != xid {
				return false
			}
			for _, o := range d.Options {
				if o.Type == layers.DHCPOptMessageType && len(o.Data) == 1 && layers.DHCPMsgType(o.Data[0]) == want {
					got = d
					return true
				}
			}
			return false
		})
		if got == nil {
			t.Fatalf("no DHCP %s", want)
		}
		return got
	}
	g.send(t, dhcp(layers.DHCPMsgTypeDiscover))
	offer := reply(layers.DHCPMsgTypeOffer)
	var server []byte
	for _, o := range offer.Options {
		if o.Type == layers.DHCPOptServerID {
			server = o.Data
		}
	}
	g.send(t, dhcp(layers.DHCPMsgTypeRequest,
		layers.NewDHCPOption(layers.DHCPOptRequestIP, offer.YourClientIP.To4()),
		layers.NewDHCPOption(layers.DHCPOptServerID, server)))
	return reply(layers.DHCPMsgTypeAck).YourClientIP.To4()
}

// udpFrame builds an Ethernet/IPv4/UDP frame carrying payload, or the
// DHCP message d (client to server ports).
func udpFrame(src, dst net.HardwareAddr, sip, dip net.IP, payload []byte, d ...*layers.DHCPv4) []byte {
	u := &layers.UDP{SrcPort: 40000, DstPort: 5000}
	var body gopacket.SerializableLayer = gopacket.Payload(payload)
	if len(d) > 0 {
		u.SrcPort, u.DstPort = 68, 67
		body = d[0]
	}
	i := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: sip.To4(), DstIP: dip.To4()}
	u.SetNetworkLayerForChecksum(i)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}, i, u, body); err != nil {
		panic(err)
	}
	return buf.Bytes()
}
