package virtiopci

import (
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/pci"
)

// interrupt is the virtio.Interrupt the device gets at activation. It
// reads the vectors atomically and never takes the transport's mu, so a
// device may call it from any goroutine, including while a reset waits
// for that goroutine.
type interrupt struct{ t *Transport }

// Used sends a used buffer notification for queue q: its MSI-X vector
// when MSI-X is on (nothing if the driver gave it NoVector: it polls),
// else the ISR queue bit and INTx.
func (i *interrupt) Used(q int) error {
	t := i.t
	if q < 0 || q >= len(t.queueVectors) {
		return fmt.Errorf("virtio-pci: interrupt for queue %d of %d", q, len(t.queueVectors))
	}
	if t.msix.Enabled() {
		return notify(t.msix, t.queueVectors[q].Load())
	}
	return t.raiseINTx(isrQueue)
}

// ConfigChanged sends a configuration change notification and bumps
// config_generation, so a driver reading a multi-field configuration
// sees that it changed underneath.
func (i *interrupt) ConfigChanged() error {
	t := i.t
	t.generation.Add(1)
	if t.msix.Enabled() {
		return notify(t.msix, t.configVector.Load())
	}
	return t.raiseINTx(isrConfig)
}

func notify(m *pci.MSIX, v uint32) error {
	if v == NoVector {
		return nil
	}
	return m.Notify(int(v))
}

// raiseINTx sets ISR bits and asserts INTx; the driver's read of the ISR
// byte clears them and deasserts it (virtio 1.2 §4.1.4.5).
func (t *Transport) raiseINTx(bits uint8) error {
	t.intxMu.Lock()
	defer t.intxMu.Unlock()
	t.isr |= bits
	return t.setINTxLocked()
}

// readISR returns and clears the ISR status byte.
func (t *Transport) readISR() uint8 {
	t.intxMu.Lock()
	defer t.intxMu.Unlock()
	v := t.isr
	t.isr = 0
	if err := t.setINTxLocked(); err != nil {
		t.fail(fmt.Errorf("virtio-pci: INTx: %w", err))
	}
	return v
}

// peekISR is the ISR byte without the read's side effect of clearing it.
func (t *Transport) peekISR() uint8 {
	t.intxMu.Lock()
	defer t.intxMu.Unlock()
	return t.isr
}

// setINTxLocked drives the INTx line from the ISR byte, unless the driver
// disabled INTx in the command register; the status register's interrupt
// bit follows the ISR either way. The caller holds t.intxMu.
func (t *Transport) setINTxLocked() error {
	level := t.isr != 0
	t.SetInterruptStatus(level)
	if t.intx == nil {
		return nil
	}
	if level && t.Command()&pci.CommandINTxDisable != 0 {
		level = false
	}
	if level == t.intxLevel {
		return nil
	}
	t.intxLevel = level
	return t.intx.Set(level)
}
