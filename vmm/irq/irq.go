// Package irq is how devices signal the guest without knowing whether the
// interrupt goes through KVM's in-kernel irqchip, an irqfd, or a test double.
package irq

// Line is a level-triggered interrupt input (an IOAPIC pin or a PCI INTx).
// Edge-triggered sources pulse it: Set(true) then Set(false).
type Line interface {
	Set(level bool) error
}

// Func adapts a function to Line.
type Func func(level bool) error

// Set calls f.
func (f Func) Set(level bool) error { return f(level) }
