package virtiopci

import "testing"

// BenchmarkUsedMSIX is the per-request interrupt path of a device:
// Interrupt.Used through MSI-X to the router.
func BenchmarkUsedMSIX(b *testing.B) {
	t := &testing.T{}
	dev := newFakeDevice()
	h := newHarness(t, dev)
	start(t, h, true)
	h.router.signals = make(chan int) // Signal drops: measure the transport only
	irq := dev.irqOf()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := irq.Used(0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommonRead is a driver's register read (a vCPU exit's work).
func BenchmarkCommonRead(b *testing.B) {
	h := newHarness(&testing.T{}, newFakeDevice())
	off := h.common() + regQueueSize
	var buf [2]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.tr.ReadBAR(0, off, buf[:])
	}
}
