package machine

import (
	"encoding/binary"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/memory"
)

// XCR0 probe: a one-vCPU real-mode guest enables OSXSAVE, sets XCR0 to
// x87|SSE with XSETBV, leaves to userspace once (port probeExitPort), then
// reads XCR0 back with XGETBV and reports it (port probeXCR0Port). If KVM
// saw the XSETBV, it reloads 3 on re-entry; if the CPU under KVM did not
// exit on XSETBV (QEMU TCG's nested SVM before QEMU 8.2), KVM still
// believes XCR0 is its reset value 1 and loads that instead. Any exception
// lands in a handler that reports on probeFaultPort.
const (
	probeCode      = 0x1000
	probeHandler   = 0x1100
	probeRAM       = 64 << 10
	probeExitPort  = 0x10
	probeXCR0Port  = 0x11
	probeFaultPort = 0x12
	probeTimeout   = 5 * time.Second
)

var probeProgram = []byte{
	0x0f, 0x20, 0xe0, // mov eax, cr4
	0x66, 0x0d, 0x00, 0x00, 0x04, 0x00, // or eax, 1<<18 (CR4.OSXSAVE)
	0x0f, 0x22, 0xe0, // mov cr4, eax
	0x66, 0x31, 0xc9, // xor ecx, ecx (XCR0)
	0x66, 0x31, 0xd2, // xor edx, edx
	0x66, 0xb8, 0x03, 0x00, 0x00, 0x00, // mov eax, 3 (x87|SSE)
	0x0f, 0x01, 0xd1, // xsetbv
	0xe6, probeExitPort, // out probeExitPort, al
	0x0f, 0x01, 0xd0, // xgetbv
	0xe7, probeXCR0Port, // out probeXCR0Port, ax
	0xf4, // hlt
}

var probeFault = []byte{
	0xe6, probeFaultPort, // out probeFaultPort, al
	0xf4, // hlt
}

// xcr0Followed reports whether KVM keeps the XCR0 a guest sets with
// XSETBV, running the probe with the CPUID entries ids (which must
// advertise XSAVE with x87|SSE in leaf 0xD). An inconclusive probe (the
// guest faulted or did not finish) counts as true: the guest then meets
// the host's XSAVE as it is, and Linux's own consistency check still
// falls back to FXSAVE if the sizes disagree.
func xcr0Followed(sys *kvm.System, ids []kvm.CPUIDEntry) (bool, error) {
	xcr0, ok, err := probeXCR0(sys, ids)
	if err != nil || !ok {
		return true, err
	}
	return xcr0&3 == 3, nil
}

// probeXCR0 runs the probe and returns the XCR0 the guest read back after
// its exit to userspace; ok is false if the guest did not get that far.
func probeXCR0(sys *kvm.System, ids []kvm.CPUIDEntry) (xcr0 uint16, ok bool, err error) {
	vm, err := sys.CreateVM()
	if err != nil {
		return 0, false, err
	}
	defer vm.Close()
	if err := vm.SetTSSAddr(tssAddr); err != nil {
		return 0, false, err
	}
	if err := vm.SetIdentityMapAddr(identityAddr); err != nil {
		return 0, false, err
	}
	mem, err := memory.New(probeRAM, memory.Options{})
	if err != nil {
		return 0, false, err
	}
	defer mem.Close()
	if _, err := mem.Register(vm, 0); err != nil {
		return 0, false, err
	}
	// Real-mode interrupt vector table: every exception to the handler.
	ivt := make([]byte, 4*32)
	for i := 0; i < len(ivt); i += 4 {
		binary.LittleEndian.PutUint16(ivt[i:], probeHandler)
	}
	for _, w := range []struct {
		b   []byte
		gpa uint64
	}{{ivt, 0}, {probeProgram, probeCode}, {probeFault, probeHandler}} {
		if err := mem.WriteAt(w.b, w.gpa); err != nil {
			return 0, false, err
		}
	}
	v, err := vm.CreateVCPU(0)
	if err != nil {
		return 0, false, err
	}
	defer v.Close()
	if err := v.SetCPUID2(ids); err != nil {
		return 0, false, err
	}
	s, err := v.Sregs()
	if err != nil {
		return 0, false, err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		return 0, false, err
	}
	if err := v.SetRegs(kvm.Regs{RIP: probeCode, RFLAGS: 2, RSP: probeCode}); err != nil {
		return 0, false, err
	}
	return runProbe(v)
}

// runProbe runs the probe guest on this thread until it reports, with a
// watchdog that kicks it out of KVM_RUN if it never does.
func runProbe(v *kvm.VCPU) (xcr0 uint16, ok bool, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	var mu sync.Mutex
	done, timedOut := false, false
	watchdog := time.AfterFunc(probeTimeout, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		timedOut = true
		v.SetImmediateExit(true)
		unix.Tgkill(os.Getpid(), tid, kickSignal)
	})
	defer func() {
		watchdog.Stop()
		mu.Lock()
		done = true // the vCPU is closed after this; the watchdog must not touch it
		mu.Unlock()
	}()
	for range 100 {
		exit, err := v.Run()
		if err != nil {
			return 0, false, err
		}
		switch exit {
		case kvm.ExitIntr:
			mu.Lock()
			to := timedOut
			mu.Unlock()
			if to {
				return 0, false, nil
			}
			continue
		case kvm.ExitIO:
			io, ok := v.IO()
			if !ok || !io.Out {
				return 0, false, nil
			}
			switch io.Port {
			case probeExitPort:
				continue
			case probeXCR0Port:
				if len(io.Data) < 2 {
					return 0, false, nil
				}
				return binary.LittleEndian.Uint16(io.Data), true, nil
			}
		}
		return 0, false, nil // fault handler, HLT too early, or anything else
	}
	return 0, false, nil
}
