package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/vmm/machine"
)

// exitStopped: `hyperroot vmm` was told twice to stop and did not wait for
// the guest.
const exitStopped = 5

// vmmMain is `hyperroot vmm`: one VM, console on stdio. The supervisor runs
// it for each configured VM; on any Linux host with KVM it boots a kernel
// the way `qemu-system-x86_64 -kernel` does.
func vmmMain(args []string) int {
	fs := flag.NewFlagSet("vmm", flag.ContinueOnError)
	var (
		name    = fs.String("name", "vm", "name of the VM (for messages)")
		kernel  = fs.String("kernel", "", "bzImage to boot (required)")
		initrd  = fs.String("initrd", "", "initramfs")
		cmdline = fs.String("cmdline", "console=ttyS0", "kernel command line")
		cpus    = fs.Int("cpus", 1, "vCPUs")
		memory  = fs.String("memory", "256M", "guest RAM (512M, 2G, ...)")
		huge    = fs.String("hugepages", "", "back guest RAM with huge pages: 2M or 1G")
		disks   diskFlags
		nics    nicFlags
	)
	fs.Var(&disks, "disk", "a virtio-blk disk, repeatable: path=FILE or fd=N (inherited), then\n"+
		"optionally ,ro ,id=SERIAL ,iops=N ,bps=BYTES (per second, e.g. 50M) ,direct (O_DIRECT)\n"+
		",io=auto|uring|pool (block backend; auto tries io_uring first)")
	fs.Var(&nics, "nic", "a virtio-net interface, repeatable: socket=PATH (a vhost-user backend such as\n"+
		"`hyperroot switch`),mac=52:54:00:12:34:56")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: hyperroot vmm --kernel K [--initrd I] [--cmdline C] [--cpus N] [--memory SIZE] [--disk path=IMG]...\n\n"+
			"Exit status: 0 guest powered off, 1 VMM error, 2 usage, 3 guest reset, 4 guest crashed, 5 stopped.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "hyperroot vmm: "+format+"\n", a...)
		return exitError
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "hyperroot vmm: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *kernel == "" {
		fmt.Fprintln(os.Stderr, "hyperroot vmm: --kernel is required")
		return exitUsage
	}
	var nicSpecs []nicSpec
	for _, a := range nics {
		n, err := parseNICSpec(a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hyperroot vmm: --nic %s: %v\n", a, err)
			return exitUsage
		}
		nicSpecs = append(nicSpecs, n)
	}
	var specs []diskSpec
	for _, a := range disks {
		d, err := parseDiskSpec(a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hyperroot vmm: --disk %s: %v\n", a, err)
			return exitUsage
		}
		specs = append(specs, d)
	}
	mem, err := config.ParseSize(*memory)
	if err != nil {
		return fail("memory: %v", err)
	}
	if mem%(4<<10) != 0 {
		return fail("memory %s: want a multiple of 4K", *memory)
	}
	cfg := machine.Config{Cmdline: *cmdline, CPUs: *cpus, Memory: uint64(mem), Console: os.Stdout,
		// Inherited from PID 1, which the kernel gives unknown
		// NAME=value command-line words as environment.
		Trace: os.Getenv("HYPERROOT_VMM_TRACE") == "1"}
	switch *huge {
	case "":
	case "2M":
		cfg.HugePages = 2 << 20
	case "1G":
		cfg.HugePages = 1 << 30
	default:
		return fail("hugepages %q: want 2M or 1G", *huge)
	}
	if cfg.Kernel, err = os.ReadFile(*kernel); err != nil {
		return fail("kernel: %v", err)
	}
	if *initrd != "" {
		if cfg.Initrd, err = os.ReadFile(*initrd); err != nil {
			return fail("initrd: %v", err)
		}
	}
	for i, d := range specs {
		f, err := d.open()
		if err != nil {
			return fail("disk %d: %v", i, err)
		}
		defer f.Close()
		cfg.Disks = append(cfg.Disks, d.machineDisk(f))
	}
	for _, n := range nicSpecs {
		cfg.NICs = append(cfg.NICs, n.machineNIC())
	}
	start := time.Now()
	m, err := machine.New(cfg)
	if err != nil {
		return fail("%s: %v", *name, err)
	}
	defer m.Close()
	// stdout is the guest's console: the VMM's own notes go to stderr.
	for i, kind := range m.DiskBackends() {
		if cfg.Disks[i].Direct {
			kind += ", O_DIRECT"
		}
		fmt.Fprintf(os.Stderr, "hyperroot vmm: disk %d: %s\n", i, kind)
	}
	// The kernel and initrd are in guest memory now: hand their copies
	// (tens of MiB) back to the host instead of keeping them as heap.
	cfg.Kernel, cfg.Initrd = nil, nil
	debug.FreeOSMemory()

	go feedConsole(m, os.Stdin)
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT)
	go func() {
		<-sigc
		m.PowerButton() // ask the guest to shut down
		<-sigc
		m.Stop() // asked twice: stop now
	}()
	r := m.Run()
	fmt.Fprintf(os.Stderr, "hyperroot vmm: %s: %s after %s (%s)\n", *name, r.Exit, time.Since(start).Round(time.Millisecond), r.Detail)
	switch r.Exit {
	case machine.ExitPoweroff:
		return exitPoweroff
	case machine.ExitReboot:
		return exitReboot
	case machine.ExitCrash:
		return exitCrash
	}
	return exitStopped
}

// feedConsole copies stdin to the guest's serial port, waiting (rather
// than dropping) when the guest is slow to read.
func feedConsole(m *machine.Machine, in io.Reader) {
	buf := make([]byte, 512)
	for {
		n, err := in.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			k := m.Input(p)
			p = p[k:]
			if len(p) > 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if err != nil {
			return
		}
	}
}
