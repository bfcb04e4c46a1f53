package netnstest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// nsIno is the inode of a network namespace file: two files name the same
// namespace exactly when their inodes (on nsfs) are equal.
func nsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// ifnames makes interface names unique to this test process (and under
// IFNAMSIZ), since packages' tests run in parallel and an outside veth end
// lives in the shared namespace.
func ifnames(tag string) (string, string) {
	id := os.Getpid() % 100000
	return fmt.Sprintf("hrn%s%do", tag, id), fmt.Sprintf("hrn%s%di", tag, id)
}

// TestDo checks that fn runs with the thread in the namespace (whose only
// interface is lo, up) and that the thread is back in its own namespace
// afterwards, also when fn ends the test goroutine early.
func TestDo(t *testing.T) {
	n := New(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home := nsIno(t, "/proc/thread-self/ns/net")
	want := nsIno(t, "/run/netns/"+n.Name())
	if home == want {
		t.Fatal("new namespace is the test's own")
	}
	ran := false
	n.Do(t, func() {
		ran = true
		if got := nsIno(t, "/proc/thread-self/ns/net"); got != want {
			t.Errorf("inside Do: namespace inode %d, want %d", got, want)
		}
		ifs, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
			t.Errorf("interfaces in a new namespace: %+v, want lo up alone", ifs)
		}
	})
	if !ran {
		t.Error("fn did not run")
	}
	if got := nsIno(t, "/proc/thread-self/ns/net"); got != home {
		t.Errorf("after Do: namespace inode %d, want %d (own)", got, home)
	}
	// Nested: the inner Do returns to the outer namespace, not the host's.
	n2 := New(t)
	n.Do(t, func() {
		n2.Do(t, func() {
			if got := nsIno(t, "/proc/thread-self/ns/net"); got != nsIno(t, "/run/netns/"+n2.Name()) {
				t.Errorf("inner Do: namespace inode %d", got)
			}
		})
		if got := nsIno(t, "/proc/thread-self/ns/net"); got != want {
			t.Errorf("after inner Do: namespace inode %d, want %d", got, want)
		}
	})
	if got := nsIno(t, "/proc/thread-self/ns/net"); got != home {
		t.Errorf("after nested Do: namespace inode %d, want %d", got, home)
	}
}

// TestCleanup checks that what a test made is gone when it ends: the
// namespace and the outside end of a VethAcross pair.
func TestCleanup(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root, to create network namespaces")
	outside, inside := ifnames("c")
	var name string
	t.Run("make", func(t *testing.T) {
		n := New(t)
		name = n.Name()
		n.VethAcross(t, outside, inside)
		if _, err := os.Stat("/run/netns/" + name); err != nil {
			t.Errorf("namespace file: %v", err)
		}
		if _, err := net.InterfaceByName(outside); err != nil {
			t.Errorf("outside end: %v", err)
		}
	})
	testenv.Need(t, name != "", "a network namespace (see the subtest's message)")
	if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
		t.Errorf("namespace %s after its test: %v, want it gone", name, err)
	}
	if _, err := net.InterfaceByName(outside); err == nil {
		t.Errorf("%s outlived its test", outside)
	}
}

func TestVeth(t *testing.T) {
	n := New(t)
	n.Veth(t, "hra", "hrb")
	for _, name := range []string{"hra", "hrb"} {
		if fl := n.Interface(t, name).Flags; fl&net.FlagUp != 0 {
			t.Errorf("%s up before anyone set it up: %v", name, fl)
		}
	}
	if out := n.IP(t, "-d", "link", "show", "hra"); !strings.Contains(out, "veth") {
		t.Errorf("hra is no veth:\n%s", out)
	}
	n.IP(t, "link", "set", "hra", "up")
	n.IP(t, "link", "set", "hrb", "up")
	n.WaitCarrier(t, "hra", "hrb")
	for _, name := range []string{"hra", "hrb"} {
		if fl := n.Interface(t, name).Flags; fl&net.FlagRunning == 0 {
			t.Errorf("%s after WaitCarrier: %v", name, fl)
		}
	}
}

// testType is the IEEE local experimental EtherType: nothing else in the
// namespace sends it.
const testType = 0x88b5

// TestServe sends frames from inside the namespace to a Serve loop on the
// outside end of a VethAcross pair, which answers each with the MACs
// swapped and the marker changed, then checks that after stop (called
// twice) nothing answers any more.
func TestServe(t *testing.T) {
	n := New(t)
	outside, inside := ifnames("s")
	n.VethAcross(t, outside, inside)
	if _, err := net.InterfaceByName(inside); err == nil {
		t.Errorf("%s is outside the namespace", inside)
	}
	calls := 0
	stop := Serve(t, outside, func(f, out []byte) (int, bool) {
		if len(f) < 15 || binary.BigEndian.Uint16(f[12:]) != testType {
			return 0, false
		}
		calls++
		copy(out, f[6:12])
		copy(out[6:], f[0:6])
		k := copy(out[12:], f[12:]) + 12
		out[14] = 'R'
		return k, true
	})

	ifi := n.Interface(t, inside)
	n.WaitCarrier(t, inside)
	var fd int
	proto := htons(testType)
	n.Do(t, func() { // the socket stays in the namespace after Do
		var err error
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto)); err != nil {
			t.Fatal(err)
		}
	})
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 1})
	copy(frame[6:], ifi.HardwareAddr)
	binary.BigEndian.PutUint16(frame[12:], testType)
	frame[14] = 'Q'
	copy(frame[15:], "netnstest")
	want := bytes.Clone(frame)
	copy(want, frame[6:12])
	copy(want[6:], frame[0:6])
	want[14] = 'R'

	// exchange sends frame (several times: carrier comes a moment before
	// the queue) and reports whether the answer arrived.
	exchange := func(tries int) bool {
		buf := make([]byte, 2048)
		for range tries {
			if _, err := unix.Write(fd, frame); err != nil {
				t.Fatalf("send: %v", err)
			}
			for {
				m, _, err := unix.Recvfrom(fd, buf, 0)
				if err != nil {
					break // timeout: send again
				}
				if buf[14] == 'R' {
					if !bytes.Equal(buf[:m], want) {
						t.Errorf("answer %x, want %x", buf[:m], want)
					}
					return true
				}
			}
		}
		return false
	}
	if !exchange(50) {
		t.Fatal("no answer from Serve in 5 s")
	}
	stop()
	stop()
	if calls == 0 {
		t.Error("reply never called")
	}
	if exchange(3) {
		t.Error("answered after stop")
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
