package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/cgroup"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

func TestQoSSettings(t *testing.T) {
	var q config.QoS
	q.CPU.Weight, q.CPU.Max, q.Memory.Max, q.Pids = 300, 150, 512<<20, 64
	s, err := qosSettings(q, 2, noDevices)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := describeQoS(s), "cpu.weight=300 cpu.max=150000/100000 memory.max=536870912 memory.high=max pids.max=64"; got != want {
		t.Errorf("settings %q, want %q", got, want)
	}
	s, _ = qosSettings(config.QoS{}, 2, noDevices)
	if got, want := describeQoS(s), "cpu.weight=100 cpu.max=max/100000 memory.max=max memory.high=max pids.max=max"; got != want {
		t.Errorf("no qos: settings %q, want the kernel's defaults %q", got, want)
	}
	for _, st := range s {
		if st.asked {
			t.Errorf("%s marked asked without a qos", st.file)
		}
	}
	q = config.QoS{}
	q.CPU.Max = 300
	if _, err := qosSettings(q, 2, noDevices); err == nil || !strings.Contains(err.Error(), "more than the appliance's 2 CPUs") {
		t.Errorf("cpu max 300%% on 2 CPUs: %v", err)
	}
}

// TestMakeCgroups builds the tree on a real cgroup v2 hierarchy (a
// subtree of a fresh mount, so the host's own groups are untouched) and
// moves a process into system.
func TestMakeCgroups(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "mounting cgroup2 needs root")
	mnt := t.TempDir()
	if err := unix.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		testenv.Need(t, false, "cannot mount cgroup2: "+err.Error())
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	root := filepath.Join(mnt, "hyperroot-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sleeper.Process.Kill()
		sleeper.Wait()
		for _, d := range []string{"hyperroot/vms/a", "hyperroot/vms", "hyperroot/switch", "hyperroot/system", "hyperroot", ""} {
			(&cgroup.Group{Path: filepath.Join(root, d)}).Remove(2e9)
		}
	})
	cg, err := makeCgroups(root, sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	sys, _ := cgroup.Open(filepath.Join(root, "hyperroot", "system"))
	if pids, err := sys.Procs(); err != nil || len(pids) != 1 || pids[0] != sleeper.Process.Pid {
		t.Errorf("system holds %v (%v), want the process %d", pids, err, sleeper.Process.Pid)
	}
	// The appliance's own reserve: guests reclaim from each other first.
	if cg.controllers["memory"] {
		if v, err := sys.Get("memory.min"); err != nil || v != strconv.Itoa(systemReserve) {
			t.Errorf("system memory.min = %q (%v), want %d", v, err, systemReserve)
		}
		if v, err := cg.netSwitch.Get("memory.min"); err != nil || v != strconv.Itoa(switchReserve) {
			t.Errorf("switch memory.min = %q (%v), want %d", v, err, switchReserve)
		}
	}
	g, err := cg.vmGroup(config.VM{Name: "a"})
	if err != nil {
		t.Fatalf("a VM without qos: %v", err)
	}
	if g.Path != filepath.Join(root, "hyperroot", "vms", "a") {
		t.Errorf("group at %s", g.Path)
	}
	// Controllers the hierarchy does not offer here are refused for a
	// VM that asks for them, naming the controller.
	vm := config.VM{Name: "b"}
	vm.QoS.Pids = 64
	if !cg.controllers["pids"] {
		if _, err := cg.vmGroup(vm); err == nil || !strings.Contains(err.Error(), "pids controller") {
			t.Errorf("qos pids without the pids controller: %v", err)
		}
	}
	if err := g.Remove(2e9); err != nil {
		t.Fatal(err)
	}
}

// noDevices is a device lookup for QoS without I/O limits.
func noDevices(path string) (string, error) {
	return "", fmt.Errorf("no block device %s in this test", path)
}

func TestIOSettings(t *testing.T) {
	var q config.QoS
	q.IO = []config.IOLimit{
		{Device: "/dev/vda", ReadIOPS: 300, WriteBytes: 20 << 20, Weight: 200},
		{Device: "/dev/vdb1", WriteIOPS: 50},
	}
	devs := map[string]string{"/dev/vda": "254:0", "/dev/vdb1": "254:16"}
	s, err := qosSettings(q, 2, func(p string) (string, error) { return devs[p], nil })
	if err != nil {
		t.Fatal(err)
	}
	got := describeQoS(s)
	want := "io.max=254:0,rbps=max,wbps=20971520,riops=300,wiops=max io.weight=254:0,200 io.max=254:16,rbps=max,wbps=max,riops=max,wiops=50"
	if !strings.HasSuffix(got, want) {
		t.Errorf("settings %q, want them to end %q", got, want)
	}
	if _, err := qosSettings(q, 2, noDevices); err == nil || !strings.Contains(err.Error(), "io /dev/vda: no block device") {
		t.Errorf("an unknown device: %v", err)
	}
}

// blockDevice finds a block device's number, and refuses what is not one.
func TestBlockDevice(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "making a device node needs root")
	node := filepath.Join(t.TempDir(), "blk")
	// A number no disk has here: /sys/dev/block knows nothing of it, so it
	// is taken as a whole disk.
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(259, 4000))); err != nil {
		t.Fatal(err)
	}
	if got, err := blockDevice(node); err != nil || got != "259:4000" {
		t.Errorf("blockDevice(%s) = %q, %v, want 259:4000", node, got, err)
	}
	for _, p := range []string{"/dev/null", t.TempDir(), "/no/such/device"} {
		if got, err := blockDevice(p); err == nil {
			t.Errorf("blockDevice(%s) = %q, want an error", p, got)
		}
	}
}

func TestIOUsage(t *testing.T) {
	stat := "254:0 rbytes=8192 wbytes=0 rios=2 wios=0 dbytes=0 dios=0\n254:16 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n"
	if got, want := strings.Join(ioUsage(stat), " "), "io.rios=3 io.wios=1 io.rbytes=12288 io.wbytes=512"; got != want {
		t.Errorf("ioUsage = %q, want %q", got, want)
	}
	if got, want := strings.Join(ioUsage(""), " "), "io.rios=0 io.wios=0 io.rbytes=0 io.wbytes=0"; got != want {
		t.Errorf("no devices: %q, want %q", got, want)
	}
}

func TestMemoryUsage(t *testing.T) {
	stat := "anon 5242880\nfile 268435456\nkernel 1048576\nkernel_stack 65536\nshmem 268435456\nshmem_thp 0\nanon_thp 0\n"
	if got, want := strings.Join(memoryUsage(stat), " "), "memory.stat.anon=5242880 memory.stat.kernel=1048576 memory.stat.shmem=268435456"; got != want {
		t.Errorf("memoryUsage = %q, want %q", got, want)
	}
	if got := memoryUsage(""); len(got) != 0 {
		t.Errorf("no memory.stat: %q, want nothing", got)
	}
}
