package main

import (
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/powerkey"
)

// Power-off requests come from signals (SIGTERM from a runner or
// container manager, SIGINT from Ctrl-Alt-Del once the kernel is told to
// deliver it, SIGPWR from a UPS daemon) and from the ACPI power button,
// which the kernel's button driver reports as KEY_POWER on an evdev device.

// watchSignals sends a reason on req for each power-off signal.
func watchSignals(con *console, req chan<- string) {
	// Ctrl-Alt-Del: signal PID 1 instead of rebooting on the spot.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	c := make(chan os.Signal, 4)
	signal.Notify(c, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	goLoop(con, "signals", func() {
		for s := range c {
			switch s {
			case unix.SIGINT:
				req <- "ctrl-alt-del"
			default:
				req <- "signal " + unix.SignalName(s.(unix.Signal))
			}
		}
	})
}

// watchPowerButton sends a request on each ACPI power button press and
// returns the number of input devices it watches.
func watchPowerButton(c *console, req chan<- string) int {
	n, errs := powerkey.Watch(func() { req <- "power-button" })
	for _, err := range errs {
		c.Printf("power button: %v", err)
	}
	return n
}

// powerOff brings the appliance down in order: stop the supervised
// processes, flush the page cache, then ask the kernel (ACPI S5) to power
// off. It is safe to call more than once; only the first call acts. It
// never returns.
type powerOff struct {
	once sync.Once
	c    *console
	stop func() // stops the supervised processes; may be nil
}

func (p *powerOff) Do(reason string) {
	p.once.Do(func() {
		p.c.Printf("powering off: %s", reason)
		if p.stop != nil {
			p.stop()
		}
		unix.Sync()
		if err := unmountData(); err != nil {
			p.c.Errorf("data", err)
		}
		p.c.Printf("poweroff")
		p.c.Flush(5 * time.Second)
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			p.c.Errorf("poweroff", err)
		}
	})
	select {} // PID 1 must never return
}
