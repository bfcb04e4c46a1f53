package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/api"
)

// The management API (internal/api), served by PID 1 to root on the
// appliance through a unix socket: the fleet's operations, the same the
// console has. The network listener (TLS, tokens) is not there yet.

// apiBackend answers the API from the fleet.
type apiBackend struct {
	f   *fleet
	kvm string // the console's kvm line, or why KVM is unusable
}

func (b apiBackend) Host() api.Host {
	h := api.Host{Version: version, CPUs: runtime.NumCPU(), KVM: b.kvm}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		h.Memory = uint64(si.Totalram) * uint64(si.Unit)
	}
	return h
}

func (b apiBackend) VMs() []api.VM {
	b.f.mu.Lock()
	names := slices.Sorted(maps.Keys(b.f.vms))
	b.f.mu.Unlock()
	vms := make([]api.VM, 0, len(names))
	for _, n := range names {
		if vm, err := b.VM(n); err == nil {
			vms = append(vms, vm)
		}
	}
	return vms
}

func (b apiBackend) VM(name string) (api.VM, error) {
	e, err := b.f.entry(name)
	if err != nil {
		return api.VM{}, fmt.Errorf("%w: %w", err, api.ErrNotFound)
	}
	vm := api.VM{Name: name, State: api.StateStopped, CPUs: e.vm.CPUs, Memory: uint64(e.vm.Memory), Restart: string(e.vm.Restart)}
	if p := e.sup.Process(); p != nil {
		vm.State, vm.PID = api.StateRunning, p.Pid()
	}
	return vm, nil
}

// lifecycle turns the fleet's errors into the API's kinds.
func (b apiBackend) lifecycle(name string, op func() error) error {
	if _, err := b.f.entry(name); err != nil {
		return fmt.Errorf("%w: %w", err, api.ErrNotFound)
	}
	if err := op(); err != nil {
		return fmt.Errorf("%w: %w", err, api.ErrConflict)
	}
	return nil
}

func (b apiBackend) Start(name string) error {
	return b.lifecycle(name, func() error { return b.f.StartVM(name) })
}

func (b apiBackend) Stop(name string) error {
	return b.lifecycle(name, func() error { return b.f.StopVM(name, vmStopGrace) })
}

func (b apiBackend) Restart(name string) error {
	return b.lifecycle(name, func() error {
		if err := b.f.StopVM(name, vmStopGrace); err != nil {
			return err
		}
		return b.f.StartVM(name)
	})
}

// serveAPI serves the API on api.SocketPath for as long as the appliance
// runs: a server that fails is started again (after a pause, so that a
// persistent failure does not spin), and the VMs never depend on it.
func serveAPI(c *console, b api.Backend) {
	goGuarded(c, "api", func() {
		for {
			err := listenAPI(api.SocketPath, b)
			c.Errorf("api", err)
			time.Sleep(5 * time.Second)
		}
	})
}

// listenAPI serves b on a unix socket at path that only root may use, until
// the server fails.
func listenAPI(path string, b api.Backend) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Created with no access for others, then opened to root only: no
	// window in which another uid may connect.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return err
	}
	defer l.Close()
	srv := &http.Server{Handler: api.Handler(b), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(l)
}

// ctlMain is `hyperroot ctl`: the API's client, for root on the appliance.
func ctlMain(args []string) int {
	socket := api.SocketPath
	if len(args) >= 2 && args[0] == "--socket" {
		socket, args = args[1], args[2:]
	}
	c := api.NewUnixClient(socket)
	if len(args) == 1 && args[0] == "shell" {
		return ctlShell(c)
	}
	if err := ctlRun(c, args, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hyperroot ctl: %v\n", err)
		return 1
	}
	return 0
}

const ctlUsage = "host | vm list | vm get|start|stop|restart <name> | shell (commands from stdin, one per line, until exit)"

// ctlShell runs one command per line of stdin, each answer or error on
// stdout, until stdin ends or says "exit": a session for the console's
// "@run" lines.
func ctlShell(c *api.Client) int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "exit" {
			break
		}
		if line != "" {
			if err := ctlRun(c, strings.Fields(line), os.Stdout); err != nil {
				fmt.Printf("ctl: %s: %v\n", line, err)
			}
		}
	}
	return 0
}

// ctlRun runs one command and prints its answer as a table.
func ctlRun(c *api.Client, args []string, out *os.File) error {
	ctx := context.Background()
	switch {
	case len(args) == 1 && args[0] == "host":
		var h api.Host
		if err := c.Do(ctx, "GET", "/v1/host", &h); err != nil {
			return err
		}
		fmt.Fprintf(out, "hyperroot %s kernel %s cpus %d memory %d kvm %s\n", h.Version, h.Kernel, h.CPUs, h.Memory, h.KVM)
	case len(args) == 2 && args[0] == "vm" && args[1] == "list":
		var vms []api.VM
		if err := c.Do(ctx, "GET", "/v1/vms", &vms); err != nil {
			return err
		}
		fmt.Fprintf(out, "%-32s %-8s %7s %5s %10s %s\n", "NAME", "STATE", "PID", "CPUS", "MEMORY", "RESTART")
		for _, vm := range vms {
			fmt.Fprintf(out, "%-32s %-8s %7d %5d %9dM %s\n", vm.Name, vm.State, vm.PID, vm.CPUs, vm.Memory>>20, vm.Restart)
		}
	case len(args) == 3 && args[0] == "vm":
		// Escaped: the server checks the name, and a name must not
		// become another path on the way.
		name := url.PathEscape(args[2])
		method, path := "POST", "/v1/vms/"+name+"/"+args[1]
		switch args[1] {
		case "get":
			method, path = "GET", "/v1/vms/"+name
		case "start", "stop", "restart":
		default:
			return fmt.Errorf("usage: %s", ctlUsage)
		}
		var vm api.VM
		if err := c.Do(ctx, method, path, &vm); err != nil {
			return err
		}
		fmt.Fprintf(out, "vm %s %s pid %d\n", vm.Name, vm.State, vm.PID)
	default:
		return fmt.Errorf("usage: %s", ctlUsage)
	}
	return nil
}
