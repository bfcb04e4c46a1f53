package kvm

import "github.com/hyperroot/hyperroot/vmm/bus"

// Dispatch completes an IO exit on pio or an MMIO exit on mmio and reports
// whether exit was one of those; the run loop handles every other exit
// itself. A read nobody claims returns all ones, as on real x86 hardware
// (an empty bus floats high); an unclaimed write is dropped. A nil bus
// claims nothing. Dispatch does not allocate.
//
// A typical vCPU loop:
//
//	for {
//		exit, err := vcpu.Run()
//		if err != nil { return err }
//		if vcpu.Dispatch(exit, pio, mmio) { continue }
//		switch exit { case kvm.ExitIntr: ...; case kvm.ExitHLT: ...; ... }
//	}
func (v *VCPU) Dispatch(exit Exit, pio, mmio *bus.Bus) bool {
	switch exit {
	case ExitIO:
		io, ok := v.IO()
		if !ok {
			return false
		}
		// String instructions repeat the access Count times on one port.
		for d := io.Data; len(d) >= io.Size; d = d[io.Size:] {
			access(pio, io.Out, uint64(io.Port), d[:io.Size])
		}
		return true
	case ExitMMIO:
		m, ok := v.MMIO()
		if !ok {
			return false
		}
		access(mmio, m.Write, m.Addr, m.Data)
		return true
	}
	return false
}

func access(b *bus.Bus, write bool, addr uint64, data []byte) {
	if write {
		if b != nil {
			b.Write(addr, data)
		}
		return
	}
	if b == nil || !b.Read(addr, data) {
		for i := range data {
			data[i] = 0xff
		}
	}
}
