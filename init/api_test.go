package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
)

// TestAPIOverFleet: the API's lifecycle on the fleet, through a real unix
// socket that only its owner may use.
func TestAPIOverFleet(t *testing.T) {
	f, _, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop(10 * time.Second)
	waitFor(t, out, "t| ready networks=0 ports=0")
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	go listenAPI(sock, apiBackend{f: f, kvm: "test"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := api.NewUnixClient(sock)
	ctx := context.Background()
	var vms []api.VM
	if err := c.Do(ctx, "GET", "/v1/vms", &vms); err != nil || len(vms) != 1 || vms[0].State != api.StateRunning || vms[0].PID == 0 || vms[0].Restart != "always" {
		t.Fatalf("list: %+v, %v", vms, err)
	}
	var vm api.VM
	if err := c.Do(ctx, "POST", "/v1/vms/t/stop", &vm); err != nil || vm.State != api.StateStopped {
		t.Fatalf("stop: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/t/stop", &vm); err == nil || !strings.HasSuffix(err.Error(), "vm t is not running: conflict (HTTP 409)") {
		t.Errorf("stop again: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/t/start", &vm); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := c.Do(ctx, "GET", "/v1/vms/nope", &vm); err == nil || !strings.HasSuffix(err.Error(), `no vm "nope" (have t): not found (HTTP 404)`) {
		t.Errorf("unknown VM: %v", err)
	}
	var h api.Host
	if err := c.Do(ctx, "GET", "/v1/host", &h); err != nil || h.KVM != "test" || h.CPUs == 0 || h.Memory == 0 {
		t.Errorf("host: %+v, %v", h, err)
	}
}
