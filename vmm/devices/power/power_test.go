package power

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/irqtest"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

func slp(typ byte) byte { return slpEn | typ<<slpTypShift }

func TestSleep(t *testing.T) {
	tests := []struct {
		name   string
		writes [][2]byte // offset, value
		off    int
		status byte
	}{
		{"S5 powers off", [][2]byte{{0, slp(layout.PowerOffSlpTy)}}, 1, 0},
		{"S5 type without SLP_EN", [][2]byte{{0, layout.PowerOffSlpTy << slpTypShift}}, 0, 0},
		{"other state wakes at once", [][2]byte{{0, slp(3)}}, 0, wakSts},
		{"WAK_STS write-1-to-clear", [][2]byte{{0, slp(1)}, {1, wakSts}}, 0, 0},
		{"writing 0 keeps WAK_STS", [][2]byte{{0, slp(1)}, {1, 0x7F}}, 0, wakSts},
		{"status write does not power off", [][2]byte{{1, slp(layout.PowerOffSlpTy)}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			off := 0
			s := NewSleep(func() { off++ })
			for _, w := range tt.writes {
				s.Write(uint64(w[0]), w[1:])
			}
			if off != tt.off {
				t.Errorf("power off called %d times, want %d", off, tt.off)
			}
			var b [2]byte
			s.Read(0, b[:])
			if b[0] != 0 || b[1] != tt.status {
				t.Errorf("control/status read %#x, want 0/%#x", b, tt.status)
			}
		})
	}
	// A 16-bit write reaching the control register through offset 0 works,
	// one past the end is ignored, and a nil callback is fine.
	off := 0
	s := NewSleep(func() { off++ })
	s.Write(0, []byte{slp(layout.PowerOffSlpTy), 0})
	s.Write(2, []byte{slp(layout.PowerOffSlpTy)})
	s.Write(^uint64(0), []byte{1, 2, 3})
	if off != 1 {
		t.Errorf("power off called %d times, want 1", off)
	}
	NewSleep(nil).Write(0, []byte{slp(layout.PowerOffSlpTy)})
}

func TestReset(t *testing.T) {
	tests := []struct {
		name   string
		off    uint64
		writes []byte
		resets int
		read   byte
	}{
		{"Linux ACPI reboot value", 0, []byte{0x06}, 1, 0x02},
		{"any value with bit 2", 0, []byte{0x04}, 1, 0x00},
		{"pci method: 0x02 then 0x06", 0, []byte{0x02, 0x06}, 1, 0x02},
		{"0x02 alone", 0, []byte{0x02}, 0, 0x02},
		{"0x0E full reset", 0, []byte{0x0E}, 1, 0x0A},
		{"out of range", 1, []byte{0x06}, 0, 0x00},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			var r *Reset
			r = NewReset(func() {
				n++
				r.Read(0, make([]byte, 1)) // re-entry must not deadlock
			})
			for _, v := range tt.writes {
				r.Write(tt.off, []byte{v})
			}
			if n != tt.resets {
				t.Errorf("reset called %d times, want %d", n, tt.resets)
			}
			var b [1]byte
			r.Read(0, b[:])
			if b[0] != tt.read {
				t.Errorf("read %#x, want %#x", b[0], tt.read)
			}
		})
	}
	NewReset(nil).Write(0, []byte{0x06})
	NewReset(nil).Write(0, nil)
}

func TestGED(t *testing.T) {
	var line irqtest.Recorder
	g := NewGED(&line)
	read32 := func() uint32 {
		var b [4]byte
		g.Read(0, b[:])
		return binary.LittleEndian.Uint32(b[:])
	}
	if v := read32(); v != 0 || line.Level() {
		t.Fatalf("idle GED: %#x, line %v", v, line.Level())
	}
	g.PowerButton()
	if !line.Level() {
		t.Fatal("power button did not raise the GED line")
	}
	g.PowerButton() // a second press while pending: still one event, no new edge
	g.Write(0, []byte{0, 0, 0, 0})
	if !line.Level() {
		t.Fatal("a write acknowledged the event")
	}
	if v := read32(); v != GEDPowerButton {
		t.Fatalf("event register %#x, want %#x", v, GEDPowerButton)
	}
	if line.Level() {
		t.Fatal("line still high after the read")
	}
	if v := read32(); v != 0 {
		t.Fatalf("event register %#x after acknowledge", v)
	}
	if got := fmt.Sprint(line.History()); got != "[true false]" {
		t.Fatalf("line history %s", got)
	}
	// Byte reads acknowledge only the byte read; other offsets read 0.
	g.PowerButton()
	var b [8]byte
	g.Read(1, b[:1])
	if b[0] != 0 || !line.Level() {
		t.Fatalf("byte 1 read %#x, line %v", b[0], line.Level())
	}
	g.Read(4, b[:])
	if b != [8]byte{} || !line.Level() {
		t.Fatalf("offset 4 read %#x", b)
	}
	g.Read(0, b[:1])
	if b[0] != GEDPowerButton || line.Level() {
		t.Fatalf("byte 0 read %#x, line %v", b[0], line.Level())
	}
	g.Read(^uint64(0), b[:])
	NewGED(nil).PowerButton()
}

// TestGEDConcurrent presses the button from one goroutine while a vCPU
// acknowledges, and checks that no press is lost: every press is seen by
// some read, or is still pending with the line high.
func TestGEDConcurrent(t *testing.T) {
	var line irqtest.Recorder
	g := NewGED(&line)
	const presses = 2000
	done := make(chan struct{})
	seen := 0
	var wg sync.WaitGroup
	wg.Go(func() {
		for range presses {
			g.PowerButton()
		}
		close(done)
	})
	wg.Go(func() {
		var b [4]byte
		for {
			select {
			case <-done:
				return
			default:
			}
			g.Read(0, b[:])
			if b[0] != 0 {
				seen++
			}
		}
	})
	wg.Wait()
	var b [4]byte
	pendingAtEnd := line.Level()
	g.Read(0, b[:])
	if pendingAtEnd != (b[0] != 0) {
		t.Fatalf("line %v but register %#x", pendingAtEnd, b[0])
	}
	if seen == 0 && b[0] == 0 {
		t.Fatal("presses lost")
	}
	if line.Level() {
		t.Fatal("line high with nothing pending")
	}
}
