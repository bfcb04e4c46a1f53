// Package vmmcli is the command-line contract of `hyperroot vmm`: its
// arguments (a struct that writes and reads the argv), its exit codes and
// the reasons the console reports for them, and the vhost-user socket
// names its NICs connect to. The supervisor, the VMM itself and the
// benchmark program all speak it through this one package, so that the two
// sides cannot drift apart.
package vmmcli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/cliflag"
)

// Command is the hyperroot subcommand that runs one VM.
const Command = "vmm"

// Exit codes of `hyperroot vmm`, part of the console contract: the
// supervisor reports them as the reason of "vm <name> exited".
const (
	ExitPoweroff = 0 // the guest powered off
	ExitError    = 1 // the VMM failed (bad input, KVM error)
	ExitUsage    = 2 // bad command line
	ExitReboot   = 3 // the guest asked for a reset
	ExitCrash    = 4 // the guest crashed: panic reported by pvpanic, triple fault, KVM internal error
	ExitStopped  = 5 // told twice to stop: the VMM did not wait for the guest
	ExitStalled  = 6 // the switch's watchdog found a delivery stuck (switch only)
)

// Reason is the console's name for how a VMM process ended: "poweroff",
// "error", ..., or "killed signal=SIG..." when a signal ended it.
func Reason(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed signal=" + unix.SignalName(ws.Signal())
	}
	switch ws.ExitStatus() {
	case ExitPoweroff:
		return "poweroff"
	case ExitError:
		return "error"
	case ExitUsage:
		return "usage"
	case ExitReboot:
		return "reboot"
	case ExitCrash:
		return "crash"
	case ExitStopped:
		return "stopped"
	case ExitStalled:
		return "stalled"
	}
	return "unknown"
}

// SeccompReason is the reason of an exit by SIGSYS, which is how a
// seccomp filter kills a VMM: syscall is the refused call, as the kernel
// recorded it, or "unknown".
func SeccompReason(syscall string) string { return "seccomp syscall=" + syscall }

// Code is the console's exit code of a process: its exit status, or
// 128+n when signal n ended it (as a shell reports it).
func Code(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Clean reports whether the process exited 0: for a VMM, the guest
// powered off.
func Clean(ws unix.WaitStatus) bool { return ws.Exited() && ws.ExitStatus() == ExitPoweroff }

// NICSocket is the vhost-user socket of a VM's NIC in the switch's
// directory dir: the switch listens on it, the VM's VMM connects to it.
// Each VM's sockets are in a directory of their own (NICDir), which is all
// of the switch's directory the VM's jail holds.
func NICSocket(dir, vm string, index int) string {
	return filepath.Join(NICDir(dir, vm), fmt.Sprintf("%d.sock", index))
}

// NICDir is the directory of a VM's NIC sockets in the switch's directory
// dir: the switch makes it, owned by the VM's jail uid, mode 0700.
func NICDir(dir, vm string) string { return filepath.Join(dir, vm) }

// Args are the arguments of `hyperroot vmm`. The zero value of a field is
// its default (Parse fills the defaults in).
type Args struct {
	Name   string // for messages; default "vm"
	Kernel string // bzImage or ELF vmlinux to boot; required unless BootDisk
	Initrd string
	// BootDisk boots the first disk's boot loader entry (BootEntry, or
	// its default): its kernel, initrds and command line, Cmdline
	// appended (vmm/boot/diskboot).
	BootDisk  bool
	BootEntry string
	Cmdline   string // default "console=ttyS0"
	CPUs      int    // default 1
	Memory    string // guest RAM as a size (512M, 2G); default "256M"; the VMM checks it
	HugePages string // "", "2M" or "1G"; the VMM checks it
	Disks     []Disk
	NICs      []NIC
	// Devices are host PCI devices passed through (VFIO), after the
	// virtio devices on the guest's bus.
	Devices []Device
	// PinVCPUs are the host CPUs of the vCPU threads (vCPU i on
	// PinVCPUs[i%len]), PinEmulator those of every other thread; empty:
	// anywhere.
	PinVCPUs, PinEmulator []int
	// NUMABind, when not nil, is the host NUMA node all of guest RAM is
	// allocated on (mbind), without a NUMA topology in the guest.
	NUMABind *int
	// NUMANodes, when not empty, is the guest's virtual NUMA topology,
	// in order: each node's vCPUs, its share of guest RAM and optionally
	// the host node that share is allocated on.
	NUMANodes []NUMANode
	// NUMADistances, when not empty, is the guest topology's SLIT, row
	// by row (len(NUMANodes) squared entries: node i's distance to node
	// j at i*n+j); empty: 10 local, 20 remote. The VMM checks it.
	NUMADistances []int
	// Jail, when not 0, is the uid and gid of the jail the VMM enters
	// once it has set the machine up, before the guest runs; it must then
	// have been started in the namespaces of jail.Attr (the supervisor
	// does it).
	Jail int
	// Trace traces port I/O, unclaimed accesses and vCPU registers.
	Trace bool
	// DumpTag, when set (hex digits), goes into every line of the VMM's
	// dump ("hyperroot vmm: dump <tag>: ..."): a secret between the
	// supervisor and this VMM, so that a guest, whose console output
	// shares the VMM's output pipe, cannot forge the lines the
	// supervisor acts on. The supervisor takes it out again when it
	// relays them.
	DumpTag string
	// Seccomp is what the VMM's seccomp filters do with a refused system
	// call: "kill" (the default), "log" (development) or "off"; the VMM
	// checks it. A flag, not the environment: the jailed VMM has none.
	Seccomp string
}

var dumpTagRE = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// Defaults of Args, as Parse fills them in.
const (
	DefaultName    = "vm"
	DefaultCmdline = "console=ttyS0"
	DefaultCPUs    = 1
	DefaultMemory  = "256M"
	DefaultSeccomp = "kill"
)

// Argv is the command line that runs a with the hyperroot binary: the
// subcommand, then the flags. Defaults are written out too, so that the
// line a process listing shows says everything.
func (a Args) Argv() []string {
	name, cmdline, cpus, memory, sc := a.Name, a.Cmdline, a.CPUs, a.Memory, a.Seccomp
	if name == "" {
		name = DefaultName
	}
	if cmdline == "" {
		cmdline = DefaultCmdline
	}
	if cpus == 0 {
		cpus = DefaultCPUs
	}
	if memory == "" {
		memory = DefaultMemory
	}
	if sc == "" {
		sc = DefaultSeccomp
	}
	argv := []string{Command, "--name", name}
	if a.BootDisk {
		argv = append(argv, "--boot-disk")
		if a.BootEntry != "" {
			argv = append(argv, "--boot-entry", a.BootEntry)
		}
	} else {
		argv = append(argv, "--kernel", a.Kernel)
	}
	argv = append(argv, "--cpus", strconv.Itoa(cpus), "--memory", memory, "--cmdline", cmdline)
	if a.Initrd != "" {
		argv = append(argv, "--initrd", a.Initrd)
	}
	if a.HugePages != "" {
		argv = append(argv, "--hugepages", a.HugePages)
	}
	if len(a.PinVCPUs) > 0 {
		argv = append(argv, "--pin-vcpus", cpuList(a.PinVCPUs))
	}
	if len(a.PinEmulator) > 0 {
		argv = append(argv, "--pin-emulator", cpuList(a.PinEmulator))
	}
	if a.NUMABind != nil {
		argv = append(argv, "--numa-bind", strconv.Itoa(*a.NUMABind))
	}
	for _, n := range a.NUMANodes {
		argv = append(argv, "--numa-node", n.String())
	}
	if len(a.NUMADistances) > 0 {
		argv = append(argv, "--numa-distances", cpuList(a.NUMADistances))
	}
	if a.Jail != 0 {
		argv = append(argv, "--jail", strconv.Itoa(a.Jail))
	}
	if a.Trace {
		argv = append(argv, "--trace")
	}
	if a.DumpTag != "" {
		argv = append(argv, "--dump-tag", a.DumpTag)
	}
	for _, d := range a.Disks {
		argv = append(argv, "--disk", d.String())
	}
	for _, n := range a.NICs {
		argv = append(argv, "--nic", n.String())
	}
	for _, d := range a.Devices {
		argv = append(argv, "--device", d.String())
	}
	return append(argv, "--seccomp", sc)
}

// Parse reads the flags of `hyperroot vmm` (args after the subcommand).
// On an error it has written it to stderr (for an unknown flag, with the
// usage text) and the VMM should exit with ExitUsage.
func Parse(args []string, stderr io.Writer) (Args, error) {
	fs := flag.NewFlagSet(Command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		a           Args
		disks, nics cliflag.Strings
		devices     cliflag.Strings
		errorf      = func(format string, v ...any) error {
			err := fmt.Errorf(format, v...)
			fmt.Fprintf(stderr, "hyperroot vmm: %v\n", err)
			return err
		}
	)
	fs.StringVar(&a.Name, "name", DefaultName, "name of the VM (for messages)")
	fs.StringVar(&a.Kernel, "kernel", "", "kernel to boot, a bzImage or an ELF vmlinux (required unless --boot-disk)")
	fs.BoolVar(&a.BootDisk, "boot-disk", false, "boot what the first disk's boot loader configuration names (grub.cfg,\n"+
		"Boot Loader Specification entries, extlinux.conf): its kernel, initrds and command line, --cmdline appended")
	fs.StringVar(&a.BootEntry, "boot-entry", "", "with --boot-disk, the entry to boot (title, id or index) instead of the default")
	fs.StringVar(&a.Initrd, "initrd", "", "initramfs")
	fs.StringVar(&a.Cmdline, "cmdline", DefaultCmdline, "kernel command line")
	fs.IntVar(&a.CPUs, "cpus", DefaultCPUs, "vCPUs")
	fs.StringVar(&a.Memory, "memory", DefaultMemory, "guest RAM (512M, 2G, ...)")
	fs.StringVar(&a.HugePages, "hugepages", "", "back guest RAM with huge pages: 2M or 1G")
	fs.Func("pin-vcpus", "host CPUs of the vCPU threads, comma-separated: vCPU i runs on the i-th (wrapping)",
		func(v string) (err error) { a.PinVCPUs, err = parseCPUList(v); return err })
	fs.Func("pin-emulator", "host CPUs of the VMM's other threads, comma-separated",
		func(v string) (err error) { a.PinEmulator, err = parseCPUList(v); return err })
	fs.Func("numa-bind", "allocate all of guest RAM on this host NUMA node",
		func(v string) error {
			n, err := parseHostNode(v)
			if err == nil {
				a.NUMABind = &n
			}
			return err
		})
	fs.Func("numa-node", "a node of the guest's NUMA topology, repeatable, in order: CPUS:SIZE[:HOSTNODE[:HOSTCPUS]]\n"+
		"(its vCPUs, comma-separated; its share of guest RAM; the host node that share is allocated on;\n"+
		"the host CPUs its vCPU threads run on, comma-separated)",
		func(v string) error {
			n, err := ParseNUMANode(v)
			a.NUMANodes = append(a.NUMANodes, n)
			return err
		})
	fs.Func("numa-distances", "the guest topology's SLIT, comma-separated, row by row (node i to node j at i*n+j);\n"+
		"default 10 to itself, 20 to the others",
		func(v string) (err error) { a.NUMADistances, err = parseDistances(v); return err })
	fs.IntVar(&a.Jail, "jail", 0, "jail the VMM as this uid and gid once the machine is set up (it must run\n"+
		"as root in new mount, PID, IPC, UTS and network namespaces: the supervisor starts it so)")
	fs.BoolVar(&a.Trace, "trace", false, "trace port I/O, unclaimed accesses and vCPU registers")
	fs.Func("dump-tag", "hex digits put in every line of a dump (SIGUSR1), for the supervisor to tell them from a guest's",
		func(v string) error {
			if !dumpTagRE.MatchString(v) {
				return fmt.Errorf("want 1 to 64 hex digits, got %q", v)
			}
			a.DumpTag = v
			return nil
		})
	fs.StringVar(&a.Seccomp, "seccomp", DefaultSeccomp, "seccomp filters: kill (a refused system call kills the VMM), log (it is logged\n"+
		"by the kernel's audit and let through: development) or off")
	fs.Var(&disks, "disk", "a virtio-blk disk, repeatable: path=FILE or fd=N (inherited), then\n"+
		"optionally ,ro ,id=SERIAL ,iops=N ,bps=BYTES (per second, e.g. 50M) ,direct (O_DIRECT)\n"+
		",io=auto|uring|pool (block backend; auto tries io_uring first)")
	fs.Var(&nics, "nic", "a virtio-net interface, repeatable: socket=PATH (a vhost-user backend such as\n"+
		"`hyperroot switch`),mac=52:54:00:12:34:56")
	fs.Var(&devices, "device", "a host PCI device passed through with VFIO, repeatable: pci=0000:00:05.0,container=N,group=M\n"+
		"(inherited descriptors of /dev/vfio/vfio and of the device's IOMMU group, which must be viable)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: hyperroot vmm --kernel K [--initrd I] [--cmdline C] [--cpus N] [--memory SIZE] [--disk path=IMG]...\n\n"+
			"Exit status: 0 guest powered off, 1 VMM error, 2 usage, 3 guest reset, 4 guest crashed, 5 stopped.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return a, err // the flag package has printed it
	}
	if fs.NArg() > 0 {
		return a, errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case a.Kernel == "" && !a.BootDisk:
		return a, errorf("--kernel is required (or --boot-disk)")
	case a.Kernel != "" && a.BootDisk:
		return a, errorf("give --kernel or --boot-disk, not both")
	case a.BootDisk && a.Initrd != "":
		return a, errorf("--initrd comes from the disk with --boot-disk")
	case a.BootEntry != "" && !a.BootDisk:
		return a, errorf("--boot-entry is for --boot-disk")
	}
	if a.Jail < 0 {
		return a, errorf("--jail %d: want a uid other than 0", a.Jail)
	}
	for _, s := range nics {
		n, err := ParseNIC(s)
		if err != nil {
			return a, errorf("--nic %s: %w", s, err)
		}
		a.NICs = append(a.NICs, n)
	}
	for _, s := range disks {
		d, err := ParseDisk(s)
		if err != nil {
			return a, errorf("--disk %s: %w", s, err)
		}
		a.Disks = append(a.Disks, d)
	}
	for _, s := range devices {
		d, err := ParseDevice(s)
		if err != nil {
			return a, errorf("--device %s: %w", s, err)
		}
		a.Devices = append(a.Devices, d)
	}
	if a.BootDisk && len(a.Disks) == 0 {
		return a, errorf("--boot-disk needs a --disk to boot from")
	}
	return a, nil
}

// Block backends a disk may ask for; the values are the VMM machine's.
const (
	IOAuto  = ""         // io_uring, else a thread pool
	IOUring = "io_uring" // io_uring or fail
	IOPool  = "pool"     // a thread pool
)

// Disk is one --disk flag: fd=N|path=P[,ro][,id=S][,iops=N][,bps=SIZE][,direct][,io=auto|uring|pool].
// The supervisor passes disks as inherited descriptors (fd=, see FirstFD):
// the VMM will run in a jail with no filesystem to open them in. Users on a
// host write path= instead.
type Disk struct {
	FD        int    // inherited descriptor, or -1 (ParseDisk); 0 is never valid
	Path      string // file to open, when FD is -1
	ReadOnly  bool
	ID        string // GET_ID serial, at most 20 bytes
	IOPS      uint64
	Bandwidth uint64 // bytes per second
	Direct    bool   // O_DIRECT
	IO        string // IOAuto, IOUring or IOPool
	Format    string // "" (raw) or "qcow2"
	// Poll is the longest interval at which a busy queue is polled (see
	// machine.Disk.Poll): 0 for the default, negative for never.
	Poll time.Duration
	// Name is what the VMM's messages call the disk: the supervisor's
	// path of an inherited one (the VMM cannot see it); "" for none.
	Name string
	// Backing is a qcow2 disk's backing chain as inherited descriptors,
	// the image's own backing file first. Without it, a disk given by
	// path opens its backing files by the names in their headers.
	Backing []Backing
}

// Backing is one file of a qcow2 disk's backing chain.
type Backing struct {
	FD     int
	Format string // "raw" or "qcow2"
}

// MaxBackingChain bounds a qcow2 disk's backing chain: deeper chains are
// refused (a loop would be endless).
const MaxBackingChain = 8

// FirstFD is the descriptor number of a child's first inherited file
// (exec.Cmd.ExtraFiles[0]): the supervisor's disk i is FirstFD+i.
const FirstFD = 3

// String is the --disk flag value for d; a Path is used when FD is not
// an inherited descriptor.
func (d Disk) String() string {
	s := "path=" + d.Path
	if d.FD >= FirstFD {
		s = fmt.Sprintf("fd=%d", d.FD)
	}
	if d.ReadOnly {
		s += ",ro"
	}
	if d.ID != "" {
		s += ",id=" + d.ID
	}
	if d.IOPS > 0 {
		s += fmt.Sprintf(",iops=%d", d.IOPS)
	}
	if d.Bandwidth > 0 {
		s += fmt.Sprintf(",bps=%d", d.Bandwidth)
	}
	if d.Direct {
		s += ",direct"
	}
	if d.IO != IOAuto {
		s += ",io=" + d.IO
	}
	if d.Format != "" {
		s += ",format=" + d.Format
	}
	switch {
	case d.Poll < 0:
		s += ",poll=off"
	case d.Poll > 0:
		s += ",poll=" + d.Poll.String()
	}
	if d.Name != "" {
		s += ",name=" + nameEscaper.Replace(d.Name)
	}
	for i, b := range d.Backing {
		sep := "+"
		if i == 0 {
			sep = ",backing="
		}
		s += fmt.Sprintf("%s%d:%s", sep, b.FD, b.Format)
	}
	return s
}

const diskKeys = "fd, path, ro, id, iops, bps, direct, io, format, poll, name, backing"

// nameEscaper keeps a disk's name (a path) from splitting the flag: %XX
// for the separator and the escape itself, which ParseDisk decodes.
var nameEscaper = strings.NewReplacer("%", "%25", ",", "%2C")

// maxName bounds a disk's name (PATH_MAX).
const maxName = 4096

// Label is what messages call disk i: "disk PATH", or "disk I" when the
// VMM has no path for it.
func (d Disk) Label(i int) string {
	switch {
	case d.Name != "":
		return "disk " + d.Name
	case d.Path != "":
		return "disk " + d.Path
	}
	return fmt.Sprintf("disk %d", i)
}

// ParseDisk reads a --disk flag value.
func ParseDisk(s string) (Disk, error) {
	d := Disk{FD: -1}
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(f, "=")
		if seen[k] {
			return d, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		if k == "ro" || k == "direct" {
			if hasValue {
				return d, fmt.Errorf("%s takes no value", k)
			}
			d.ReadOnly = d.ReadOnly || k == "ro"
			d.Direct = d.Direct || k == "direct"
			continue
		}
		if !hasValue || v == "" {
			return d, fmt.Errorf("%q: want key=value (keys: %s)", f, diskKeys)
		}
		switch k {
		case "fd":
			n, err := strconv.Atoi(v)
			if err != nil || n < FirstFD {
				return d, fmt.Errorf("fd %q: want an inherited descriptor number, %d or more", v, FirstFD)
			}
			d.FD = n
		case "path":
			if !strings.HasPrefix(v, "/") {
				return d, fmt.Errorf("path %q: want an absolute path", v)
			}
			d.Path = v
		case "id":
			if len(v) > 20 {
				return d, fmt.Errorf("id %q: longer than 20 bytes", v)
			}
			d.ID = v
		case "iops":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				return d, fmt.Errorf("iops %q: want a positive number", v)
			}
			d.IOPS = n
		case "bps":
			n, err := config.ParseSize(v)
			if err != nil || n == 0 {
				return d, fmt.Errorf("bps %q: want bytes per second, such as 52428800 or 50M", v)
			}
			d.Bandwidth = uint64(n)
		case "io":
			switch v {
			case "auto":
			case "uring", "io_uring":
				d.IO = IOUring
			case "pool":
				d.IO = IOPool
			default:
				return d, fmt.Errorf("io %q: want auto, uring or pool", v)
			}
		case "poll":
			if v == "off" {
				d.Poll = -1
				break
			}
			p, err := time.ParseDuration(v)
			if err != nil || p < time.Microsecond || p > config.MaxDiskPoll {
				return d, fmt.Errorf("poll %q: want off or a duration from 1us to %v", v, config.MaxDiskPoll)
			}
			d.Poll = p
		case "format":
			switch v {
			case "raw":
			case "qcow2":
				d.Format = v
			default:
				return d, fmt.Errorf("format %q: want raw or qcow2", v)
			}
		case "name":
			name, err := url.PathUnescape(v)
			if err != nil || len(name) > maxName {
				return d, fmt.Errorf("name %q: want a path of at most %d bytes, %%2C for a comma", v, maxName)
			}
			d.Name = name
		case "backing":
			for _, e := range strings.Split(v, "+") {
				fd, format, _ := strings.Cut(e, ":")
				n, err := strconv.Atoi(fd)
				if err != nil || n < FirstFD || (format != "raw" && format != "qcow2") {
					return d, fmt.Errorf("backing %q: want FD:FORMAT[+FD:FORMAT...], FD an inherited descriptor, FORMAT raw or qcow2", e)
				}
				d.Backing = append(d.Backing, Backing{FD: n, Format: format})
			}
			if len(d.Backing) > MaxBackingChain {
				return d, fmt.Errorf("backing: %d files, want at most %d", len(d.Backing), MaxBackingChain)
			}
		default:
			return d, fmt.Errorf("unknown key %q (keys: %s)", k, diskKeys)
		}
	}
	if (d.FD < 0) == (d.Path == "") {
		return d, errors.New("want exactly one of fd=N and path=FILE")
	}
	if len(d.Backing) > 0 && d.Format != "qcow2" {
		return d, errors.New("backing is for format=qcow2")
	}
	return d, nil
}

// NIC is one --nic flag: socket=PATH,mac=XX:XX:XX:XX:XX:XX[,mtu=N], a
// virtio-net interface whose frames the vhost-user backend listening on
// Socket moves.
type NIC struct {
	Socket string
	MAC    net.HardwareAddr
	MTU    int // 0: not announced to the guest
}

// String is the --nic flag value for n.
func (n NIC) String() string {
	s := fmt.Sprintf("socket=%s,mac=%s", n.Socket, n.MAC)
	if n.MTU > 0 {
		s += fmt.Sprintf(",mtu=%d", n.MTU)
	}
	return s
}

// ParseNIC reads a --nic flag value.
func ParseNIC(s string) (NIC, error) {
	var n NIC
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return n, fmt.Errorf("%q: want key=value (keys: socket, mac, mtu)", f)
		}
		if seen[k] {
			return n, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "socket":
			if !strings.HasPrefix(v, "/") {
				return n, fmt.Errorf("socket %q: want an absolute path", v)
			}
			n.Socket = v
		case "mac":
			mac, err := net.ParseMAC(v)
			if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
				return n, fmt.Errorf("mac %q: want a unicast Ethernet address such as 52:54:00:12:34:56", v)
			}
			n.MAC = mac
		case "mtu":
			m, err := strconv.Atoi(v)
			if err != nil || m < 68 || m > 65535 {
				return n, fmt.Errorf("mtu %q: want 68 to 65535", v)
			}
			n.MTU = m
		default:
			return n, fmt.Errorf("unknown key %q (keys: socket, mac, mtu)", k)
		}
	}
	if n.Socket == "" || n.MAC == nil {
		return n, errors.New("want socket=PATH and mac=ADDRESS")
	}
	return n, nil
}

// ForVM is the command line of configured VM vm, as the supervisor runs
// it: its disks are the inherited descriptors FirstFD, FirstFD+1, ... in
// order (the supervisor opens them), its NICs the sockets of the switch
// serving dir, with their network's MTU, and it jails itself as the VM's
// id.
func ForVM(vm config.VM, dir string) Args {
	a := Args{Name: vm.Name, Kernel: vm.Kernel, Initrd: vm.Initrd, Cmdline: vm.Cmdline, BootDisk: vm.BootDisk, BootEntry: vm.BootEntry,
		CPUs: vm.CPUs, Memory: vm.Memory.String(), PinVCPUs: vm.Pin.VCPUs, PinEmulator: vm.Pin.Emulator,
		Jail: vm.ID}
	if vm.HugePages != 0 {
		a.HugePages = vm.HugePages.String()
	}
	a.NUMABind = vm.NUMA.Node
	for _, n := range vm.NUMA.Nodes {
		a.NUMANodes = append(a.NUMANodes, NUMANode{CPUs: n.CPUs, Memory: n.Memory.String(), Host: n.HostNode})
	}
	for i, d := range vm.Disks {
		a.Disks = append(a.Disks, Disk{FD: FirstFD + i, Name: d.Path, ReadOnly: d.ReadOnly, ID: d.ID,
			IOPS: d.Limits.IOPS, Bandwidth: uint64(d.Limits.Bandwidth), Direct: d.Direct, IO: diskIO(d.IO), Poll: d.Poll})
		if d.Format == config.FormatQcow2 {
			// Its backing chain's descriptors follow every disk's;
			// the supervisor fills them in once it has opened them.
			a.Disks[i].Format = d.Format
		}
	}
	for i, n := range vm.NICs {
		a.NICs = append(a.NICs, NIC{Socket: NICSocket(dir, vm.Name, i), MAC: n.MAC, MTU: n.MTU})
	}
	return a
}

// diskIO is the --disk io= value of a configured disk's io: key.
func diskIO(io string) string {
	switch io {
	case "io_uring", "uring":
		return IOUring
	case "pool":
		return IOPool
	}
	return IOAuto
}

// cpuList writes CPU numbers as the --pin flags take them: "2,3".
func cpuList(cpus []int) string {
	w := make([]string, len(cpus))
	for i, c := range cpus {
		w[i] = strconv.Itoa(c)
	}
	return strings.Join(w, ",")
}

// NUMANode is one --numa-node flag.
type NUMANode struct {
	CPUs   []int
	Memory string // a size (1G); the VMM checks it
	Host   *int   // host node; nil: any
	// HostCPUs, with Host, are the host CPUs this node's vCPU threads
	// run on (the host node's, which the supervisor reads); empty: any.
	HostCPUs []int
}

// String is the --numa-node flag value for n.
func (n NUMANode) String() string {
	s := cpuList(n.CPUs) + ":" + n.Memory
	if n.Host != nil {
		s += ":" + strconv.Itoa(*n.Host)
		if len(n.HostCPUs) > 0 {
			s += ":" + cpuList(n.HostCPUs)
		}
	}
	return s
}

// ParseNUMANode reads a --numa-node flag value, CPUS:SIZE[:HOSTNODE[:HOSTCPUS]].
func ParseNUMANode(v string) (NUMANode, error) {
	f := strings.Split(v, ":")
	if len(f) < 2 || len(f) > 4 || f[1] == "" {
		return NUMANode{}, fmt.Errorf("numa node %q: want CPUS:SIZE[:HOSTNODE[:HOSTCPUS]]", v)
	}
	cpus, err := parseCPUList(f[0])
	if err != nil {
		return NUMANode{}, fmt.Errorf("numa node %q: %w", v, err)
	}
	n := NUMANode{CPUs: cpus, Memory: f[1]}
	if len(f) >= 3 {
		h, err := parseHostNode(f[2])
		if err != nil {
			return NUMANode{}, fmt.Errorf("numa node %q: %w", v, err)
		}
		n.Host = &h
	}
	if len(f) == 4 {
		if n.HostCPUs, err = parseCPUList(f[3]); err != nil {
			return NUMANode{}, fmt.Errorf("numa node %q: %w", v, err)
		}
	}
	return n, nil
}

// parseHostNode reads a host NUMA node number, bounded as the
// configuration bounds it.
func parseHostNode(v string) (int, error) {
	h, err := strconv.Atoi(v)
	if err != nil || h < 0 || h > config.MaxHostNode {
		return 0, fmt.Errorf("host node %q: want a number 0-%d", v, config.MaxHostNode)
	}
	return h, nil
}

// parseDistances reads --numa-distances: NUMA distances, 10 (local) to
// 254, comma-separated; the VMM checks their number and places.
func parseDistances(v string) ([]int, error) { return parseInts(v, "NUMA distance", 10, 254) }

// parseCPUList reads "2,3" (at least one CPU, each 0-8191).
func parseCPUList(v string) ([]int, error) { return parseInts(v, "CPU", 0, 8191) }

// parseInts reads comma-separated numbers, each lo to hi, at least one.
func parseInts(v, what string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s %q: want a number %d-%d", what, f, lo, hi)
		}
		out = append(out, n)
	}
	return out, nil
}

// Device is one --device flag: a host PCI device the VMM passes through
// with VFIO, its container and IOMMU group opened by the supervisor (the
// jailed VMM opens no file).
type Device struct {
	PCI       string // its address, 0000:00:05.0
	Container int    // inherited descriptor of /dev/vfio/vfio
	Group     int    // inherited descriptor of /dev/vfio/<its group>
}

var pciAddrRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// String is the --device flag value for d.
func (d Device) String() string {
	return fmt.Sprintf("pci=%s,container=%d,group=%d", d.PCI, d.Container, d.Group)
}

// ParseDevice reads a --device value.
func ParseDevice(s string) (Device, error) {
	d := Device{Container: -1, Group: -1}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "pci":
			if !pciAddrRE.MatchString(v) {
				return d, fmt.Errorf("pci=%q: want a PCI address such as 0000:00:05.0", v)
			}
			d.PCI = v
		case "container", "group":
			n, err := strconv.Atoi(v)
			if err != nil || n < FirstFD {
				return d, fmt.Errorf("%s=%q: want an inherited descriptor (%d or more)", k, v, FirstFD)
			}
			if k == "container" {
				d.Container = n
			} else {
				d.Group = n
			}
		default:
			return d, fmt.Errorf("unknown key %q: want pci, container and group", k)
		}
	}
	if d.PCI == "" || d.Container < 0 || d.Group < 0 {
		return d, fmt.Errorf("want pci=ADDRESS,container=FD,group=FD")
	}
	return d, nil
}
