package rtc

import (
	"testing"
	"time"
)

// clock is a settable fake host clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newAt(t time.Time) (*Device, *clock) {
	c := &clock{t: t}
	return New(Options{Now: c.now}), c
}

func get(d *Device, i byte) byte {
	d.Write(0, []byte{i})
	var b [1]byte
	d.Read(1, b[:])
	return b[0]
}

func set(d *Device, i, v byte) { d.Write(0, []byte{i, v}) } // one 16-bit write: index then data

func TestRegisterFormats(t *testing.T) {
	thu := time.Date(2024, 2, 29, 13, 5, 9, 500e6, time.UTC)
	tests := []struct {
		name string
		at   time.Time
		regB byte
		want map[byte]byte
	}{
		{"BCD 24h", thu, b24h, map[byte]byte{
			regSec: 0x09, regMin: 0x05, regHour: 0x13, regDOW: 0x05, regDay: 0x29, regMonth: 0x02, regYear: 0x24, CenturyIndex: 0x20}},
		{"binary 24h", thu, b24h | bBinary, map[byte]byte{
			regSec: 9, regMin: 5, regHour: 13, regDOW: 5, regDay: 29, regMonth: 2, regYear: 24, CenturyIndex: 20}},
		{"BCD 12h PM", thu, 0, map[byte]byte{regHour: pm | 0x01}},
		{"binary 12h PM", thu, bBinary, map[byte]byte{regHour: pm | 1}},
		{"BCD 12h midnight", time.Date(2024, 1, 1, 0, 30, 0, 0, time.UTC), 0, map[byte]byte{regHour: 0x12}},
		{"BCD 12h noon", time.Date(2024, 1, 1, 12, 30, 0, 0, time.UTC), 0, map[byte]byte{regHour: pm | 0x12}},
		{"BCD 12h 11 PM", time.Date(2024, 1, 1, 23, 0, 0, 0, time.UTC), 0, map[byte]byte{regHour: pm | 0x11}},
		{"year 2000s", time.Date(2009, 1, 4, 0, 0, 0, 0, time.UTC), b24h, map[byte]byte{
			regYear: 0x09, CenturyIndex: 0x20, regDOW: 0x01, regMonth: 0x01}},
		{"host zone ignored", thu.In(time.FixedZone("X", 5*3600)), b24h, map[byte]byte{regHour: 0x13}},
		{"last century", time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC), b24h | bBinary, map[byte]byte{
			regYear: 99, CenturyIndex: 19, regDOW: 6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := newAt(tt.at)
			set(d, regB, tt.regB)
			for reg, want := range tt.want {
				if got := get(d, reg); got != want {
					t.Errorf("reg %#x = %#02x, want %#02x", reg, got, want)
				}
			}
		})
	}
}

func TestStatusRegisters(t *testing.T) {
	d, c := newAt(time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC))
	if got := get(d, regD); got != dVRT {
		t.Errorf("register D %#x, want %#x", got, dVRT)
	}
	if got := get(d, regA); got != aDefault {
		t.Errorf("register A %#x, want %#x", got, aDefault)
	}
	if got := get(d, regB); got != bDefault {
		t.Errorf("register B %#x, want %#x", got, bDefault)
	}
	tests := []struct {
		nsec int
		uip  bool
	}{{0, false}, {500e6, false}, {999_755_000, false}, {999_756_000, true}, {999_999_999, true}}
	for _, tt := range tests {
		c.t = time.Date(2024, 5, 6, 7, 8, 9, tt.nsec, time.UTC)
		if got := get(d, regA)&aUIP != 0; got != tt.uip {
			t.Errorf("at .%09d UIP %v, want %v", tt.nsec, got, tt.uip)
		}
	}
	set(d, regB, bDefault|bSet)
	if get(d, regA)&aUIP != 0 {
		t.Error("UIP set while SET is held")
	}
	set(d, regB, bDefault|bUIE)
	get(d, regC)
	if v := get(d, regC); v != 0 {
		t.Errorf("register C %#x within the same second", v)
	}
	c.t = c.t.Add(time.Second)
	if v := get(d, regC); v != cUF|cIRQF {
		t.Errorf("register C %#x after a second, want UF|IRQF", v)
	}
	if v := get(d, regC); v != 0 {
		t.Errorf("register C %#x: not cleared by reading", v)
	}
	set(d, regD, 0)
	set(d, regC, 0xFF)
	if get(d, regD) != dVRT || get(d, regC) != 0 {
		t.Error("C and D must be read-only")
	}
}

// linuxRead follows mc146818_get_time/mc146818_avoid_UIP in Linux 6.1: read
// seconds, retry while UIP, read the rest, check UIP and seconds again.
// Each CMOS access advances the fake clock by step. It returns the time
// and how many attempts it took.
func linuxRead(t *testing.T, d *Device, c *clock, step time.Duration) (time.Time, int) {
	rd := func(i byte) byte {
		c.t = c.t.Add(step)
		return get(d, i)
	}
	bcd := func(v byte) int { return int(v>>4)*10 + int(v&0x0F) }
	for try := 1; try <= 100; try++ {
		sec := rd(regSec)
		if rd(regA)&aUIP != 0 {
			c.t = c.t.Add(100 * time.Microsecond)
			continue
		}
		if sec != rd(regSec) {
			continue
		}
		mi, h, day, mon, yr, cent := rd(regMin), rd(regHour), rd(regDay), rd(regMonth), rd(regYear), rd(CenturyIndex)
		if rd(regA)&aUIP != 0 {
			c.t = c.t.Add(100 * time.Microsecond)
			continue
		}
		if sec != rd(regSec) {
			continue
		}
		return time.Date(bcd(cent)*100+bcd(yr), time.Month(bcd(mon)), bcd(day), bcd(h), bcd(mi), bcd(sec), 0, time.UTC), try
	}
	t.Fatal("Linux's RTC read loop did not terminate")
	return time.Time{}, 0
}

func TestLinuxBootRead(t *testing.T) {
	for _, start := range []int{0, 500e6, 999_000_000, 999_800_000, 999_999_000} {
		for _, step := range []time.Duration{time.Microsecond, 50 * time.Microsecond} {
			host := time.Date(2025, 12, 31, 23, 59, 59, start, time.UTC)
			d, c := newAt(host)
			got, tries := linuxRead(t, d, c, step)
			if tries > 5 {
				t.Errorf("start .%09d step %v: %d attempts", start, step, tries)
			}
			// The guest clock must be within a second of the host's at
			// the moment the read finished.
			if diff := c.t.Sub(got); diff < 0 || diff >= time.Second {
				t.Errorf("start .%09d step %v: read %v at host %v", start, step, got, c.t)
			}
		}
	}
}

func TestSetTime(t *testing.T) {
	tests := []struct {
		name string
		regB byte
		vals map[byte]byte // written while SET is held
		want time.Time
	}{
		{"BCD 24h", b24h, map[byte]byte{regSec: 0x58, regMin: 0x59, regHour: 0x23, regDay: 0x31, regMonth: 0x12, regYear: 0x31, CenturyIndex: 0x20},
			time.Date(2031, 12, 31, 23, 59, 58, 0, time.UTC)},
		{"binary 12h PM", bBinary, map[byte]byte{regSec: 1, regMin: 2, regHour: pm | 3, regDay: 4, regMonth: 5, regYear: 6, CenturyIndex: 20},
			time.Date(2006, 5, 4, 15, 2, 1, 0, time.UTC)},
		{"BCD 12h 12 AM", 0, map[byte]byte{regHour: 0x12, regMin: 0, regSec: 0, regDay: 0x01, regMonth: 0x01, regYear: 0x00, CenturyIndex: 0x20},
			time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := time.Date(2024, 6, 1, 10, 0, 0, 300e6, time.UTC)
			d, c := newAt(host)
			set(d, regB, tt.regB|bSet)
			for _, reg := range []byte{regSec, regMin, regHour, regDay, regMonth, regYear, CenturyIndex} {
				if v, ok := tt.vals[reg]; ok {
					set(d, reg, v)
				}
			}
			c.t = c.t.Add(3 * time.Second) // frozen while SET is held
			set(d, regB, tt.regB)
			d2 := New(Options{Now: func() time.Time { return tt.want }})
			set(d2, regB, tt.regB)
			check := func(when string) {
				t.Helper()
				for _, reg := range []byte{regSec, regMin, regHour, regDOW, regDay, regMonth, regYear, CenturyIndex} {
					if got, want := get(d, reg), get(d2, reg); got != want {
						t.Errorf("%s: reg %#x = %#02x, want %#02x", when, reg, got, want)
					}
				}
			}
			check("after SET released")
			// The clock runs on from the written time.
			c.t = c.t.Add(90*time.Minute + 999*time.Millisecond)
			tt.want = tt.want.Add(90 * time.Minute)
			check("90 minutes later")
			c.t = c.t.Add(time.Millisecond)
			tt.want = tt.want.Add(time.Second)
			check("first update after the next second")
		})
	}
}

func TestWriteWithoutSet(t *testing.T) {
	d, c := newAt(time.Date(2024, 6, 1, 10, 20, 30, 999_000_000, time.UTC))
	set(d, regMin, 0x45)
	if got := get(d, regMin); got != 0x45 {
		t.Fatalf("minutes %#x, want 0x45", got)
	}
	c.t = c.t.Add(time.Millisecond) // the sub-second phase is kept
	if got := get(d, regSec); got != 0x31 {
		t.Fatalf("seconds %#x, want 0x31", got)
	}
	if got := get(d, regHour); got != 0x10 {
		t.Fatalf("hours %#x, want 0x10", got)
	}
	set(d, regDOW, 0x07) // ignored: derived from the date (a Saturday)
	if got := get(d, regDOW); got != 0x07 {
		t.Fatalf("day of week %#x, want 0x07", got)
	}
	set(d, regDay, 0x02)
	if got := get(d, regDOW); got != 0x01 {
		t.Fatalf("day of week after date change %#x, want 0x01 (Sunday)", got)
	}
}

func TestRAM(t *testing.T) {
	d, _ := newAt(time.Unix(0, 0))
	set(d, 0x40, 0xA5)
	set(d, 0x7F, 0x5A)
	set(d, regA, 0xFF) // UIP is read-only
	if got := get(d, 0x40); got != 0xA5 {
		t.Errorf("RAM 0x40 = %#x", got)
	}
	if got := get(d, 0xFF); got != 0x5A { // bit 7 is the NMI mask, not index
		t.Errorf("RAM 0x7F via NMI-masked index = %#x", got)
	}
	if got := get(d, regA); got != 0x7F {
		t.Errorf("register A %#x, want 0x7F", got)
	}
	set(d, regA, aDefault)
	var b [4]byte
	d.Read(0, b[:])
	if b[0] != 0xFF || b[2] != 0xFF || b[3] != 0xFF {
		t.Errorf("index port and beyond read %#x", b)
	}
	d.Read(^uint64(0), b[:])
	d.Write(1<<62, b[:])
}
