// Package powerkey reports presses of the power key — how Linux's ACPI
// button driver passes the power button on, through evdev — for programs
// that are PID 1 and have no acpid or logind to do it for them: the
// appliance's supervisor and the test guest's init.
package powerkey

import (
	"encoding/binary"
	"os"
	"path/filepath"
)

const (
	evKey      = 1
	keyPower   = 116
	eventSize  = 24 // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
	typeOffset = 16
)

// IsPress reports whether one struct input_event is a KEY_POWER press.
func IsPress(ev []byte) bool {
	if len(ev) < eventSize {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[typeOffset:])
	code := binary.LittleEndian.Uint16(ev[typeOffset+2:])
	value := int32(binary.LittleEndian.Uint32(ev[typeOffset+4:]))
	return typ == evKey && code == keyPower && value == 1
}

// Watch reads every /dev/input/event* device and calls pressed on each
// KEY_POWER press, from the device's goroutine. It returns how many devices
// it watches and the errors of those it could not open.
func Watch(pressed func()) (int, []error) {
	devs, _ := filepath.Glob("/dev/input/event*")
	n := 0
	var errs []error
	for _, d := range devs {
		f, err := os.Open(d)
		if err != nil {
			errs = append(errs, err)
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
					if IsPress(buf[off : off+eventSize]) {
						pressed()
					}
				}
			}
		}()
	}
	return n, errs
}
