package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

func TestDescribeSockets(t *testing.T) {
	dir := t.TempDir()
	vm := config.VM{Name: "client", ID: 200123, NICs: []config.NIC{{Network: "lan"}, {Network: "lan"}}}
	if err := os.Mkdir(vmmcli.NICDir(dir, vm.Name), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", vmmcli.NICSocket(dir, vm.Name, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := describeSockets(dir, vm, "/proc", 0)
	for _, want := range []string{"vmm uid 200123; client: uid=", "mode=-rwx------", "0.sock: uid=", "1.sock: no such file or directory"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "as it sees them") {
		t.Errorf("%q: a view through no process", got)
	}
	// Through a process's root (this test's own: the same files), each
	// component from the root, with the process's credentials.
	got = describeSockets(dir, vm, "/proc", os.Getpid())
	var st syscall.Stat_t
	if err := syscall.Stat(vmmcli.NICSocket(dir, vm.Name, 0), &st); err != nil {
		t.Fatal(err)
	}
	ino := fmt.Sprintf("ino=%d:%d", st.Dev, st.Ino)
	for _, want := range []string{fmt.Sprintf("vmm pid %d Uid=", os.Getpid()), "Groups=", "context=", "as it sees them:", "root: uid=", "its mount: "} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if n := strings.Count(got, ino); n != 2 {
		t.Errorf("%q names the socket's inode (%s) %d times, want 2: PID 1's view and the process's", got, ino, n)
	}
	// As the VMM's virtio-net device logs it (vmm/machine/virtio.go).
	if !refusedReconnect("vmm: virtio-net 52:54:00:01:02:03: reconnect: dial unix " + filepath.Join(dir, "client/0.sock") + ": connect: permission denied") {
		t.Error("a refused reconnection not recognised")
	}
	if refusedReconnect("vmm: virtio-net 52:54:00:01:02:03: reconnect: dial unix x: connect: no such file or directory") {
		t.Error("another failure taken for a refusal")
	}
}
