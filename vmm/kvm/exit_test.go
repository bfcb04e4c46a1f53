package kvm

import (
	"encoding/binary"
	"fmt"
	"testing"
	"unsafe"

	"github.com/hyperroot/hyperroot/vmm/bus"
)

// fakeVCPU backs a VCPU with an ordinary buffer laid out like the kernel's
// kvm_run mapping (three pages, PIO data in the second), so exit decoding
// can be tested without /dev/kvm.
func fakeVCPU(size int) *VCPU {
	buf := make([]uint64, size/8) // 8-byte aligned like the real page
	m := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), size)
	return &VCPU{fd: -1, mapping: m, run: (*run)(unsafe.Pointer(&m[0]))}
}

func (v *VCPU) fakeIO(out bool, size uint8, port uint16, count uint32, off uint64) {
	v.run.exitReason = uint32(ExitIO)
	x := (*ioExit)(unsafe.Pointer(&v.run.exit[0]))
	*x = ioExit{size: size, port: port, count: count, dataOffset: off}
	if out {
		x.direction = ioDirectionOut
	}
}

func (v *VCPU) fakeMMIO(write bool, addr uint64, n uint32, data uint64) {
	v.run.exitReason = uint32(ExitMMIO)
	x := (*mmioExit)(unsafe.Pointer(&v.run.exit[0]))
	*x = mmioExit{physAddr: addr, len: n}
	binary.LittleEndian.PutUint64(x.data[:], data)
	if write {
		x.isWrite = 1
	}
}

type logDev struct{ log []string }

func (d *logDev) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
	d.log = append(d.log, fmt.Sprintf("R%d@%#x", len(data), off))
}

func (d *logDev) Write(off uint64, data []byte) {
	d.log = append(d.log, fmt.Sprintf("W@%#x:% x", off, data))
}

func TestIODecode(t *testing.T) {
	const size = 3 * 4096
	for _, tc := range []struct {
		name  string
		out   bool
		width uint8
		count uint32
		off   uint64
		ok    bool
	}{
		{"out byte", true, 1, 1, 4096, true},
		{"in dword", false, 4, 1, 4096, true},
		{"rep outsw", true, 2, 100, 4096, true},
		{"data ends at mapping end", true, 4, 1, size - 4, true},
		{"data past mapping end", true, 4, 1, size - 2, false},
		{"count past mapping end", true, 4, 1 << 20, 4096, false},
		{"offset far beyond", true, 1, 1, 1 << 62, false},
		{"offset near 2^64", true, 4, 2, ^uint64(0) - 3, false},
		{"width 3", true, 3, 1, 4096, false},
		{"width 8", true, 8, 1, 4096, false},
		{"count 0", true, 1, 0, 4096, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := fakeVCPU(size)
			v.fakeIO(tc.out, tc.width, 0x3f8, tc.count, tc.off)
			io, ok := v.IO()
			if ok != tc.ok {
				t.Fatalf("IO() ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if io.Out != tc.out || io.Size != int(tc.width) || io.Port != 0x3f8 || io.Count != int(tc.count) ||
				len(io.Data) != int(tc.width)*int(tc.count) || &io.Data[0] != &v.mapping[tc.off] {
				t.Fatalf("IO() = %+v", io)
			}
		})
	}
	v := fakeVCPU(size)
	v.fakeMMIO(true, 0, 4, 0)
	if _, ok := v.IO(); ok {
		t.Fatal("IO() decoded an MMIO exit")
	}
}

func TestMMIODecode(t *testing.T) {
	v := fakeVCPU(4096)
	for _, n := range []uint32{0, 9, 1 << 31} {
		v.fakeMMIO(true, 0x1000, n, 0)
		if _, ok := v.MMIO(); ok {
			t.Errorf("MMIO() accepted length %d", n)
		}
	}
	v.fakeMMIO(true, 0xfee00300, 4, 0x11223344)
	m, ok := v.MMIO()
	if !ok || !m.Write || m.Addr != 0xfee00300 || string(m.Data) != "\x44\x33\x22\x11" || cap(m.Data) != 4 {
		t.Fatalf("MMIO() = %+v, %v", m, ok)
	}
	v.fakeIO(true, 1, 0, 1, 4096)
	if _, ok := v.MMIO(); ok {
		t.Fatal("MMIO() decoded an IO exit")
	}
}

func TestOtherExits(t *testing.T) {
	v := fakeVCPU(4096)
	v.run.exitReason = uint32(ExitSystemEvent)
	x := (*systemEventExit)(unsafe.Pointer(&v.run.exit[0]))
	x.typ, x.ndata, x.data[0] = uint32(SystemEventReset), 1, 7
	if typ, data, ok := v.SystemEvent(); !ok || typ != SystemEventReset || data != 7 {
		t.Errorf("SystemEvent() = %v %v %v", typ, data, ok)
	}
	if _, _, ok := v.FailEntry(); ok {
		t.Error("FailEntry() decoded a SYSTEM_EVENT exit")
	}

	v.run.exitReason = uint32(ExitFailEntry)
	f := (*failEntryExit)(unsafe.Pointer(&v.run.exit[0]))
	f.reason, f.cpu = 0x80000021, 3
	if r, cpu, ok := v.FailEntry(); !ok || r != 0x80000021 || cpu != 3 {
		t.Errorf("FailEntry() = %#x %d %v", r, cpu, ok)
	}

	v.run.exitReason = uint32(ExitInternalError)
	ie := (*internalExit)(unsafe.Pointer(&v.run.exit[0]))
	ie.suberror, ie.ndata, ie.data[1] = 1, 1000, 9
	if e, ok := v.InternalError(); !ok || e.Suberror != 1 || e.N != 16 || e.Data[1] != 9 {
		t.Errorf("InternalError() = %+v %v (ndata must be clamped to 16)", e, ok)
	}

	v.run.exitReason = uint32(ExitDebug)
	d := (*debugExit)(unsafe.Pointer(&v.run.exit[0]))
	d.exception, d.pc, d.dr6 = 1, 0x1000, 0x4000
	if e, ok := v.Debug(); !ok || e.Exception != 1 || e.PC != 0x1000 || e.DR6 != 0x4000 {
		t.Errorf("Debug() = %+v %v", e, ok)
	}

	v.run.exitReason = uint32(ExitUnknown)
	*(*uint64)(unsafe.Pointer(&v.run.exit[0])) = 0x7b
	if r, ok := v.HardwareExitReason(); !ok || r != 0x7b {
		t.Errorf("HardwareExitReason() = %#x %v", r, ok)
	}

	for e, want := range map[Exit]string{ExitIO: "IO", ExitHLT: "HLT", ExitShutdown: "SHUTDOWN",
		ExitIntr: "INTR", ExitSystemEvent: "SYSTEM_EVENT", 200: "EXIT_200"} {
		if e.String() != want {
			t.Errorf("Exit(%d).String() = %q, want %q", uint32(e), e.String(), want)
		}
	}
}

func TestDispatch(t *testing.T) {
	var pio, mmio bus.Bus
	var pdev, mdev logDev
	if err := pio.Insert(&pdev, 0x3f8, 8); err != nil {
		t.Fatal(err)
	}
	if err := mmio.Insert(&mdev, 0xd0000000, 0x1000); err != nil {
		t.Fatal(err)
	}
	v := fakeVCPU(3 * 4096)
	data := v.mapping[4096:]

	// OUTSB of three bytes: three writes in order.
	copy(data, "abc")
	v.fakeIO(true, 1, 0x3f8, 3, 4096)
	if !v.Dispatch(ExitIO, &pio, &mmio) {
		t.Fatal("Dispatch did not take an IO exit")
	}
	// IN word at offset 2: the device fills kvm_run's data.
	v.fakeIO(false, 2, 0x3fa, 1, 4096)
	v.Dispatch(ExitIO, &pio, &mmio)
	if data[0] != 2 || data[1] != 3 {
		t.Errorf("IN data = % x", data[:2])
	}
	// IN from nowhere, and straddling the device's end: all ones.
	for _, port := range []uint16{0x60, 0x3fe} {
		data[0], data[1], data[2], data[3] = 0, 0, 0, 0
		v.fakeIO(false, 4, port, 1, 4096)
		v.Dispatch(ExitIO, &pio, &mmio)
		if string(data[:4]) != "\xff\xff\xff\xff" {
			t.Errorf("unclaimed IN at %#x = % x", port, data[:4])
		}
	}
	// MMIO write and read.
	v.fakeMMIO(true, 0xd0000010, 2, 0xbeef)
	if !v.Dispatch(ExitMMIO, &pio, &mmio) {
		t.Fatal("Dispatch did not take an MMIO exit")
	}
	v.fakeMMIO(false, 0xd0000020, 8, 0)
	v.Dispatch(ExitMMIO, &pio, &mmio)
	if m, _ := v.MMIO(); string(m.Data) != "\x20\x21\x22\x23\x24\x25\x26\x27" {
		t.Errorf("MMIO read data = % x", m.Data)
	}
	v.fakeMMIO(false, 0xe0000000, 4, 0)
	v.Dispatch(ExitMMIO, nil, nil)
	if m, _ := v.MMIO(); string(m.Data) != "\xff\xff\xff\xff" {
		t.Errorf("unclaimed MMIO read = % x", m.Data)
	}
	// Not an IO/MMIO exit, or a malformed one: not handled.
	if v.Dispatch(ExitHLT, &pio, &mmio) {
		t.Error("Dispatch took a HLT exit")
	}
	v.fakeIO(true, 4, 0x3f8, 1, 3*4096)
	if v.Dispatch(ExitIO, &pio, &mmio) {
		t.Error("Dispatch took an IO exit with data outside kvm_run")
	}

	wantP := "[W@0x0:61 W@0x0:62 W@0x0:63 R2@0x2]"
	wantM := "[W@0x10:ef be R8@0x20]"
	if got := fmt.Sprint(pdev.log); got != wantP {
		t.Errorf("port device saw %s, want %s", got, wantP)
	}
	if got := fmt.Sprint(mdev.log); got != wantM {
		t.Errorf("MMIO device saw %s, want %s", got, wantM)
	}
}

// FuzzDispatch feeds arbitrary exit payloads (as a hostile or buggy kernel
// might, and as the guest partly controls) to the decoders and Dispatch:
// nothing may panic or touch bytes outside the mapping.
func FuzzDispatch(f *testing.F) {
	f.Add(uint32(ExitIO), []byte{1, 1, 0xf8, 0x03, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0})
	f.Add(uint32(ExitIO), []byte{0, 4, 0x00, 0x05, 0xff, 0xff, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0})
	f.Add(uint32(ExitMMIO), []byte{0, 0, 0, 0xd0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 0, 0, 0, 1})
	f.Add(uint32(ExitInternalError), []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	var pio, mmio bus.Bus
	pio.Insert(&nopDev{}, 0, 0x10000)
	mmio.Insert(&nopDev{}, 0xd0000000, 0x1000)
	f.Fuzz(func(t *testing.T, reason uint32, payload []byte) {
		v := fakeVCPU(3 * 4096)
		v.run.exitReason = reason
		copy(v.run.exit[:], payload)
		v.Dispatch(Exit(reason), &pio, &mmio)
		lo := uintptr(unsafe.Pointer(&v.mapping[0]))
		hi := lo + uintptr(len(v.mapping))
		if io, ok := v.IO(); ok {
			p := uintptr(unsafe.Pointer(unsafe.SliceData(io.Data)))
			if p < lo || p+uintptr(cap(io.Data)) > hi || len(io.Data) != io.Size*io.Count {
				t.Fatalf("IO data outside kvm_run: %+v", io)
			}
		}
		if m, ok := v.MMIO(); ok && (len(m.Data) == 0 || len(m.Data) > 8) {
			t.Fatalf("MMIO data length %d", len(m.Data))
		}
		v.SystemEvent()
		v.InternalError()
		v.FailEntry()
		v.Debug()
		_ = Exit(reason).String()
	})
}

type nopDev struct{}

func (nopDev) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = 0x5a
	}
}
func (nopDev) Write(uint64, []byte) {}

// TestDispatchAllocs holds the userspace half of an exit (decoding the
// kvm_run page and dispatching to the bus) to no allocation, for port I/O
// and MMIO, reads and writes: every guest register access takes it.
func TestDispatchAllocs(t *testing.T) {
	var pio, mmio bus.Bus
	pio.Insert(nopDev{}, 0x3f8, 8)
	mmio.Insert(nopDev{}, 0xd0000000, 0x1000)
	for _, tc := range []struct {
		name string
		exit Exit
		set  func(v *VCPU)
	}{
		{"io out", ExitIO, func(v *VCPU) { v.fakeIO(true, 1, 0x3f8, 1, 4096) }},
		{"io in", ExitIO, func(v *VCPU) { v.fakeIO(false, 1, 0x3f8, 1, 4096) }},
		{"mmio read", ExitMMIO, func(v *VCPU) { v.fakeMMIO(false, 0xd0000040, 4, 0) }},
		{"mmio write", ExitMMIO, func(v *VCPU) { v.fakeMMIO(true, 0xd0000040, 4, 7) }},
	} {
		v := fakeVCPU(3 * 4096)
		tc.set(v)
		if n := testing.AllocsPerRun(1000, func() {
			if !v.Dispatch(tc.exit, &pio, &mmio) {
				t.Fatalf("%s: not handled", tc.name)
			}
		}); n != 0 {
			t.Errorf("%s: %v allocations per exit, want 0", tc.name, n)
		}
	}
}

// BenchmarkDispatchIO is the userspace cost of one port I/O exit (decode
// plus bus dispatch), without KVM: what BenchmarkIOExitBus adds over
// BenchmarkIOExitRaw.
func BenchmarkDispatchIO(b *testing.B) {
	var pio bus.Bus
	pio.Insert(nopDev{}, 0x3f8, 8)
	v := fakeVCPU(3 * 4096)
	v.fakeIO(true, 1, 0x3f8, 1, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if !v.Dispatch(ExitIO, &pio, nil) {
			b.Fatal("not handled")
		}
	}
}

// BenchmarkDispatchMMIO is BenchmarkDispatchIO for an MMIO read.
func BenchmarkDispatchMMIO(b *testing.B) {
	var mmio bus.Bus
	mmio.Insert(nopDev{}, 0xd0000000, 0x1000)
	v := fakeVCPU(3 * 4096)
	v.fakeMMIO(false, 0xd0000040, 4, 0)
	b.ReportAllocs()
	for b.Loop() {
		if !v.Dispatch(ExitMMIO, nil, &mmio) {
			b.Fatal("not handled")
		}
	}
}
