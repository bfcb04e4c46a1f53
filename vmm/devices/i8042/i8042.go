// Package i8042 emulates as much of the PC's PS/2 keyboard controller as
// Linux's i8042 driver needs to probe it cleanly, and the controller's CPU
// reset line, which is how guests without ACPI reset reboot.
//
// Placement: the VMM inserts one Device over [layout.I8042Port,
// layout.I8042Port+Size), i.e. ports 0x60-0x64: offset 0 is the data port,
// offset 4 the command/status port, offsets 1-3 are not decoded (reads
// 0xFF, writes ignored). Port 0x61 (system control port B) is claimed by
// KVM's in-kernel PIT before the VMM's bus sees it.
//
// No keyboard or mouse is attached. Bytes sent to either device are
// answered the way a controller answers a missing device: 0xFE with the
// status TIMEOUT bit, which makes Linux's atkbd and psmouse give up at once
// instead of waiting for their command timeouts.
//
// Interrupts: with Options.KbdIRQ/AuxIRQ (ISA IRQ 1 and 12) connected, a
// line is high while the output buffer holds a byte from that port and the
// command byte enables that port's interrupt. When the guest reads a byte
// and another is queued behind it, the line drops and rises again so an
// edge-triggered IOAPIC pin sees each byte, as with the real one-byte
// output buffer. Linux's probe needs IRQ 12 to accept the AUX port (it
// loops a byte through command 0xD3 and waits 250 ms for the interrupt);
// without it the AUX port is simply not registered.
//
// Locking rule: one mutex guards the state; interrupt lines are driven and
// Options.Reset is called after it is released, so both may call back into
// the Device.
package i8042

import (
	"sync"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/pin"
	"github.com/hyperroot/hyperroot/vmm/irq"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Size is the span of ports the Device decodes: data at offset 0, command
// and status at offset Size-1.
const Size = layout.I8042CmdPort - layout.I8042Port + 1

const (
	offData = 0
	offCmd  = layout.I8042CmdPort - layout.I8042Port
)

// Status register bits.
const (
	stOBF     = 0x01 // output buffer full
	stSys     = 0x04 // system flag (POST passed), mirrors the command byte
	stCmd     = 0x08 // last write was to the command port
	stUnlock  = 0x10 // keyboard not inhibited (Linux warns "Keylock active" otherwise)
	stAuxData = 0x20 // the byte in the output buffer is from the AUX port
	stTimeout = 0x40 // the device did not answer
)

// Command byte ("CTR") bits.
const (
	ctrKbdInt = 0x01
	ctrAuxInt = 0x02
	ctrSys    = 0x04
	ctrKbdDis = 0x10
	ctrAuxDis = 0x20
	ctrXlate  = 0x40

	// ctrDefault is what a PC BIOS leaves: translation on, system flag,
	// both ports enabled with interrupts.
	ctrDefault = ctrXlate | ctrSys | ctrAuxInt | ctrKbdInt
)

// Controller commands written to the command port.
const (
	cmdReadRAM    = 0x20 // 0x20-0x3F: read internal RAM; byte 0 is the CTR
	cmdWriteRAM   = 0x60 // 0x60-0x7F: write internal RAM
	cmdAuxDisable = 0xA7
	cmdAuxEnable  = 0xA8
	cmdAuxTest    = 0xA9
	cmdSelfTest   = 0xAA
	cmdKbdTest    = 0xAB
	cmdKbdDisable = 0xAD
	cmdKbdEnable  = 0xAE
	cmdReadInput  = 0xC0
	cmdReadOut    = 0xD0
	cmdWriteOut   = 0xD1
	cmdWriteKbdOB = 0xD2 // next data byte appears as keyboard input
	cmdWriteAuxOB = 0xD3 // next data byte appears as AUX input (loopback)
	cmdWriteAux   = 0xD4 // next data byte goes to the AUX device
	cmdA20Off     = 0xDD
	cmdA20On      = 0xDF
	cmdPulse      = 0xF0 // 0xF0-0xFF: pulse output port lines whose bit is 0; bit 0 is CPU reset
)

const (
	outReset = 0x01 // output port bit 0: CPU reset line, active low
	outA20   = 0x02

	selfTestOK  = 0x55
	noDeviceErr = 0xFE // what the controller reports for a missing device
	queueSize   = 16
)

// Options configures a Device. The zero value has no interrupts and
// ignores reset requests.
type Options struct {
	// Reset is called when the guest pulses the CPU reset line (command
	// 0xFE, or an output port write with bit 0 clear). It runs on the
	// vCPU's goroutine without the Device's lock and may be called again
	// if the guest repeats the request.
	Reset func()
	// KbdIRQ and AuxIRQ are ISA IRQ 1 and 12 (layout.I8042KbdIRQ and
	// layout.I8042AuxIRQ); nil leaves them unconnected.
	KbdIRQ irq.Line
	AuxIRQ irq.Line
}

type outByte struct {
	b            byte
	aux, timeout bool
}

// Device is the PS/2 controller. It is safe for concurrent use.
type Device struct {
	reset func()
	kbd   *pin.Pin
	aux   *pin.Pin

	mu      sync.Mutex
	ram     [32]byte // controller RAM; ram[0] is the command byte
	outPort byte
	pending byte // command waiting for its data byte, 0 if none
	lastCmd bool // status bit 3
	q       [queueSize]outByte
	qHead   int
	qLen    int
	last    byte // what the data port reads when the buffer is empty
}

// New returns a controller in its post-BIOS state.
func New(o Options) *Device {
	d := &Device{reset: o.Reset, kbd: pin.New(o.KbdIRQ), aux: pin.New(o.AuxIRQ)}
	d.ram[0] = ctrDefault
	d.outPort = outReset | outA20
	return d
}

// Read handles a guest read; each byte of a wide access reads the port at
// its own offset.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	pulse := false
	for i := range data {
		data[i] = 0xFF
		if offset >= Size || uint64(i) >= Size-offset {
			continue
		}
		switch offset + uint64(i) {
		case offData:
			data[i] = d.popLocked()
			pulse = true
		case offCmd:
			data[i] = d.statusLocked()
		}
	}
	d.updateLocked(pulse)
	d.mu.Unlock()
	d.flush()
}

// Write handles a guest write; see Read.
func (d *Device) Write(offset uint64, data []byte) {
	d.mu.Lock()
	reset := false
	for i, v := range data {
		if offset >= Size || uint64(i) >= Size-offset {
			break
		}
		switch offset + uint64(i) {
		case offData:
			reset = d.dataLocked(v) || reset
		case offCmd:
			reset = d.commandLocked(v) || reset
		}
	}
	d.updateLocked(false)
	d.mu.Unlock()
	d.flush()
	if reset && d.reset != nil {
		d.reset()
	}
}

func (d *Device) statusLocked() byte {
	s := byte(stUnlock)
	if d.ram[0]&ctrSys != 0 {
		s |= stSys
	}
	if d.lastCmd {
		s |= stCmd
	}
	if d.qLen > 0 {
		h := d.q[d.qHead]
		s |= stOBF
		if h.aux {
			s |= stAuxData
		}
		if h.timeout {
			s |= stTimeout
		}
	}
	return s
}

// commandLocked runs a controller command and reports whether it pulses
// the reset line.
func (d *Device) commandLocked(c byte) (reset bool) {
	d.lastCmd = true
	d.pending = 0
	switch {
	case c >= cmdReadRAM && c < cmdReadRAM+32:
		d.pushLocked(d.ram[c-cmdReadRAM], false, false)
	case c >= cmdWriteRAM && c < cmdWriteRAM+32:
		d.pending = c
	case c == cmdAuxDisable:
		d.ram[0] |= ctrAuxDis
	case c == cmdAuxEnable:
		d.ram[0] &^= ctrAuxDis
	case c == cmdAuxTest, c == cmdKbdTest:
		d.pushLocked(0x00, false, false) // interface OK
	case c == cmdSelfTest:
		d.pushLocked(selfTestOK, false, false)
	case c == cmdKbdDisable:
		d.ram[0] |= ctrKbdDis
	case c == cmdKbdEnable:
		d.ram[0] &^= ctrKbdDis
	case c == cmdReadInput:
		d.pushLocked(0x80, false, false) // keyboard not inhibited
	case c == cmdReadOut:
		d.pushLocked(d.outPort, false, false)
	case c == cmdWriteOut, c == cmdWriteKbdOB, c == cmdWriteAuxOB, c == cmdWriteAux:
		d.pending = c
	case c == cmdA20Off:
		d.outPort &^= outA20
	case c == cmdA20On:
		d.outPort |= outA20
	case c >= cmdPulse:
		return c&outReset == 0
	}
	return false
}

// dataLocked takes a byte written to the data port: a pending command's
// argument, or else a byte for the (absent) keyboard.
func (d *Device) dataLocked(v byte) (reset bool) {
	d.lastCmd = false
	c := d.pending
	d.pending = 0
	switch {
	case c >= cmdWriteRAM && c < cmdWriteRAM+32:
		d.ram[c-cmdWriteRAM] = v
	case c == cmdWriteOut:
		d.outPort = v
		return v&outReset == 0
	case c == cmdWriteKbdOB:
		d.pushLocked(v, false, false)
	case c == cmdWriteAuxOB:
		d.pushLocked(v, true, false)
	case c == cmdWriteAux:
		d.pushLocked(noDeviceErr, true, true)
	default:
		d.pushLocked(noDeviceErr, false, true)
	}
	return false
}

// pushLocked queues a byte for the data port; when the queue is full the
// byte is lost, as a real controller loses bytes the host does not read.
func (d *Device) pushLocked(b byte, aux, timeout bool) {
	if d.qLen == queueSize {
		return
	}
	d.q[(d.qHead+d.qLen)%queueSize] = outByte{b: b, aux: aux, timeout: timeout}
	d.qLen++
}

func (d *Device) popLocked() byte {
	if d.qLen == 0 {
		return d.last
	}
	d.last = d.q[d.qHead].b
	d.qHead = (d.qHead + 1) % queueSize
	d.qLen--
	return d.last
}

// updateLocked records both interrupt levels; pulse asks for a new edge
// because a byte was consumed and the next one (if any) is a new event.
func (d *Device) updateLocked(pulse bool) {
	var kbd, aux bool
	if d.qLen > 0 {
		if d.q[d.qHead].aux {
			aux = d.ram[0]&ctrAuxInt != 0
		} else {
			kbd = d.ram[0]&ctrKbdInt != 0
		}
	}
	if pulse {
		d.kbd.Pulse(kbd)
		d.aux.Pulse(aux)
		return
	}
	d.kbd.Want(kbd)
	d.aux.Want(aux)
}

func (d *Device) flush() {
	d.kbd.Flush()
	d.aux.Flush()
}
