package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/net/vhostuser"
	"github.com/hyperroot/hyperroot/vmm/virtio"
)

const extTestConfig = `networks:
  - {name: lan, subnet: 10.20.0.0/24, dhcp: {from: 10.20.0.100, to: 10.20.0.199}}
  - {name: other, subnet: 10.30.0.0/24}
vms:
  - name: a
    kernel: /guest/vmlinuz
    nics:
      - {network: lan, mac: "52:54:00:00:00:01"}
`

// extConfig writes extTestConfig and returns its path and parsed form.
func extConfig(t *testing.T) (string, *config.Config) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(extTestConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(p, []byte(extTestConfig))
	if err != nil {
		t.Fatal(err)
	}
	return p, cfg
}

func TestWantCapabilities(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--print-capabilities"}, true},
		{[]string{"-print-capabilities"}, true},
		{[]string{"--config", "x", "--unknown", "--print-capabilities", "arg"}, true},
		{[]string{"--print-capabilities=true"}, true},
		{[]string{"--config", "x"}, false},
		{[]string{"--", "--print-capabilities"}, false},
		{[]string{"--print-capabilitiesx"}, false},
	} {
		if got := wantCapabilities(tc.args); got != tc.want {
			t.Errorf("wantCapabilities(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestPrintCapabilities(t *testing.T) {
	var b bytes.Buffer
	if code := printCapabilities(&b); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("output %q is not JSON: %v", b.String(), err)
	}
	if got["type"] != "net" {
		t.Errorf("type = %v, want net (output %q)", got["type"], b.String())
	}
	if f, ok := got["features"]; ok {
		if _, isList := f.([]any); !isList {
			t.Errorf("features = %v, want a list", f)
		}
	}
	if !strings.HasSuffix(b.String(), "\n") {
		t.Errorf("output %q does not end in a newline", b.String())
	}
}

// TestSwitchMainConventionFlags drives the hook in switchMain through its
// refusals (none of these may start serving, or the call would block).
func TestSwitchMainConventionFlags(t *testing.T) {
	cfgPath, _ := extConfig(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "ext.sock")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipeFD := strconv.Itoa(int(r.Fd()))
	base := []string{"--config", cfgPath, "--dir", dir}
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"capabilities ignore everything else", []string{"--print-capabilities", "--no-such-flag", "arg"}, 0},
		{"socket-path and fd", []string{"--socket-path", sock, "--fd", "3"}, vmmcli.ExitUsage},
		{"fd and socket-path", []string{"--fd", "3", "--socket-path", sock}, vmmcli.ExitUsage},
		{"fd is stdout", []string{"--fd", "1"}, vmmcli.ExitUsage},
		{"fd not a number", []string{"--fd", "three"}, vmmcli.ExitUsage},
		{"empty socket path", []string{"--socket-path="}, vmmcli.ExitUsage},
		{"multicast mac", []string{"--socket-path", sock, "--mac", "01:00:5e:00:00:01"}, vmmcli.ExitUsage},
		{"zero mac", []string{"--socket-path", sock, "--mac", "00:00:00:00:00:00"}, vmmcli.ExitUsage},
		{"long mac", []string{"--socket-path", sock, "--mac", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"}, vmmcli.ExitUsage},
		{"no mac", []string{"--socket-path", sock}, vmmcli.ExitError},
		{"unknown network", []string{"--socket-path", sock, "--mac", "52:54:00:00:00:09", "--network", "nope"}, vmmcli.ExitError},
		{"mac of a configured nic", []string{"--socket-path", sock, "--mac", "52:54:00:00:00:01"}, vmmcli.ExitError},
		{"fd is a pipe", []string{"--fd", pipeFD, "--mac", "52:54:00:00:00:09"}, vmmcli.ExitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.want != 0 {
				args = append(slices.Clone(base), tc.args...)
			}
			if got := switchMain(args); got != tc.want {
				t.Errorf("switchMain(%q) = %d, want %d", args, got, tc.want)
			}
			if _, err := os.Lstat(sock); err == nil {
				t.Errorf("%s left behind", sock)
			}
		})
	}
}

func TestExtNIC(t *testing.T) {
	_, cfg := extConfig(t)
	mac := func(s string) extMAC {
		m, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		return extMAC{m}
	}
	for _, tc := range []struct {
		name    string
		network string
		mac     extMAC
		cfg     *config.Config
		want    string // network, or "error"
	}{
		{"default is the first network", "", mac("52:54:00:00:00:09"), cfg, "lan"},
		{"named network", "other", mac("52:54:00:00:00:09"), cfg, "other"},
		{"unknown network", "nope", mac("52:54:00:00:00:09"), cfg, "error"},
		{"no mac", "", extMAC{}, cfg, "error"},
		{"mac clash", "other", mac("52:54:00:00:00:01"), cfg, "error"},
		{"no networks", "", mac("52:54:00:00:00:09"), &config.Config{}, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &extFlags{network: tc.network, mac: tc.mac}
			nic, err := f.extNIC(tc.cfg)
			if tc.want == "error" {
				if err == nil {
					t.Fatalf("got NIC %+v, want an error", nic)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if nic.Network != tc.want || !slices.Equal(nic.MAC, tc.mac.mac) {
				t.Errorf("NIC %+v, want network %s mac %s", nic, tc.want, tc.mac.mac)
			}
		})
	}
}

// dupFD returns a duplicate of f's descriptor, as an inherited one would
// be: inheritedSocket closes what it is given.
func dupFD(t *testing.T, fd uintptr) int {
	t.Helper()
	d, err := unix.Dup(int(fd))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func closed(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == unix.EBADF
}

func TestInheritedSocket(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[1])
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "l.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lf, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	dgram, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dgram)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	for _, tc := range []struct {
		name string
		fd   int
		want string // "listening", "connected" or "error"
	}{
		{"connected socketpair end", pair[0], "connected"},
		{"listening socket", dupFD(t, lf.Fd()), "listening"},
		{"datagram socket", dupFD(t, uintptr(dgram)), "error"},
		{"pipe", dupFD(t, r.Fd()), "error"},
		{"closed descriptor", 1 << 20, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep, err := inheritedSocket(tc.fd)
			if tc.want == "error" {
				if err == nil {
					ep.Close()
					t.Fatal("accepted, want an error")
				}
				unix.Close(tc.fd)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Close()
			if got := map[bool]string{true: "listening", false: "connected"}[ep.l != nil]; got != tc.want {
				t.Errorf("taken as %s, want %s", got, tc.want)
			}
			if !closed(tc.fd) {
				t.Errorf("descriptor %d still open after it was taken over", tc.fd)
				unix.Close(tc.fd)
			}
		})
	}
	// The listener's socket file belongs to its creator: closing the
	// endpoint must not remove it.
	if _, err := os.Stat(l.Addr().String()); err != nil {
		t.Errorf("listening socket file: %v", err)
	}
}

// logLines collects a switch's output lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, a ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, a...))
	l.mu.Unlock()
}

// wait waits up to 5 s for a line starting with prefix.
func (l *logLines) wait(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		for _, s := range l.lines {
			if strings.HasPrefix(s, prefix) {
				l.mu.Unlock()
				return s
			}
		}
		all := strings.Join(l.lines, "\n")
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no line %q in:\n%s", prefix, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExtPortServed starts a switch with the extra port on each kind of
// endpoint and lets a vhost-user frontend negotiate with it there.
func TestExtPortServed(t *testing.T) {
	for _, kind := range []string{"socket-path", "listening fd", "connected fd"} {
		t.Run(kind, func(t *testing.T) {
			_, cfg := extConfig(t)
			dir := t.TempDir()
			mac, _ := net.ParseMAC("52:54:00:00:00:09")
			f := &extFlags{network: "lan", mac: extMAC{mac}, fd: extFD{n: -1}}
			var dial func() (*vhostuser.Frontend, error)
			switch kind {
			case "socket-path":
				path := filepath.Join(t.TempDir(), "ext.sock")
				f.socketPath = extPath{path: path, set: true}
				dial = func() (*vhostuser.Frontend, error) { return vhostuser.Dial(path) }
			case "listening fd":
				path := filepath.Join(t.TempDir(), "inherited.sock")
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				lf, err := l.File()
				if err != nil {
					t.Fatal(err)
				}
				defer lf.Close()
				f.fd = extFD{n: dupFD(t, lf.Fd()), set: true}
				dial = func() (*vhostuser.Frontend, error) { return vhostuser.Dial(path) }
			case "connected fd":
				pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.fd = extFD{n: pair[0], set: true}
				mine := os.NewFile(uintptr(pair[1]), "frontend")
				dial = func() (*vhostuser.Frontend, error) {
					c, err := net.FileConn(mine)
					mine.Close()
					if err != nil {
						return nil, err
					}
					return vhostuser.NewFrontend(c.(*net.UnixConn)), nil
				}
			}
			var out logLines
			rs, err := startSwitchExt(f, cfg, dir, nil, out.logf, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer rs.Close()
			name := portName(extVM, 0)
			out.wait(t, "ready networks=2 ports=2")
			out.wait(t, "port "+name+" ")
			fe, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer fe.Close()
			feats, err := fe.GetFeatures()
			if err != nil {
				t.Fatalf("GET_FEATURES on the extra port: %v", err)
			}
			if feats&virtio.FeatureVersion1 == 0 {
				t.Errorf("features %#x lack VERSION_1", feats)
			}
			out.wait(t, "port "+name+" connected")
			p := rs.byMAC.load(mac.String())
			if p == nil || p.Name() != name {
				t.Fatalf("no port %s for %s", name, mac)
			}
			if rs.dhcpOf.load(p.Port) == nil {
				t.Errorf("port %s gets no DHCP on a network that serves it", name)
			}
			if _, err := os.Lstat(vmmcli.NICSocket(dir, extVM, 0)); err == nil {
				t.Errorf("the unused socket %s is left in the switch's directory", vmmcli.NICSocket(dir, extVM, 0))
			}
			if _, err := os.Lstat(vmmcli.NICDir(dir, extVM)); err == nil {
				t.Errorf("the unused socket directory %s is left in the switch's directory", vmmcli.NICDir(dir, extVM))
			}
			checkVMSocket(t, dir, cfg.VMs[0])
			// The configured NIC is served as before.
			if c, err := vhostuser.Dial(vmmcli.NICSocket(dir, "a", 0)); err != nil {
				t.Errorf("configured NIC's socket: %v", err)
			} else {
				c.Close()
			}
			fe.Close()
			out.wait(t, "port "+name+" disconnected")
		})
	}
}

// checkVMSocket checks the layout the VMM's jail relies on: vm's sockets in
// a directory of their own, 0700, the socket 0600, both the VM's jail uid's
// and gid's when the switch runs as root.
func checkVMSocket(t *testing.T, dir string, vm config.VM) {
	t.Helper()
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{vmmcli.NICDir(dir, vm.Name), os.ModeDir | 0o700}, {vmmcli.NICSocket(dir, vm.Name, 0), os.ModeSocket | 0o600}} {
		st, err := os.Lstat(f.path)
		if err != nil {
			t.Error(err)
			continue
		}
		if st.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, st.Mode(), f.mode)
		}
		sys := st.Sys().(*syscall.Stat_t)
		want := uint32(os.Geteuid())
		if want == 0 {
			want = uint32(vm.ID)
		}
		if sys.Uid != want || (os.Geteuid() == 0 && sys.Gid != want) {
			t.Errorf("%s: owner %d:%d, want vm %s's jail id %d", f.path, sys.Uid, sys.Gid, vm.Name, want)
		}
	}
}
