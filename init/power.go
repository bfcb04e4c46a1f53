package main

import (
	"encoding/binary"
	"os"
	"os/signal"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Power-off requests come from signals (SIGTERM from a runner or
// container manager, SIGINT from Ctrl-Alt-Del once the kernel is told to
// deliver it, SIGPWR from a UPS daemon) and from the ACPI power button,
// which the kernel's button driver reports as KEY_POWER on an evdev device.

// watchSignals sends a reason on req for each power-off signal.
func watchSignals(req chan<- string) {
	// Ctrl-Alt-Del: signal PID 1 instead of rebooting on the spot.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	c := make(chan os.Signal, 4)
	signal.Notify(c, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	go func() {
		for s := range c {
			switch s {
			case unix.SIGINT:
				req <- "ctrl-alt-del"
			default:
				req <- "signal " + unix.SignalName(s.(unix.Signal))
			}
		}
	}()
}

const (
	evKey      = 1
	keyPower   = 116
	eventSize  = 24 // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
	typeOffset = 16
)

// isPowerPress reports whether one struct input_event is a KEY_POWER press.
func isPowerPress(ev []byte) bool {
	if len(ev) < eventSize {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[typeOffset:])
	code := binary.LittleEndian.Uint16(ev[typeOffset+2:])
	value := int32(binary.LittleEndian.Uint32(ev[typeOffset+4:]))
	return typ == evKey && code == keyPower && value == 1
}

// watchPowerButton reads every input device and sends a request on a
// KEY_POWER press. It returns the number of devices it watches.
func watchPowerButton(c *console, req chan<- string) int {
	devs, _ := filepath.Glob("/dev/input/event*")
	n := 0
	for _, d := range devs {
		f, err := os.Open(d)
		if err != nil {
			c.Printf("power button: %v", err)
			continue
		}
		n++
		go func() {
			defer f.Close()
			buf := make([]byte, eventSize*16)
			for {
				k, err := f.Read(buf)
				if err != nil {
					return
				}
				for off := 0; off+eventSize <= k; off += eventSize {
					if isPowerPress(buf[off : off+eventSize]) {
						req <- "power-button"
					}
				}
			}
		}()
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
		p.c.Printf("poweroff")
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			p.c.Errorf("poweroff", err)
		}
	})
	select {} // PID 1 must never return
}
