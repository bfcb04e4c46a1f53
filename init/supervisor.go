package main

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/board"
	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/atomicfile"
	"github.com/hyperroot/hyperroot/internal/svirt"
	"github.com/hyperroot/hyperroot/vmm/cpuid"
)

// configPath is where a configuration baked into the image, or added as an
// extra initramfs archive by the runner, is found.
const configPath = "/etc/hyperroot/config.yaml"

// supervise is PID 1: it brings the appliance up, reports on the console,
// and waits for a power-off request. It never returns and never lets a
// panic kill init (which would panic the kernel): a panic is reported and
// the appliance stays up, saying what went wrong.
func supervise() {
	c := newConsole(openConsole())
	defer func() {
		if v := recover(); v != nil {
			c.Printf("error: supervisor panic: %v\n%s", v, debug.Stack())
			select {}
		}
	}()
	for _, err := range mountAll(baseMounts) {
		c.Errorf("mount", err)
	}
	// Before anything starts: huge pages for guest RAM only.
	guestTHP(c)
	args := readCmdline()
	// Before anything starts: what starts before the policy is loaded
	// runs unlabelled.
	sv := setupSELinux(c, args)
	b, err := loadBoard()
	if err != nil {
		c.Errorf("board", err)
		b = &board.Board{Name: "unknown", Hostname: "hyperroot"}
	}
	host := b.Hostname
	if host == "" {
		host = "hyperroot"
	}
	if err := unix.Sethostname([]byte(host)); err != nil {
		c.Errorf("hostname", err)
	}
	c.Printf("%s", banner(b))

	r := newReaper()
	goLoop(c, "reaper", r.Run)
	power := make(chan string, 8)
	watchSignals(c, power)
	p := &powerOff{c: c}

	loadModules(c, b.ModulesFor(cpuVendor()))
	if n := watchPowerButton(c, power); n == 0 {
		c.Printf("power button: no input devices, ACPI power button unavailable")
	}
	kvmLine := ""
	if s, err := probeKVM(); err != nil {
		c.Errorf("kvm", err)
		kvmLine = "unusable: " + err.Error()
	} else {
		c.Printf("kvm: %s", s)
		kvmLine = fmt.Sprint(s)
	}
	sv.labelDevices(c)
	// The kernel log is followed from here on: the seccomp actions of
	// the VMMs and the switch and, from the switch's start on, SELinux
	// denials.
	seccompLog := startSeccompLog(c)
	var data dataDisk
	data.mountLabelled(c)
	cfg, cfgPath := loadConfig(c, args, &data)
	data.guard(c, cfg, "the configuration")
	data.mountConfigured(c, cfg.Data)
	data.guard(c, cfg, "the configuration")
	// Before the switch: it and every child PID 1 starts inherit PID 1's
	// group, and the VMs get theirs.
	cg := setupCgroups(c)
	reserveHugePages(c, cfg.HugePages)
	setupSRIOV(c, cfg.PCI)

	var sw *netSwitch
	switchFile := ""
	if needsSwitch(cfg) {
		// Before the VMs: their NICs connect to its sockets.
		var err error
		st := switchStart{cfgPath: cfgPath, cfg: cfg, seccomp: seccompLog, hungAfter: args.SwitchHung}
		if cg != nil {
			// Its own group, apart from PID 1's (qos switch).
			if st.cgroup, err = cg.netSwitch.Dir(); err != nil {
				c.Errorf("switch", fmt.Errorf("its cgroup: %w", err))
			}
		}
		// Its own copy, which a configuration applied live replaces
		// (reconfig.go): a switch restarted later starts from that.
		if err := copyFile(cfgPath, switchConfigFile); err != nil {
			c.Errorf("switch", fmt.Errorf("its configuration: %w", err))
		} else {
			st.cfgPath, switchFile = switchConfigFile, switchConfigFile
		}
		if data.dev != "" {
			restoreLeases(c, cfg, switchDir)
			st.leased = func(network string) {
				if err := keepLeases(cfg, switchDir, network); err != nil {
					c.Errorf("leases", err)
				}
			}
		}
		if sw, err = startNetSwitch(c, sv.starter(r, svirt.SwitchLabel), st, 20*time.Second); err != nil {
			c.Errorf("switch", err)
		}
		if sv != nil {
			sw.sockLabel = svirt.SwitchLabel
		}
	}
	// Its sockets for the VMs' NICs, each VM's own while it runs.
	sv.closeSockets(c, cfg.VMs)
	// After the switch: the host port is its tap.
	startHostNet(c, cfg, args)
	f := newFleet(c, r, args.Oneshot)
	f.cg = cg
	f.seccomp = seccompLog
	f.sv = sv
	f.dataDisk = data.dev != ""
	p.stop = func() {
		f.Stop()
		if sw != nil {
			sw.Stop(5 * time.Second)
		}
		if sw != nil && data.dev != "" {
			// Renewals since the last new lease, for the next boot.
			for _, nw := range cfg.Networks {
				if err := keepLeases(cfg, switchDir, nw.Name); err != nil {
					c.Errorf("leases", err)
				}
			}
		}
	}
	f.Start(cfg.VMs)
	live := newLiveConfig(cfg, cfgPath)
	live.save = data.saver()
	live.sw, live.switchFile = sw, switchFile
	backend := apiBackend{f: f, sw: sw, kvm: kvmLine, live: live}
	var leases func() ([]api.Lease, error)
	if sw != nil {
		leases = backend.Leases
	}
	serveAPI(c, backend, metricsHandler(f, sw, leases), cfg.API)
	goLoop(c, "console input", func() { readConsoleInput(c, f, sw, os.Stdin) })
	c.Printf("ready")
	jobDone := make(chan bool, 1) // whether the hyperroot.run job passed
	if job, err := parseRunJob(args.Run); err != nil {
		c.Errorf("run", err)
		jobDone <- false
	} else if job == nil {
		jobDone <- true
	} else {
		jobRunning.Store(true)
		go func() {
			defer jobRunning.Store(false)
			passed := false
			guard(c, "run", func() {
				code, err := job.run(c, r)
				if err != nil {
					c.Errorf("run", err)
				}
				passed = err == nil && code == 0
			})
			jobDone <- passed
		}()
	}
	if args.TimeoutErr != nil {
		c.Errorf("cmdline", args.TimeoutErr)
	}
	if args.SwitchHungErr != nil {
		c.Errorf("cmdline", fmt.Errorf("%w; the default, %s, applies", args.SwitchHungErr, switchHungAfter))
	}
	if args.Oneshot {
		go func() {
			if guard(c, "oneshot", func() { oneshot(c, f, jobDone, args.Timeout, power) }) {
				c.Printf("result fail errors=%d oneshot=panic", c.Errors())
				power <- "oneshot"
			}
		}()
	}
	p.Do(<-power)
}

// jobRunning says whether the hyperroot.run job is still running, for the
// oneshot timeout's report.
var jobRunning atomic.Bool

func loadBoard() (*board.Board, error) {
	data, err := os.ReadFile(board.ImagePath)
	if err != nil {
		return nil, err
	}
	return board.Parse(board.ImagePath, data)
}

// banner is the first line the supervisor prints: what is running where.
func banner(b *board.Board) string {
	kernel := "unknown"
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	if r := b.Resolved; r != nil {
		kernel += fmt.Sprintf(" (%s %s)", r.KernelPackage, r.KernelVersion)
	}
	mem := "unknown"
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		mem = fmt.Sprintf("%d MiB", uint64(si.Totalram)*uint64(si.Unit)>>20)
	}
	return fmt.Sprintf("hyperroot %s board=%s kernel=%s cpus=%d (%s) memory=%s clocksource=%s go=%s",
		version, b.Name, kernel, runtime.NumCPU(), cpuid.HostCPU()["model name"], mem, clocksource(clocksourcePath), runtime.Version())
}

const clocksourcePath = "/sys/devices/system/clocksource/clocksource0/current_clocksource"

// clocksource names the kernel's clock and says when reading the time
// costs a system call: only tsc, kvm-clock and Hyper-V's TSC page are
// read in the vDSO. With another (hpet, acpi_pm: a TSC the kernel found
// unstable, as under QEMU's TCG) every time read of every process enters
// the kernel, the switch's and Go runtime's included: the network
// benchmark counted about 280 such calls per MiB the switch forwarded.
func clocksource(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	cs := strings.TrimSpace(string(b))
	switch cs {
	case "tsc", "kvm-clock", "hyperv_clocksource_tsc_page":
		return cs
	}
	return cs + " (not in the vDSO: each time read is a system call)"
}

// loadConfig finds and parses the configuration. Sources, first found
// wins: hyperroot.config= on the kernel command line (a path, or a URL
// fetched over the network: netconfig.go), the file in the image, the
// built-in default. A configuration that does not parse is an
// error and no VM is started from it: running half of what was asked, or
// the demo VMs instead, would hide the mistake. It also returns the path of
// the file, which the switch reads for itself ("" for the built-in
// default).
func loadConfig(c *console, args cmdline, disk *dataDisk) (*config.Config, string) {
	src := cmp.Or(args.Config, configPath)
	file := src // what the switch reads
	var data []byte
	var err error
	if args.Config == "" && disk.dev != "" {
		// The image's own configuration says which disks are VMs': a
		// labelled disk among them is not to be trusted (datadisk.go).
		if data, err := os.ReadFile(configPath); err == nil {
			if img, err := config.Parse(configPath, data); err == nil {
				disk.guard(c, img, "the image's configuration")
			}
		}
	}
	if saved, copied, ok := disk.savedConfig(c); ok && args.Config == "" {
		// The configuration last applied through the API comes before
		// the image's own; one that does not parse falls back to it.
		if cfg, err := config.Parse(savedConfig, saved); err == nil {
			c.Printf("config: %s (the data disk's, last applied; %d VMs, %d networks)", savedConfig, len(cfg.VMs), len(cfg.Networks))
			return cfg, copied
		} else {
			for _, line := range strings.Split(err.Error(), "\n") {
				c.Errorf("config", errors.New(line))
			}
			c.Printf("config: the data disk's does not parse: the image's instead")
		}
	}
	if isURL(src) {
		if data, src, err = fetchConfig(c, args); err == nil {
			file, err = fetchedConfig, os.WriteFile(fetchedConfig, data, 0o600)
		}
	} else if data, err = os.ReadFile(src); os.IsNotExist(err) && args.Config == "" {
		cfg := config.Default()
		if _, err := os.Stat(cfg.VMs[0].Kernel); err != nil {
			c.Printf("config: none, and no demo guest in the image: no VMs")
			return &config.Config{}, ""
		}
		c.Printf("config: none, built-in default (%d demo VMs)", len(cfg.VMs))
		return cfg, ""
	}
	if err != nil {
		c.Errorf("config", err)
		return &config.Config{}, ""
	}
	cfg, err := config.Parse(src, data)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			c.Errorf("config", errors.New(line))
		}
		return &config.Config{}, ""
	}
	c.Printf("config: %s (%d VMs, %d networks)", src, len(cfg.VMs), len(cfg.Networks))
	return cfg, file
}

// oneshot waits until every VM has exited, prints the verdict and asks for
// the power-off. With a timeout (hyperroot.timeout=, counted from the
// kernel's start) a run that has not finished by then is a failure: every
// VMM still running dumps its vCPUs and goroutines first (fleet.DumpAll),
// so that the console of a hung run says where each guest was.
func oneshot(c *console, f *fleet, jobDone <-chan bool, timeout time.Duration, power chan<- string) {
	done := make(chan struct{})
	runFailed := false
	goGuarded(c, "oneshot wait", func() {
		f.Wait()
		runFailed = !<-jobDone
		close(done)
	})
	var expired <-chan time.Time
	if timeout > 0 {
		expired = time.After(timeout - time.Duration(uptime()*float64(time.Second)))
	}
	select {
	case <-done:
		if escapeTally != nil {
			c.Flush(5 * time.Second)
			escapeTally.Report(c)
		}
		failed := f.Failed()
		if n := c.Errors(); n > 0 || len(failed) > 0 || runFailed {
			extra := ""
			if runFailed {
				extra = " run=fail"
			}
			c.Printf("result fail errors=%d vms=%s%s", n, strings.Join(failed, ","), extra)
		} else {
			c.Printf("result pass")
		}
		power <- "oneshot"
	case <-expired:
		running := f.Running()
		what, jobFail := strings.Join(running, ","), ""
		if jobRunning.Load() {
			if what != "" {
				what += " and "
			}
			what, jobFail = what+"the hyperroot.run job", " run=fail"
		}
		c.Printf("timeout: %s since boot, still running: %s; dumping their VMMs", timeout, what)
		f.DumpAll(dumpTimeout)
		c.Printf("result fail errors=%d vms=%s%s timeout=%s", c.Errors(), strings.Join(append(f.Failed(), running...), ","), jobFail, timeout)
		power <- "timeout"
	}
}

// switchConfigFile is the switch's copy of the configuration in force.
const switchConfigFile = "/run/hyperroot/switch.yaml"

// copyFile writes src's content to dst, atomically.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(dst, b, 0o644)
}
