// Package rtc emulates the MC146818 CMOS real-time clock, from which Linux
// sets its system clock at boot, and the 128 bytes of CMOS RAM around it.
//
// The VMM inserts a Device over [layout.RTCPort, layout.RTCPort+Size):
// offset 0 is the index port (bit 7 is the NMI mask, which is ignored),
// offset 1 the data port.
//
// The clock is the host's wall clock in UTC (what Linux expects on x86)
// plus an offset the guest changes by writing the time registers, so a
// guest may set its own clock without affecting the host's. Time registers
// are computed on every read, in BCD or binary and 12- or 24-hour format as
// register B selects (x86 Linux assumes BCD, the power-on default).
// The century is register 0x32 (CenturyIndex): the FADT's CENTURY field
// should point there.
//
// Register A's UIP bit is set during the last 244 µs of every second, as on
// the real chip, so Linux's read loop (which retries while UIP is set)
// always terminates; values change exactly at the second boundary. While
// register B's SET bit is held the clock is frozen at what the guest writes;
// releasing SET restarts it from the written time, so the next update comes
// one second later. Register C reports the update-ended flag (UF) when a
// second boundary has passed since it was last read; alarm and periodic
// interrupts are not emulated, so the device raises no interrupt. Register
// D always reports valid RAM and time. Day of week is derived from the date
// and writes to it are ignored.
//
// A Device is safe for concurrent use; it has one mutex and calls nothing
// but Options.Now, which must not call back into it.
package rtc

import (
	"sync"
	"time"
)

// Size is the number of ports the Device decodes (index and data).
const Size = 2

// CenturyIndex is the CMOS index of the century register.
const CenturyIndex = 0x32

// CMOS register indexes.
const (
	regSec   = 0x00
	regMin   = 0x02
	regHour  = 0x04
	regDOW   = 0x06
	regDay   = 0x07
	regMonth = 0x08
	regYear  = 0x09
	regA     = 0x0A
	regB     = 0x0B
	regC     = 0x0C
	regD     = 0x0D
)

const (
	aUIP = 0x80

	bSet    = 0x80
	bPIE    = 0x40
	bAIE    = 0x20
	bUIE    = 0x10
	bBinary = 0x04
	b24h    = 0x02

	cIRQF = 0x80
	cPF   = 0x40
	cAF   = 0x20
	cUF   = 0x10

	dVRT = 0x80 // valid RAM and time

	// Power-on values: 32.768 kHz time base, 1024 Hz periodic rate;
	// 24-hour BCD.
	aDefault = 0x26
	bDefault = b24h

	pm = 0x80 // hour register bit in 12-hour mode

	// uipWindow is how long before each update UIP is set.
	uipWindow = 244 * time.Microsecond
)

// Options configures a Device. The zero value uses the host's clock.
type Options struct {
	// Now returns the host's wall-clock time; nil means time.Now. Tests
	// pass a fake clock.
	Now func() time.Time
}

// fields is a broken-down clock value in binary.
type fields struct {
	year, month, day, hour, min, sec int
}

func fieldsOf(t time.Time) fields {
	y, m, d := t.Date()
	h, mi, s := t.Clock()
	return fields{year: y, month: int(m), day: d, hour: h, min: mi, sec: s}
}

func (f fields) unix() int64 {
	return time.Date(f.year, time.Month(f.month), f.day, f.hour, f.min, f.sec, 0, time.UTC).Unix()
}

// Device is the RTC and CMOS RAM.
type Device struct {
	now func() time.Time

	mu    sync.Mutex
	index byte
	ram   [128]byte // registers A and B and plain RAM; time registers are computed
	// The guest's clock is the host's plus offSec seconds and offNsec
	// nanoseconds (kept apart so that any year the guest writes fits).
	offSec, offNsec int64
	frozen          fields // the clock while SET is held
	lastUF          int64  // guest second when register C was last read
}

// New returns an RTC showing the host's time.
func New(o Options) *Device {
	now := o.Now
	if now == nil {
		now = time.Now
	}
	d := &Device{now: now}
	d.ram[regA] = aDefault
	d.ram[regB] = bDefault
	d.lastUF = d.guestTime(now()).Unix()
	return d
}

// Read handles a guest read; each byte of a wide access reads the port at
// its own offset. The index port reads 0xFF.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		data[i] = 0xFF
		if offset < Size && uint64(i) < Size-offset && offset+uint64(i) == 1 {
			data[i] = d.readLocked(d.index)
		}
	}
}

// Write handles a guest write; see Read.
func (d *Device) Write(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, v := range data {
		if offset >= Size || uint64(i) >= Size-offset {
			break
		}
		if offset+uint64(i) == 0 {
			d.index = v & 0x7F
		} else {
			d.writeLocked(d.index, v)
		}
	}
}

func (d *Device) guestTime(now time.Time) time.Time {
	return time.Unix(now.Unix()+d.offSec, int64(now.Nanosecond())+d.offNsec).UTC()
}

func (d *Device) setHeld() bool { return d.ram[regB]&bSet != 0 }

// clockLocked is the current clock value, frozen while SET is held.
func (d *Device) clockLocked() fields {
	if d.setHeld() {
		return d.frozen
	}
	return fieldsOf(d.guestTime(d.now()))
}

func isTimeReg(i byte) bool {
	switch i {
	case regSec, regMin, regHour, regDOW, regDay, regMonth, regYear, CenturyIndex:
		return true
	}
	return false
}

func (d *Device) readLocked(i byte) byte {
	switch {
	case isTimeReg(i):
		return d.encodeLocked(i, d.clockLocked())
	case i == regA:
		v := d.ram[regA] &^ aUIP
		if !d.setHeld() && d.guestTime(d.now()).Nanosecond() >= int(time.Second-uipWindow) {
			v |= aUIP
		}
		return v
	case i == regC:
		var v byte
		if !d.setHeld() {
			if s := d.guestTime(d.now()).Unix(); s != d.lastUF {
				d.lastUF = s
				v |= cUF
			}
		}
		if b := d.ram[regB]; (v&cUF != 0 && b&bUIE != 0) || (v&cAF != 0 && b&bAIE != 0) || (v&cPF != 0 && b&bPIE != 0) {
			v |= cIRQF
		}
		return v
	case i == regD:
		return dVRT
	}
	return d.ram[i&0x7F]
}

func (d *Device) writeLocked(i byte, v byte) {
	switch {
	case isTimeReg(i):
		d.setFieldLocked(i, v)
	case i == regA:
		d.ram[regA] = v &^ aUIP
	case i == regB:
		d.writeBLocked(v)
	case i == regC, i == regD:
		// read-only
	default:
		d.ram[i&0x7F] = v
	}
}

// writeBLocked handles SET transitions: entering SET freezes the clock,
// leaving it restarts the clock from the frozen value at this instant.
func (d *Device) writeBLocked(v byte) {
	old := d.ram[regB]
	if v&bSet != 0 {
		v &^= bUIE // the chip clears UIE while SET is held
	}
	switch {
	case old&bSet == 0 && v&bSet != 0:
		d.frozen = fieldsOf(d.guestTime(d.now()))
	case old&bSet != 0 && v&bSet == 0:
		now := d.now()
		d.offSec = d.frozen.unix() - now.Unix()
		d.offNsec = -int64(now.Nanosecond())
		d.lastUF = d.frozen.unix()
	}
	d.ram[regB] = v
}

// setFieldLocked stores a guest-written time register. While SET is held
// it changes the frozen value; otherwise it moves the running clock by the
// difference, keeping its sub-second phase.
func (d *Device) setFieldLocked(i byte, v byte) {
	if i == regDOW {
		return
	}
	f := d.clockLocked()
	n := d.decode(v)
	switch i {
	case regSec:
		f.sec = n
	case regMin:
		f.min = n
	case regHour:
		f.hour = d.decodeHour(v)
	case regDay:
		f.day = n
	case regMonth:
		f.month = n
	case regYear:
		f.year = f.year/100*100 + n
	case CenturyIndex:
		f.year = n*100 + f.year%100
	}
	if d.setHeld() {
		// Kept as written, like the chip's registers: the guest writes
		// one field at a time (day 31 before month 12), so normalising
		// here would corrupt a valid date. SET's release normalises.
		d.frozen = f
		return
	}
	now := d.now()
	d.offSec += f.unix() - d.guestTime(now).Unix()
}

func (d *Device) binary() bool { return d.ram[regB]&bBinary != 0 }

func (d *Device) encode(n int) byte {
	if d.binary() {
		return byte(n)
	}
	return byte(n/10%10<<4 | n%10)
}

func (d *Device) decode(v byte) int {
	if d.binary() {
		return int(v)
	}
	return int(v>>4)*10 + int(v&0x0F)
}

func (d *Device) encodeLocked(i byte, f fields) byte {
	switch i {
	case regSec:
		return d.encode(f.sec)
	case regMin:
		return d.encode(f.min)
	case regHour:
		if d.ram[regB]&b24h != 0 {
			return d.encode(f.hour)
		}
		h := f.hour % 12
		if h == 0 {
			h = 12
		}
		v := d.encode(h)
		if f.hour >= 12 {
			v |= pm
		}
		return v
	case regDOW:
		wd := time.Date(f.year, time.Month(f.month), f.day, 0, 0, 0, 0, time.UTC).Weekday()
		return d.encode(int(wd) + 1) // 1 = Sunday
	case regDay:
		return d.encode(f.day)
	case regMonth:
		return d.encode(f.month)
	case regYear:
		return d.encode(f.year % 100)
	case CenturyIndex:
		return d.encode(f.year / 100 % 100)
	}
	return 0
}

func (d *Device) decodeHour(v byte) int {
	if d.ram[regB]&b24h != 0 {
		return d.decode(v)
	}
	h := d.decode(v&^pm) % 12
	if v&pm != 0 {
		h += 12
	}
	return h
}
