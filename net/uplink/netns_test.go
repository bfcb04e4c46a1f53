package uplink

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"golang.org/x/sys/unix"
)

// netns is a fresh network namespace for one test, so the test's addresses,
// routes and devices never meet the host's.
type netns struct {
	name string
	ip   string
	fd   int
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	testenv.Need(t, os.Geteuid() == 0, "root, to create veth pairs and network namespaces")
	ip := testenv.NeedTool(t, "ip", "iproute2")
	var rnd [4]byte
	rand.Read(rnd[:])
	n := &netns{name: fmt.Sprintf("hrupl-%x", rnd), ip: ip}
	out, err := exec.Command(ip, "netns", "add", n.name).CombinedOutput()
	testenv.Need(t, err == nil, fmt.Sprintf("ip netns add: %v %s", err, out))
	t.Cleanup(func() { exec.Command(ip, "netns", "del", n.name).Run() })
	n.fd, err = unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { unix.Close(n.fd) })
	n.run(t, "link", "set", "lo", "up")
	return n
}

// run runs `ip -n <ns> args...`.
func (n *netns) run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(n.ip, append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// do runs fn on a thread switched into the namespace: sockets and devices
// fn creates belong to it and stay there when the thread switches back.
func (n *netns) do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open own netns: %v", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", n.name, err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the runtime retires the thread with the goroutine.
			t.Errorf("setns back: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}
