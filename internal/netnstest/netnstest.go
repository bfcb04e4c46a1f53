// Package netnstest gives tests a throwaway network namespace, with veth
// pairs and a frame responder, so they can create devices, addresses and
// routes without touching the host's; only _test.go files import it.
//
// A namespace is named (ip netns add) rather than anonymous, so tests can
// drive it with `ip -n` and hand it to other processes, and Do enters it on
// the calling goroutine's locked thread, so t.Fatal works inside fn.
package netnstest

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// NS is a network namespace that lives until the test that made it ends.
type NS struct {
	name string
	ip   string // path of the ip command
	fd   int    // open /run/netns/<name>, for setns
}

// New creates a fresh network namespace with lo up and removes it when t
// ends. Without root or iproute2 it stops t through testenv: a skip when
// run bare, a failure under HYPERROOT_STRICT=1.
func New(t testing.TB) *NS {
	t.Helper()
	testenv.Need(t, os.Geteuid() == 0, "root, to create network namespaces")
	ip := testenv.NeedTool(t, "ip", "iproute2")
	var rnd [4]byte
	rand.Read(rnd[:])
	n := &NS{name: fmt.Sprintf("hrtest-%x", rnd), ip: ip}
	out, err := exec.Command(ip, "netns", "add", n.name).CombinedOutput()
	testenv.Need(t, err == nil, fmt.Sprintf("network namespaces: ip netns add: %v %s", err, out))
	t.Cleanup(func() { exec.Command(ip, "netns", "del", n.name).Run() })
	n.fd, err = unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", n.name, err)
	}
	t.Cleanup(func() { unix.Close(n.fd) })
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// Name is the namespace's name under /run/netns, as `ip -n` takes it.
func (n *NS) Name() string { return n.name }

// IP runs `ip -n <ns> args...` and returns its output, failing t on error.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(n.ip, append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Need runs `ip -n <ns> args...` where failure means the kernel lacks
// feature (a module, a config option): a missing prerequisite, not a bug.
func (n *NS) Need(t testing.TB, feature string, args ...string) {
	t.Helper()
	out, err := exec.Command(n.ip, append([]string{"-n", n.name}, args...)...).CombinedOutput()
	testenv.Need(t, err == nil, fmt.Sprintf("%s: ip %s: %v %s", feature, strings.Join(args, " "), err, out))
}

// Do runs fn on the calling goroutine with its thread switched into the
// namespace: sockets and devices fn creates, and programs it starts, belong
// to the namespace and stay there when the thread switches back. Running
// on the caller's goroutine (not a helper one) lets fn call t.Fatal.
func (n *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns %s: open own namespace: %v", n.name, err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", n.name, err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// The thread is stuck in the namespace. Staying locked makes
			// the runtime retire it with the goroutine, and ending the
			// test now keeps anything else from running in the wrong
			// namespace.
			t.Fatalf("netns %s: switch back: %v", n.name, err)
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// Interface looks ifname up inside the namespace, failing t if it is not
// there.
func (n *NS) Interface(t testing.TB, ifname string) *net.Interface {
	t.Helper()
	var ifi *net.Interface
	n.Do(t, func() {
		var err error
		if ifi, err = net.InterfaceByName(ifname); err != nil {
			t.Fatalf("netns %s: %v", n.name, err)
		}
	})
	return ifi
}

// Veth creates a veth pair a <-> b with both ends inside the namespace,
// left down (a test may want to see what brings them up).
func (n *NS) Veth(t testing.TB, a, b string) {
	t.Helper()
	n.Need(t, "veth (CONFIG_VETH)", "link", "add", a, "type", "veth", "peer", "name", b)
}

// VethAcross creates a veth pair with end outside in the calling thread's
// namespace and end inside in n, both up, so a server on the outside can
// answer a client inside. The outside end is deleted when t ends.
func (n *NS) VethAcross(t testing.TB, outside, inside string) {
	t.Helper()
	out, err := exec.Command(n.ip, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", n.name).CombinedOutput()
	testenv.Need(t, err == nil, fmt.Sprintf("veth (CONFIG_VETH): ip link add %s: %v %s", outside, err, out))
	t.Cleanup(func() { exec.Command(n.ip, "link", "del", outside).Run() })
	if out, err := exec.Command(n.ip, "link", "set", outside, "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s up: %v %s", outside, err, out)
	}
	n.IP(t, "link", "set", inside, "up")
}

// WaitCarrier waits up to 5 s for the kernel to report carrier
// (IFF_RUNNING) on each interface: until its link watcher has run, a new
// veth's queue discards frames without an error.
func (n *NS) WaitCarrier(t testing.TB, ifnames ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, name := range ifnames {
		for n.Interface(t, name).Flags&net.FlagRunning == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("netns %s: %s never got carrier", n.name, name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// Serve answers frames arriving on ifname (in the calling thread's
// namespace) through an AF_PACKET socket, the way the switch's port loop
// does: reply gets each received frame and a buffer, and returns how many
// bytes of it to send back and whether to send at all (dhcp.Server's
// HandleFrame fits). It runs until stop is called or t ends.
func Serve(t testing.TB, ifname string, reply func(frame, out []byte) (int, bool)) (stop func()) {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatalf("serve on %s: %v", ifname, err)
	}
	proto := uint16(unix.ETH_P_ALL)
	proto = proto<<8 | proto>>8 // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatalf("serve on %s: AF_PACKET socket: %v", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatalf("serve on %s: bind AF_PACKET: %v", ifname, err)
	}
	// A receive timeout lets the loop notice stop without a second
	// descriptor to poll.
	tv := unix.Timeval{Usec: 50_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatalf("serve on %s: SO_RCVTIMEO: %v", ifname, err)
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer unix.Close(fd)
		in, out := make([]byte, 2048), make([]byte, 2048)
		for {
			select {
			case <-quit:
				return
			default:
			}
			m, from, err := unix.Recvfrom(fd, in, 0)
			if err != nil {
				continue // timeout: look at quit again
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue // our own reply
			}
			if k, ok := reply(in[:m], out); ok {
				if k < 0 || k > len(out) {
					t.Errorf("serve on %s: reply of %d bytes for a %d-byte buffer", ifname, k, len(out))
					continue
				}
				if _, err := unix.Write(fd, out[:k]); err != nil {
					t.Errorf("serve on %s: send reply: %v", ifname, err)
				}
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}
