package vmmcli

import (
	"bytes"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
)

func TestReasonAndCode(t *testing.T) {
	exited := func(code int) unix.WaitStatus { return unix.WaitStatus(code << 8) }
	signaled := func(sig unix.Signal) unix.WaitStatus { return unix.WaitStatus(sig) }
	for _, tc := range []struct {
		ws     unix.WaitStatus
		reason string
		code   int
		clean  bool
	}{
		{exited(ExitPoweroff), "poweroff", 0, true},
		{exited(ExitError), "error", 1, false},
		{exited(ExitUsage), "usage", 2, false},
		{exited(ExitReboot), "reboot", 3, false},
		{exited(ExitCrash), "crash", 4, false},
		{exited(ExitStopped), "stopped", 5, false},
		{exited(ExitStalled), "stalled", 6, false},
		{exited(42), "unknown", 42, false},
		{signaled(unix.SIGKILL), "killed signal=SIGKILL", 137, false},
		{signaled(unix.SIGSEGV), "killed signal=SIGSEGV", 139, false},
	} {
		if got := Reason(tc.ws); got != tc.reason {
			t.Errorf("Reason(%#x) = %q, want %q", uint32(tc.ws), got, tc.reason)
		}
		if got := Code(tc.ws); got != tc.code {
			t.Errorf("Code(%#x) = %d, want %d", uint32(tc.ws), got, tc.code)
		}
		if got := Clean(tc.ws); got != tc.clean {
			t.Errorf("Clean(%#x) = %v, want %v", uint32(tc.ws), got, tc.clean)
		}
	}
}

func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Disk
		err  string
	}{
		{in: "fd=3", want: Disk{FD: 3}},
		{in: "path=/x.img,ro", want: Disk{FD: -1, Path: "/x.img", ReadOnly: true}},
		{in: "fd=7,ro,id=web-0,iops=2000,bps=50M", want: Disk{FD: 7, ReadOnly: true, ID: "web-0", IOPS: 2000, Bandwidth: 50 << 20}},
		{in: "fd=4,bps=52428800", want: Disk{FD: 4, Bandwidth: 52428800}},
		{in: "path=/x.img,direct,io=pool", want: Disk{FD: -1, Path: "/x.img", Direct: true, IO: IOPool}},
		{in: "fd=3,name=/var/lib/hyperroot/a%2Cb%25.img", want: Disk{FD: 3, Name: "/var/lib/hyperroot/a,b%.img"}},
		{in: "fd=3,name=/a%zz", err: `name "/a%zz": want a path`},
		{in: "fd=3,io=uring", want: Disk{FD: 3, IO: IOUring}},
		{in: "fd=3,io=io_uring", want: Disk{FD: 3, IO: IOUring}},
		{in: "fd=3,io=auto", want: Disk{FD: 3}},
		{in: "fd=3,io=aio", err: `io "aio": want auto, uring or pool`},
		{in: "fd=3,direct=1", err: "direct takes no value"},
		{in: "", err: `"": want key=value`},
		{in: "ro", err: "want exactly one of fd=N and path=FILE"},
		{in: "fd=3,path=/x", err: "want exactly one of"},
		{in: "fd=2", err: `fd "2": want an inherited descriptor number, 3 or more`},
		{in: "fd=x", err: `fd "x"`},
		{in: "path=x.img", err: `path "x.img": want an absolute path`},
		{in: "fd=3,ro=1", err: "ro takes no value"},
		{in: "fd=3,ro,ro", err: "ro given twice"},
		{in: "fd=3,fd=4", err: "fd given twice"},
		{in: "fd=3,iops=0", err: `iops "0": want a positive number`},
		{in: "fd=3,iops=-5", err: `iops "-5"`},
		{in: "fd=3,bps=fast", err: `bps "fast"`},
		{in: "fd=3,id=abcdefghijklmnopqrstu", err: "longer than 20 bytes"},
		{in: "fd=3,cache=none", err: `unknown key "cache"`},
		{in: "fd=3,id=", err: `"id=": want key=value`},
		{in: "fd=3,format=qcow2,backing=5:qcow2+6:raw", want: Disk{FD: 3, Format: "qcow2", Backing: []Backing{{5, "qcow2"}, {6, "raw"}}}},
		{in: "path=/x.qcow2,format=qcow2", want: Disk{FD: -1, Path: "/x.qcow2", Format: "qcow2"}},
		{in: "fd=3,format=raw", want: Disk{FD: 3}},
		{in: "fd=3,format=vmdk", err: `format "vmdk": want raw or qcow2`},
		{in: "fd=3,poll=off", want: Disk{FD: 3, Poll: -1}},
		{in: "fd=3,poll=50us", want: Disk{FD: 3, Poll: 50 * time.Microsecond}},
		{in: "fd=3,poll=0", err: `poll "0": want off or a duration from 1us to 10ms`},
		{in: "fd=3,poll=1s", err: `poll "1s"`},
		{in: "fd=3,poll=fast", err: `poll "fast"`},
		{in: "fd=3,backing=5:raw", err: "backing is for format=qcow2"},
		{in: "fd=3,format=qcow2,backing=5", err: `backing "5": want FD:FORMAT`},
		{in: "fd=3,format=qcow2,backing=2:raw", err: `backing "2:raw"`},
		{in: "fd=3,format=qcow2,backing=4:raw+5:raw+6:raw+7:raw+8:raw+9:raw+10:raw+11:raw+12:raw", err: "9 files, want at most 8"},
	} {
		got, err := ParseDisk(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseDisk(%q) error = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("ParseDisk(%q): %v", tc.in, err)
		case tc.err == "" && !reflect.DeepEqual(got, tc.want):
			t.Errorf("ParseDisk(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseNIC(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	for _, tc := range []struct {
		in, err string
		want    NIC
	}{
		{in: "socket=/run/sw/a.sock,mac=52:54:00:12:34:56", want: NIC{Socket: "/run/sw/a.sock", MAC: mac}},
		{in: "socket=a.sock,mac=52:54:00:12:34:56", err: `socket "a.sock": want an absolute path`},
		{in: "socket=/a,mac=01:00:5e:00:00:01", err: "want a unicast Ethernet address"},
		{in: "socket=/a,mac=zz", err: `mac "zz"`},
		{in: "socket=/a,mac=52:54:00:12:34:56,mtu=9000", want: NIC{Socket: "/a", MAC: mac, MTU: 9000}},
		{in: "socket=/a,mac=52:54:00:12:34:56,mtu=20", err: `mtu "20": want 68 to 65535`},
		{in: "socket=/a", err: "want socket=PATH and mac=ADDRESS"},
		{in: "socket=/a,socket=/b,mac=52:54:00:12:34:56", err: "socket given twice"},
		{in: "socket=/a,mac=52:54:00:12:34:56,queues=2", err: `unknown key "queues"`},
		{in: "", err: `"": want key=value`},
	} {
		got, err := ParseNIC(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseNIC(%q) error = %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("ParseNIC(%q): %v", tc.in, err)
		case tc.err == "" && !reflect.DeepEqual(got, tc.want):
			t.Errorf("ParseNIC(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestArgvRoundTrip: what the supervisor (or the benchmark) writes, the VMM
// reads back as it was meant.
func TestArgvRoundTrip(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	one := 1
	for _, tc := range []struct {
		name string
		in   Args
		want Args // in with the defaults filled in
	}{
		{"defaults", Args{Kernel: "/k"},
			Args{Name: "vm", Kernel: "/k", Cmdline: "console=ttyS0", CPUs: 1, Memory: "256M", Seccomp: "kill"}},
		{"everything", Args{Name: "web", Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0 quiet", CPUs: 4, Memory: "1G", HugePages: "2M",
			Disks: []Disk{{FD: 3, ID: "web-0"}, {FD: 4, ReadOnly: true, IOPS: 5, Bandwidth: 4096, Direct: true, IO: IOPool}, {FD: -1, Path: "/x.img", IO: IOUring, Poll: 30 * time.Microsecond}, {FD: 5, Poll: -1}},
			NICs:  []NIC{{Socket: "/run/s/web/0.sock", MAC: mac}, {Socket: "/s", MAC: mac, MTU: 9000}}, Jail: 200001, Trace: true, Seccomp: "log",
			NUMANodes:     []NUMANode{{CPUs: []int{0, 1}, Memory: "512M", Host: &one, HostCPUs: []int{4, 5}}, {CPUs: []int{2, 3}, Memory: "512M"}},
			NUMADistances: []int{10, 21, 21, 10}, DumpTag: "0123abcd",
			Devices: []Device{{PCI: "0000:00:01.1", Container: 5, Group: 6}, {PCI: "0000:0a:1f.7", Container: 7, Group: 8}}},
			Args{}},
		{"bound to a host node", Args{Name: "b", Kernel: "/k", Cmdline: "c", CPUs: 1, Memory: "256M", Seccomp: "kill", NUMABind: &one}, Args{}},
		{"booting a disk", Args{Name: "d", BootDisk: true, BootEntry: "Debian GNU/Linux", Cmdline: "c", CPUs: 1, Memory: "256M", Seccomp: "kill",
			Disks: []Disk{{FD: 3, Format: "qcow2", Backing: []Backing{{4, "raw"}}}}}, Args{}},
	} {
		want := tc.want
		if want.Kernel == "" && !want.BootDisk {
			want = tc.in
		}
		argv := tc.in.Argv()
		if argv[0] != Command {
			t.Errorf("%s: argv %q does not start with the subcommand", tc.name, argv)
		}
		var stderr bytes.Buffer
		got, err := Parse(argv[1:], &stderr)
		if err != nil {
			t.Errorf("%s: Parse(%q): %v (%s)", tc.name, argv, err, stderr.String())
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %q read back as\n%+v, want\n%+v", tc.name, argv, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // on stderr
	}{
		{nil, "hyperroot vmm: --kernel is required (or --boot-disk)"},
		{[]string{"--boot-disk"}, "hyperroot vmm: --boot-disk needs a --disk to boot from"},
		{[]string{"--kernel", "/k", "--boot-disk", "--disk", "fd=3"}, "give --kernel or --boot-disk, not both"},
		{[]string{"--boot-disk", "--initrd", "/i", "--disk", "fd=3"}, "--initrd comes from the disk with --boot-disk"},
		{[]string{"--kernel", "/k", "--boot-entry", "x"}, "--boot-entry is for --boot-disk"},
		{[]string{"--kernel", "/k", "extra"}, `hyperroot vmm: unexpected argument "extra"`},
		{[]string{"--kernel", "/k", "--jail", "-1"}, `hyperroot vmm: --jail -1: want a uid other than 0`},
		{[]string{"--kernel", "/k", "--cpu", "2"}, "flag provided but not defined: -cpu"},
		{[]string{"--kernel", "/k", "--disk", "fd=2"}, `hyperroot vmm: --disk fd=2: fd "2"`},
		{[]string{"--kernel", "/k", "--nic", "socket=/a"}, "hyperroot vmm: --nic socket=/a: want socket=PATH and mac=ADDRESS"},
		{[]string{"--kernel", "/k", "--numa-distances", "10,9"}, `NUMA distance "9": want a number 10-254`},
		{[]string{"--kernel", "/k", "--numa-distances", "10,255"}, `NUMA distance "255": want a number 10-254`},
		{[]string{"--kernel", "/k", "--dump-tag", "XYZ"}, `want 1 to 64 hex digits, got "XYZ"`},
	} {
		var stderr bytes.Buffer
		if _, err := Parse(tc.args, &stderr); err == nil || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("Parse(%q): err %v, stderr %q lacks %q", tc.args, err, stderr.String(), tc.want)
		}
	}
}

func TestForVM(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	vm := config.VM{Name: "v", Kernel: "/k", Initrd: "/i", Cmdline: "c", CPUs: 2, Memory: 128 << 20,
		Disks: []config.Disk{{Path: "/a", ID: "v-0", IO: "io_uring"}, {Path: "/b", ReadOnly: true, ID: "v-1",
			Limits: config.DiskLimits{IOPS: 5, Bandwidth: 4096}, Direct: true, IO: "pool"}},
		NICs: []config.NIC{{MAC: mac, MTU: 9000}}, ID: 200123}
	got := strings.Join(ForVM(vm, "/run/sw").Argv(), " ")
	want := "vmm --name v --kernel /k --cpus 2 --memory 128M --cmdline c --initrd /i --jail 200123" +
		" --disk fd=3,id=v-0,io=io_uring,name=/a --disk fd=4,ro,id=v-1,iops=5,bps=4096,direct,io=pool,name=/b" +
		" --nic socket=/run/sw/v/0.sock,mac=02:00:00:00:00:01,mtu=9000 --seccomp kill"
	if got != want {
		t.Errorf("ForVM(...).Argv() =\n%s\nwant\n%s", got, want)
	}
	one := 1
	vm = config.VM{Name: "n", Kernel: "/k", Cmdline: "c", CPUs: 2, Memory: 256 << 20, ID: 200124,
		NUMA: config.NUMA{Nodes: []config.VNode{{CPUs: []int{0}, Memory: 96 << 20, HostNode: &one}, {CPUs: []int{1}, Memory: 160 << 20}}}}
	if got := strings.Join(ForVM(vm, "/run/sw").Argv(), " "); !strings.Contains(got, " --numa-node 0:96M:1 --numa-node 1:160M ") {
		t.Errorf("vNUMA VM's argv: %s", got)
	}
	vm.NUMA = config.NUMA{Node: &one}
	if got := strings.Join(ForVM(vm, "/run/sw").Argv(), " "); !strings.Contains(got, " --numa-bind 1 ") {
		t.Errorf("bound VM's argv: %s", got)
	}
}

// FuzzParseDisk: the VMM's --disk flag is what a configuration (or a
// person on a host) controls. Any value parses or is refused with an error,
// never a panic, and what parses reads back the same from its String:
// the supervisor builds the flag with String and the VMM reads it with
// ParseDisk.
func FuzzParseDisk(f *testing.F) {
	for _, s := range []string{"fd=3", "path=/d.img,ro,id=serial,iops=100,bps=50M,direct,io=uring", "fd=4,io=pool",
		"path=/x,ro=1", "fd=2", "path=rel", "id=" + strings.Repeat("x", 21), "bps=1T", "bps=-1", "iops=0", ",", "fd=3,fd=3", "path=/a=b,id=a=b", "fd=3,format=qcow2,backing=5:qcow2+6:raw", "fd=3,name=/var/lib/a%2Cb%25c.img", "fd=3,name=%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDisk(s)
		if err != nil {
			return
		}
		if (d.FD >= FirstFD) == (d.Path != "") {
			t.Fatalf("ParseDisk(%q) = %+v: want exactly one of fd and path", s, d)
		}
		if len(d.ID) > 20 {
			t.Fatalf("ParseDisk(%q): id of %d bytes", s, len(d.ID))
		}
		again, err := ParseDisk(d.String())
		if err != nil {
			t.Fatalf("ParseDisk(%q) = %+v, whose String %q does not parse: %v", s, d, d.String(), err)
		}
		if !reflect.DeepEqual(again, d) {
			t.Fatalf("ParseDisk(%q) = %+v, read back from %q as %+v", s, d, d.String(), again)
		}
	})
}

// FuzzParseNIC: as FuzzParseDisk, for --nic.
func FuzzParseNIC(f *testing.F) {
	for _, s := range []string{"socket=/run/s.sock,mac=52:54:00:12:34:56", "socket=/s,mac=52:54:00:12:34:56,mtu=9000",
		"socket=/s,mac=01:00:5e:00:00:01", "mac=52:54:00:12:34:56", "socket=/s,mac=52:54:00:12:34:56,mtu=67", "socket=/s,socket=/t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseNIC(s)
		if err != nil {
			return
		}
		if len(n.MAC) != 6 || n.MAC[0]&1 != 0 || !strings.HasPrefix(n.Socket, "/") {
			t.Fatalf("ParseNIC(%q) = %+v", s, n)
		}
		again, err := ParseNIC(n.String())
		if err != nil {
			t.Fatalf("ParseNIC(%q) = %+v, whose String %q does not parse: %v", s, n, n.String(), err)
		}
		if again.String() != n.String() {
			t.Fatalf("ParseNIC(%q) = %v, read back as %v", s, n, again)
		}
	})
}

func TestParseDevice(t *testing.T) {
	if d, err := ParseDevice("pci=0000:00:01.1,container=3,group=4"); err != nil || d != (Device{PCI: "0000:00:01.1", Container: 3, Group: 4}) {
		t.Errorf("ParseDevice = %+v, %v", d, err)
	}
	for _, s := range []string{
		"", "pci=0000:00:01.1", "pci=0000:00:01.1,container=3", "pci=00:01.1,container=3,group=4",
		"pci=../x,container=3,group=4", "pci=0000:00:01.1,container=2,group=4", "pci=0000:00:01.1,container=3,group=x",
		"pci=0000:00:01.1,container=3,group=4,rom=1",
	} {
		if d, err := ParseDevice(s); err == nil {
			t.Errorf("ParseDevice(%q) = %+v, want an error", s, d)
		}
	}
}
