package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/board"
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
	args := readCmdline()

	r := newReaper()
	go r.Run()
	power := make(chan string, 8)
	watchSignals(power)
	p := &powerOff{c: c}

	loadModules(c, b.ModulesFor(cpuVendor()))
	if n := watchPowerButton(c, power); n == 0 {
		c.Printf("power button: no input devices, ACPI power button unavailable")
	}
	if s, err := probeKVM(); err != nil {
		c.Errorf("kvm", err)
	} else {
		c.Printf("kvm: %s", s)
	}
	reportConfig(c, args)

	c.Printf("ready")
	if args.Oneshot {
		if n := c.Errors(); n > 0 {
			c.Printf("result fail errors=%d", n)
		} else {
			c.Printf("result pass")
		}
		p.Do("oneshot")
	}
	p.Do(<-power)
}

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
	return fmt.Sprintf("hyperroot %s board=%s kernel=%s cpus=%d memory=%s go=%s",
		version, b.Name, kernel, runtime.NumCPU(), mem, runtime.Version())
}

// reportConfig says which configuration the appliance found. Sources,
// first found wins: hyperroot.config= on the kernel command line, then the
// file in the image.
func reportConfig(c *console, args cmdline) {
	src := configPath
	if args.Config != "" {
		src = args.Config
	}
	if strings.Contains(src, "://") {
		c.Errorf("config", fmt.Errorf("%s: fetching configuration over the network is not supported yet", src))
		return
	}
	fi, err := os.Stat(src)
	switch {
	case err == nil:
		c.Printf("config: %s (%d bytes, %s)", src, fi.Size(), fi.ModTime().UTC().Format(time.RFC3339))
	case os.IsNotExist(err) && args.Config == "":
		c.Printf("config: none, built-in default")
	default:
		c.Errorf("config", err)
	}
}
