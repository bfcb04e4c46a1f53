package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
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
	got := describeSockets(dir, vm)
	for _, want := range []string{"vmm uid 200123; client: uid=", "mode=-rwx------", "0.sock: uid=", "1.sock: no such file or directory"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	// As the VMM's virtio-net device logs it (vmm/machine/virtio.go).
	if !refusedReconnect("vmm: virtio-net 52:54:00:01:02:03: reconnect: dial unix " + filepath.Join(dir, "client/0.sock") + ": connect: permission denied") {
		t.Error("a refused reconnection not recognised")
	}
	if refusedReconnect("vmm: virtio-net 52:54:00:01:02:03: reconnect: dial unix x: connect: no such file or directory") {
		t.Error("another failure taken for a refusal")
	}
}
