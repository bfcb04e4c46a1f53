// Package power implements the ACPI hardware-reduced power controls the
// guest uses to power off, reset, and learn of a power-button press.
//
// Three small devices, each a bus.Device the VMM inserts on its own:
//
//	Sleep  ports [layout.SleepCtlPort, +SleepSize): sleep control (offset 0)
//	       and sleep status (offset 1), the FADT's SLEEP_CONTROL_REG and
//	       SLEEP_STATUS_REG (8-bit System I/O).
//	Reset  port layout.ResetPort, 1 byte: the FADT's RESET_REG (System I/O,
//	       RESET_VALUE 0x06). Port 0xCF9 lies inside the PCI configuration
//	       address register (0xCF8-0xCFB), so the PCI host bridge, which
//	       owns that range on the bus, forwards 1-byte accesses at 0xCF9 here.
//	GED    MMIO [layout.GEDAddr, +layout.GEDSize): the Generic Event Device.
//
// Contract for the ACPI tables (vmm/acpi):
//
//   - Sleep control: a write with SLP_EN (bit 5) set and SLP_TYP (bits 2-4)
//     equal to layout.PowerOffSlpTy is S5: Options.PowerOff is called. Any
//     other SLP_TYP with SLP_EN is treated as "slept and woke at once": WAK_STS
//     (bit 7) is set in the sleep status register, so a guest that tries a
//     state the DSDT should not offer (only \_S5 is meant to be declared)
//     does not spin forever waiting for a wake. Sleep control reads 0.
//   - Sleep status reads WAK_STS; writing 1 to bit 7 clears it.
//   - Reset: a write with bit 2 set calls Options.Reset (0x06 as written by
//     Linux's ACPI reboot; 0x02 alone, the first half of Linux's "pci"
//     reboot method, does nothing). Reads return the last value written
//     without bit 2.
//   - GED: offset 0 is a 32-bit event register, bit 0 = power button
//     (GEDPowerButton). A read returns the pending bits of the bytes read
//     and clears them (read-to-acknowledge); writes are ignored; offsets
//     4..GEDSize-1 read 0. Declare it in _EVT's OperationRegion as
//     SystemMemory at layout.GEDAddr, a DWordAcc field, and read it once
//     per _EVT call, notifying \_SB.PWRB (0x80) when bit 0 is set.
//   - GED interrupt: GSI layout.GEDIRQ, level-triggered, active high
//     (Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) in the
//     GED's _CRS). The line is asserted while any bit is pending and
//     dropped by the read. Linux's evged requests it as a threaded
//     IRQF_ONESHOT interrupt, so the line stays masked while _EVT runs; the
//     read inside _EVT lowers it, and an event that arrives after that read
//     keeps it asserted, so it is delivered again when the line is
//     unmasked — no press is lost.
//
// Callbacks run on the vCPU goroutine that made the access, after the
// device's lock is released, so they may call back into the devices; they
// may be called more than once if the guest repeats the request. The GED's
// interrupt line is driven the same way (see internal/pin).
package power

import (
	"sync"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/pin"
	"github.com/hyperroot/hyperroot/vmm/irq"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// SleepSize is the span of the sleep control and status registers.
const SleepSize = layout.SleepStsPort - layout.SleepCtlPort + 1

// ResetSize is the size of the reset register.
const ResetSize = 1

// GEDPowerButton is the GED event bit for a power-button press.
const GEDPowerButton = 1 << 0

const (
	slpEn       = 1 << 5
	slpTypShift = 2
	slpTypMask  = 7
	wakSts      = 1 << 7
	resetCPU    = 1 << 2
	gedRegSize  = 4
)

// Sleep is the pair of hardware-reduced sleep registers.
type Sleep struct {
	powerOff func()

	mu     sync.Mutex
	status byte
}

// NewSleep returns the sleep registers; powerOff (may be nil) is called
// when the guest enters S5.
func NewSleep(powerOff func()) *Sleep { return &Sleep{powerOff: powerOff} }

// Read handles a guest read: control reads 0, status reads WAK_STS.
func (s *Sleep) Read(offset uint64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range data {
		data[i] = 0
		if offset < SleepSize && uint64(i) < SleepSize-offset && offset+uint64(i) == 1 {
			data[i] = s.status
		}
	}
}

// Write handles a guest write to the control or status register.
func (s *Sleep) Write(offset uint64, data []byte) {
	s.mu.Lock()
	off := false
	for i, v := range data {
		if offset >= SleepSize || uint64(i) >= SleepSize-offset {
			break
		}
		switch offset + uint64(i) {
		case 0:
			if v&slpEn == 0 {
				continue
			}
			if v>>slpTypShift&slpTypMask == layout.PowerOffSlpTy {
				off = true
			} else {
				s.status |= wakSts
			}
		case 1:
			s.status &^= v & wakSts
		}
	}
	s.mu.Unlock()
	if off && s.powerOff != nil {
		s.powerOff()
	}
}

// Reset is the ACPI reset register.
type Reset struct {
	reset func()

	mu   sync.Mutex
	last byte
}

// NewReset returns the reset register; reset (may be nil) is called when
// the guest asks for a reset.
func NewReset(reset func()) *Reset { return &Reset{reset: reset} }

// Read returns the last value written, without the reset bit.
func (r *Reset) Read(offset uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range data {
		data[i] = 0xFF
		if offset == 0 && i == 0 {
			data[i] = r.last
		}
	}
}

// Write calls the reset callback when bit 2 is written as 1.
func (r *Reset) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	v := data[0]
	r.mu.Lock()
	r.last = v &^ resetCPU
	r.mu.Unlock()
	if v&resetCPU != 0 && r.reset != nil {
		r.reset()
	}
}

// GED is the ACPI Generic Event Device's event register.
type GED struct {
	irq *pin.Pin

	mu      sync.Mutex
	pending uint32
}

// NewGED returns the GED; line (may be nil) is its interrupt, GSI
// layout.GEDIRQ.
func NewGED(line irq.Line) *GED { return &GED{irq: pin.New(line)} }

// PowerButton reports a power-button press to the guest, which answers an
// ACPI-aware shutdown. Safe to call from any goroutine.
func (g *GED) PowerButton() { g.raise(GEDPowerButton) }

func (g *GED) raise(bits uint32) {
	g.mu.Lock()
	g.pending |= bits
	g.irq.Want(g.pending != 0)
	g.mu.Unlock()
	g.irq.Flush()
}

// Read returns and clears the pending bits covered by the access.
func (g *GED) Read(offset uint64, data []byte) {
	g.mu.Lock()
	for i := range data {
		data[i] = 0
		if offset >= gedRegSize || uint64(i) >= gedRegSize-offset {
			continue
		}
		shift := 8 * (offset + uint64(i))
		data[i] = byte(g.pending >> shift)
		g.pending &^= 0xFF << shift
	}
	g.irq.Want(g.pending != 0)
	g.mu.Unlock()
	g.irq.Flush()
}

// Write is ignored: events are acknowledged by reading.
func (g *GED) Write(offset uint64, data []byte) {}
