// Package serial emulates a 16550A UART, the PC COM port that Linux's 8250
// driver uses as the guest's console.
//
// The VMM inserts a Device over Size ports (COM1: layout.COM1Port, interrupt
// layout.COM1IRQ). Transmission is instantaneous: a byte written to THR goes
// straight to Options.Out, so LSR always reports THRE and TEMT.
//
// Interrupt semantics: the line is a level. It is high exactly while IIR
// would report an interrupt (an enabled source is pending) and MCR.OUT2 is
// set and MCR.LOOP is clear — on PCs OUT2 gates the UART's interrupt onto
// the ISA bus, and loopback mode forces OUT2 inactive. Linux's 8250 driver
// sets OUT2 when it opens a port with an IRQ and services the UART until
// IIR reads "no interrupt", so the line also produces a fresh rising edge
// for every new event on an edge-triggered IOAPIC pin.
//
// The THR-empty interrupt latches when a byte has been transmitted and when
// IER.ETBEI goes from 0 to 1 (THR is always empty), and is cleared by an IIR
// read that reports it or by clearing ETBEI — the behaviour of Linux's
// THRE probe in serial8250_do_startup, which re-enables ETBEI and expects
// the interrupt to be asserted again.
//
// Receive: Input queues host bytes in a ring of Options.Backlog bytes (the
// 16-byte FIFO plus the sender's backlog). When it is full, further bytes are
// dropped, counted (Dropped) and reported to the guest as an overrun
// (LSR.OE); a vCPU or the input goroutine never blocks on it.
//
// Locking rule: one mutex guards the registers. The interrupt line is driven
// after that mutex is released (see internal/pin), so irq.Line.Set may call
// back into the Device. Options.Out is called without the register mutex,
// under a second mutex that serialises register writes, so Out may call
// Input or Read but must not call Write.
package serial

import (
	"fmt"
	"io"
	"sync"

	"github.com/hyperroot/hyperroot/vmm/devices/internal/pin"
	"github.com/hyperroot/hyperroot/vmm/irq"
)

// Size is the number of consecutive ports the UART decodes.
const Size = 8

// DefaultBacklog is the receive buffer size when Options.Backlog is 0.
const DefaultBacklog = 4096

// fifoSize is the 16550A's FIFO depth: what an FCR clear discards and what
// the receive trigger level is compared to.
const fifoSize = 16

// Register offsets.
const (
	regData = 0 // RBR (read), THR (write), DLL with DLAB
	regIER  = 1 // DLM with DLAB
	regIIR  = 2 // IIR (read), FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

// Register bits.
const (
	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // THR empty
	ierRLS  = 0x04 // receiver line status
	ierMS   = 0x08 // modem status
	ierMask = 0x0F // a 16550A has no more IER bits; Linux's autoconfig checks

	iirNone     = 0x01
	iirMS       = 0x00
	iirTHRE     = 0x02
	iirRDA      = 0x04
	iirRLS      = 0x06
	iirTimeout  = 0x0C
	iirFIFOBits = 0xC0

	fcrEnable  = 0x01
	fcrClearRX = 0x02
	fcrTrigger = 0xC0

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1F

	lsrDR     = 0x01
	lsrOE     = 0x02
	lsrErrors = 0x1E // OE, PE, FE, BI: cleared by reading LSR
	lsrTHRE   = 0x20
	lsrTEMT   = 0x40

	msrDCTS = 0x01
	msrDDSR = 0x02
	msrTERI = 0x04
	msrDDCD = 0x08
	msrCTS  = 0x10
	msrDSR  = 0x20
	msrRI   = 0x40
	msrDCD  = 0x80
)

// Options configures a Device. The zero value is a UART with no interrupt
// whose output is discarded.
type Options struct {
	// Out receives every transmitted byte, one Write per byte, on the
	// vCPU's thread. A slow Out slows the guest's writes, as a slow serial
	// line would; a Buffer in between makes that one write per line and
	// bounds the wait. Errors are ignored: the guest has no way to learn
	// of them.
	Out io.Writer
	// IRQ is the UART's interrupt line; nil leaves it unconnected.
	IRQ irq.Line
	// Backlog is the receive buffer size in bytes (0: DefaultBacklog).
	Backlog int
}

// Device is a 16550A UART. It is safe for concurrent use.
type Device struct {
	// outMu serialises register writes and guards out and txBuf, so that
	// Out sees bytes in the order the guest wrote them without holding mu.
	outMu sync.Mutex
	out   io.Writer
	txBuf [Size]byte // bytes transmitted by the current Write

	mu      sync.Mutex
	rx      []byte // ring buffer
	rxHead  int
	rxLen   int
	dropped uint64
	// received and cleared count input bytes accepted and those a FIFO
	// clear discarded before the guest read them: a dump of a guest that
	// never saw its input says whether the bytes came and were cleared
	// (a line typed before the guest's driver opened the port) or never
	// came.
	received, cleared uint64

	ier, lcr, mcr, fcr, scr, dll, dlm byte
	lsrErr                            byte // pending LSR error bits
	msrDelta                          byte // pending MSR delta bits
	msrLines                          byte // modem inputs last computed (bits 4-7)
	thrLatch                          bool // THR-empty interrupt latched
	lastRX                            byte // RBR value when the FIFO is empty

	irq *pin.Pin
}

// New returns a UART in its power-on state.
func New(o Options) *Device {
	n := o.Backlog
	if n <= 0 {
		n = DefaultBacklog
	}
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	d := &Device{out: out, rx: make([]byte, n), irq: pin.New(o.IRQ)}
	d.msrLines = d.modemLinesLocked()
	return d
}

// Read handles a guest read of len(data) bytes at offset; wider accesses
// read consecutive registers, as the ISA bus splits them. Bytes outside the
// UART read as 0xFF.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	for i := range data {
		if offset >= Size || uint64(i) >= Size-offset {
			data[i] = 0xFF
			continue
		}
		data[i] = d.readLocked(offset + uint64(i))
	}
	d.updateLocked()
	d.mu.Unlock()
	d.irq.Flush()
}

// Write handles a guest write of len(data) bytes at offset; see Read.
func (d *Device) Write(offset uint64, data []byte) {
	d.outMu.Lock()
	d.mu.Lock()
	ntx := 0
	for i, v := range data {
		if offset >= Size || uint64(i) >= Size-offset {
			break
		}
		if d.writeLocked(offset+uint64(i), v) {
			d.txBuf[ntx] = v
			ntx++
		}
	}
	d.updateLocked()
	d.mu.Unlock()
	for i := range ntx {
		_, _ = d.out.Write(d.txBuf[i : i+1 : i+1])
	}
	d.outMu.Unlock()
	d.irq.Flush()
}

// Input queues bytes received from the host side of the line and returns
// how many were accepted; the rest are dropped, counted in Dropped and
// signalled to the guest as an overrun.
func (d *Device) Input(p []byte) int {
	d.mu.Lock()
	n := d.pushLocked(p)
	d.updateLocked()
	d.mu.Unlock()
	d.irq.Flush()
	return n
}

// State describes the UART for a dump: the received bytes the guest has
// not read yet, the interrupt it signals and the enables that gate it,
// and its line's level as asked and as driven. A guest waiting for input
// the UART holds shows here why (no RX interrupt enabled, the line low).
func (d *Device) State() string {
	d.mu.Lock()
	s := fmt.Sprintf("rx-queued=%d received=%d cleared=%d dropped=%d ier=%#x iid=%#x lcr=%#x mcr=%#x fcr=%#x lsr-errors=%#x",
		d.rxLen, d.received, d.cleared, d.dropped, d.ier, d.iidLocked(), d.lcr, d.mcr, d.fcr, d.lsrErr)
	d.mu.Unlock()
	want, driven := d.irq.Levels()
	return fmt.Sprintf("%s irq want=%v driven=%v", s, want, driven)
}

// Dropped reports how many input bytes were lost because the receive
// buffer was full.
func (d *Device) Dropped() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

// pushLocked appends p to the receive ring.
func (d *Device) pushLocked(p []byte) int {
	for i, b := range p {
		if !d.pushByteLocked(b) {
			d.dropped += uint64(len(p) - i - 1)
			d.received += uint64(i)
			return i
		}
	}
	d.received += uint64(len(p))
	return len(p)
}

// pushByteLocked appends b to the receive ring, or counts it as an overrun.
func (d *Device) pushByteLocked(b byte) bool {
	if d.rxLen == len(d.rx) {
		d.dropped++
		d.lsrErr |= lsrOE
		return false
	}
	d.rx[(d.rxHead+d.rxLen)%len(d.rx)] = b
	d.rxLen++
	return true
}

// popLocked takes the oldest received byte.
func (d *Device) popLocked() byte {
	if d.rxLen == 0 {
		return d.lastRX
	}
	b := d.rx[d.rxHead]
	d.rxHead = (d.rxHead + 1) % len(d.rx)
	d.rxLen--
	d.lastRX = b
	return b
}

// clearRXLocked discards what the hardware FIFO would hold; bytes beyond it
// are still "on the wire" and arrive afterwards.
func (d *Device) clearRXLocked() {
	n := min(d.rxLen, fifoSize)
	d.rxHead = (d.rxHead + n) % len(d.rx)
	d.rxLen -= n
	d.cleared += uint64(n)
}

func (d *Device) readLocked(reg uint64) byte {
	switch reg {
	case regData:
		if d.lcr&lcrDLAB != 0 {
			return d.dll
		}
		return d.popLocked()
	case regIER:
		if d.lcr&lcrDLAB != 0 {
			return d.dlm
		}
		return d.ier
	case regIIR:
		id := d.iidLocked()
		if id == iirTHRE {
			d.thrLatch = false // reading IIR acknowledges THR empty
		}
		if d.fcr&fcrEnable != 0 {
			id |= iirFIFOBits
		}
		return id
	case regLCR:
		return d.lcr
	case regMCR:
		return d.mcr
	case regLSR:
		v := d.lsrErr | lsrTHRE | lsrTEMT
		if d.rxLen > 0 {
			v |= lsrDR
		}
		d.lsrErr = 0
		return v
	case regMSR:
		v := d.msrLines | d.msrDelta
		d.msrDelta = 0
		return v
	case regSCR:
		return d.scr
	}
	return 0xFF
}

// writeLocked stores v in reg and reports whether v is a byte to transmit.
func (d *Device) writeLocked(reg uint64, v byte) (transmit bool) {
	switch reg {
	case regData:
		if d.lcr&lcrDLAB != 0 {
			d.dll = v
			return false
		}
		// THR: writing clears THR-empty, the instant transmission sets it
		// again.
		d.thrLatch = true
		if d.mcr&mcrLoop != 0 {
			d.pushByteLocked(v)
			return false
		}
		return true
	case regIER:
		if d.lcr&lcrDLAB != 0 {
			d.dlm = v
			return false
		}
		old := d.ier
		d.ier = v & ierMask
		switch {
		case d.ier&ierTHRE == 0:
			d.thrLatch = false
		case old&ierTHRE == 0:
			d.thrLatch = true // THR is empty when ETBEI is enabled
		}
	case regIIR: // FCR
		if v&fcrEnable == 0 {
			if d.fcr&fcrEnable != 0 {
				d.clearRXLocked()
			}
			d.fcr = 0
			return false
		}
		if d.fcr&fcrEnable == 0 || v&fcrClearRX != 0 {
			d.clearRXLocked()
		}
		d.fcr = v & (fcrEnable | fcrTrigger)
	case regLCR:
		d.lcr = v
	case regMCR:
		d.mcr = v & mcrMask
		lines := d.modemLinesLocked()
		changed := lines ^ d.msrLines
		if changed&msrCTS != 0 {
			d.msrDelta |= msrDCTS
		}
		if changed&msrDSR != 0 {
			d.msrDelta |= msrDDSR
		}
		if changed&msrRI != 0 && lines&msrRI == 0 {
			d.msrDelta |= msrTERI
		}
		if changed&msrDCD != 0 {
			d.msrDelta |= msrDDCD
		}
		d.msrLines = lines
	case regSCR:
		d.scr = v
	}
	// LSR and MSR writes are factory-test features: ignored.
	return false
}

// modemLinesLocked computes the modem inputs: looped back from MCR in
// loopback mode, otherwise a permanently connected peer (CD, DSR and CTS
// asserted) so that the guest never waits on hardware flow control.
func (d *Device) modemLinesLocked() byte {
	if d.mcr&mcrLoop == 0 {
		return msrDCD | msrDSR | msrCTS
	}
	var v byte
	if d.mcr&mcrRTS != 0 {
		v |= msrCTS
	}
	if d.mcr&mcrDTR != 0 {
		v |= msrDSR
	}
	if d.mcr&mcrOUT1 != 0 {
		v |= msrRI
	}
	if d.mcr&mcrOUT2 != 0 {
		v |= msrDCD
	}
	return v
}

// triggerLevel is the receive FIFO trigger level selected by FCR[7:6].
func (d *Device) triggerLevel() int {
	return [4]int{1, 4, 8, 14}[d.fcr>>6]
}

// iidLocked is the interrupt identification in 16550 priority order: line
// status, received data (or character timeout when the FIFO holds fewer
// bytes than the trigger level — no timer is needed since the line is idle
// as soon as Input returns), THR empty, modem status.
func (d *Device) iidLocked() byte {
	switch {
	case d.ier&ierRLS != 0 && d.lsrErr != 0:
		return iirRLS
	case d.ier&ierRDA != 0 && d.rxLen > 0:
		if d.fcr&fcrEnable != 0 && min(d.rxLen, fifoSize) < d.triggerLevel() {
			return iirTimeout
		}
		return iirRDA
	case d.ier&ierTHRE != 0 && d.thrLatch:
		return iirTHRE
	case d.ier&ierMS != 0 && d.msrDelta != 0:
		return iirMS
	}
	return iirNone
}

// updateLocked records the interrupt level for the next Flush.
func (d *Device) updateLocked() {
	gate := d.mcr&(mcrOUT2|mcrLoop) == mcrOUT2
	d.irq.Want(gate && d.iidLocked() != iirNone)
}
