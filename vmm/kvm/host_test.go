package kvm_test

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/bus"
	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/memory"
)

// These tests run tiny hand-assembled real-mode guests (a few instructions
// each, see docs/TESTING.md: the host's /dev/kvm emulates guests slowly). Code
// is loaded at codeAddr and runs with CS:IP = 0:codeAddr; the bytes are
// listed next to their assembly (GNU as, .code16).

const (
	codeAddr = 0x1000
	ramSize  = 2 << 20
	mmioBase = 0xD000_0000 // in the 32-bit hole: no RAM, so accesses exit
)

// access is one guest access seen by a recorder.
type access struct {
	write  bool
	offset uint64
	data   string // the bytes written, or the width of a read as "rN"
}

func (a access) String() string {
	if a.write {
		return fmt.Sprintf("W+%#x % x", a.offset, a.data)
	}
	return fmt.Sprintf("R+%#x %s", a.offset, a.data)
}

// recorder is a bus.Device that logs every access; reads return
// 0xA0+offset+i in byte i so the guest sees a value that depends on both.
type recorder struct {
	mu  sync.Mutex
	log []access
}

func (r *recorder) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = byte(0xA0 + offset + uint64(i))
	}
	r.mu.Lock()
	r.log = append(r.log, access{offset: offset, data: fmt.Sprintf("r%d", len(data))})
	r.mu.Unlock()
}

func (r *recorder) Write(offset uint64, data []byte) {
	r.mu.Lock()
	r.log = append(r.log, access{write: true, offset: offset, data: string(data)})
	r.mu.Unlock()
}

func (r *recorder) accesses() []access {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]access(nil), r.log...)
}

type machine struct {
	sys  *kvm.System
	vm   *kvm.VM
	mem  *memory.Guest
	pio  bus.Bus
	mmio bus.Bus
}

func newMachine(t testing.TB, irqchip bool) *machine {
	t.Helper()
	testenv.NeedKVM(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	// Where QEMU puts them: the top of the 32-bit space, below the BIOS.
	if err := vm.SetIdentityMapAddr(0xFFFB_C000); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetTSSAddr(0xFFFB_D000); err != nil {
		t.Fatal(err)
	}
	if irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
		if err := vm.CreatePIT2(); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := memory.New(ramSize, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if _, err := mem.Register(vm, 0); err != nil {
		t.Fatal(err)
	}
	return &machine{sys: sys, vm: vm, mem: mem}
}

// load copies code to codeAddr.
func (m *machine) load(t testing.TB, code []byte) {
	t.Helper()
	if err := m.mem.WriteAt(code, codeAddr); err != nil {
		t.Fatal(err)
	}
}

// vcpu creates vCPU id in real mode at 0:codeAddr with the DS segment based
// at dsBase (the hidden base may be anywhere, which lets 16-bit code reach
// MMIO above 1 MiB) and the given RBX.
func (m *machine) vcpu(t testing.TB, id int, dsBase, rbx uint64) *kvm.VCPU {
	t.Helper()
	v, err := m.vm.CreateVCPU(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	m.reset(t, v, dsBase, rbx)
	return v
}

func (m *machine) reset(t testing.TB, v *kvm.VCPU, dsBase, rbx uint64) {
	t.Helper()
	s, err := v.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	s.DS.Base, s.DS.Selector = dsBase, 0
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(kvm.Regs{RIP: codeAddr, RFLAGS: 2, RBX: rbx, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
}

// run drives v through the Go run loop (Run, Dispatch) until stop says so
// for an exit, failing on any exit it does not expect and after timeout
// (kicking the vCPU out of the guest with immediate_exit and a signal).
func (m *machine) run(t testing.TB, v *kvm.VCPU, timeout time.Duration, stop func(kvm.Exit, kvm.IO) bool) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	var mu sync.Mutex
	timedOut := false
	done := make(chan struct{})
	var watchdog sync.WaitGroup
	watchdog.Go(func() {
		select {
		case <-done:
			return
		case <-time.After(timeout):
		}
		mu.Lock()
		timedOut = true
		mu.Unlock()
		v.SetImmediateExit(true) // first, so a signal that lands early is not lost
		unix.Tgkill(unix.Getpid(), tid, unix.SIGUSR1)
	})
	// The watchdog must be gone before the test closes the vCPU.
	defer watchdog.Wait()
	defer close(done)
	for i := 0; i < 1000; i++ {
		exit, err := v.Run()
		if err != nil {
			t.Fatal(err)
		}
		io, _ := v.IO()
		if exit == kvm.ExitIntr {
			mu.Lock()
			to := timedOut
			mu.Unlock()
			if to {
				r, _ := v.Regs()
				t.Fatalf("vCPU %d: no expected exit within %v (RIP %#x)", v.ID(), timeout, r.RIP)
			}
			continue
		}
		handled := v.Dispatch(exit, &m.pio, &m.mmio)
		if stop(exit, io) {
			return
		}
		if !handled {
			r, _ := v.Regs()
			t.Fatalf("vCPU %d: unexpected exit %v at RIP %#x", v.ID(), exit, r.RIP)
		}
	}
	t.Fatalf("vCPU %d: too many exits", v.ID())
}

func untilHLT(e kvm.Exit, _ kvm.IO) bool { return e == kvm.ExitHLT }

func untilPort(port uint16) func(kvm.Exit, kvm.IO) bool {
	return func(e kvm.Exit, io kvm.IO) bool { return e == kvm.ExitIO && io.Port == port }
}

func TestSystem(t *testing.T) {
	testenv.NeedKVM(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if v, err := sys.APIVersion(); err != nil || v != kvm.APIVersion {
		t.Fatalf("APIVersion = %d, %v", v, err)
	}
	for _, c := range []kvm.Cap{kvm.CapIRQChip, kvm.CapUserMemory, kvm.CapIRQFD, kvm.CapIOEventFD,
		kvm.CapIRQRouting, kvm.CapPIT2, kvm.CapImmediateExit, kvm.CapMaxVCPUs} {
		if n, err := sys.CheckExtension(c); err != nil || n <= 0 {
			t.Errorf("CheckExtension(%d) = %d, %v; the VMM needs it", c, n, err)
		}
	}
	if n, _ := sys.CheckExtension(kvm.Cap(0xFFFF)); n != 0 {
		t.Errorf("an unknown capability reports %d", n)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	var vendor []byte
	for _, e := range cpuid {
		if e.Function == 0 {
			for _, r := range []uint32{e.EBX, e.EDX, e.ECX} {
				vendor = append(vendor, byte(r), byte(r>>8), byte(r>>16), byte(r>>24))
			}
		}
	}
	if len(cpuid) < 4 || len(vendor) != 12 {
		t.Fatalf("SupportedCPUID: %d entries, vendor %q", len(cpuid), vendor)
	}
	t.Logf("%d CPUID entries, vendor %q", len(cpuid), vendor)
	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	const msrTSC = 0x10
	found := false
	for _, m := range msrs {
		found = found || m == msrTSC
	}
	if !found {
		t.Errorf("MSRIndexList (%d entries) lacks IA32_TSC", len(msrs))
	}
	if n, err := sys.VCPUMmapSize(); err != nil || n < 4096 {
		t.Errorf("VCPUMmapSize = %d, %v", n, err)
	}
}

// TestVCPUState round-trips the register ioctls and the CPUID/MSR setters.
func TestVCPUState(t *testing.T) {
	m := newMachine(t, true)
	v := m.vcpu(t, 0, 0, 0x1234_5678_9abc_def0)
	r, err := v.Regs()
	if err != nil || r.RBX != 0x1234_5678_9abc_def0 || r.RIP != codeAddr {
		t.Fatalf("Regs = %+v, %v", r, err)
	}
	f, err := v.FPU()
	if err != nil {
		t.Fatal(err)
	}
	f.XMM[3][5] = 0x77
	f.MXCSR = 0x1f80
	if err := v.SetFPU(f); err != nil {
		t.Fatal(err)
	}
	if f2, err := v.FPU(); err != nil || f2.XMM[3][5] != 0x77 {
		t.Fatalf("FPU after SetFPU: xmm3[5] = %#x, %v", f2.XMM[3][5], err)
	}
	cpuid, err := m.sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	const msrSysenterCS = 0x174
	if err := v.SetMSRs([]kvm.MSREntry{{Index: msrSysenterCS, Data: 0x10}}); err != nil {
		t.Fatal(err)
	}
	got := []kvm.MSREntry{{Index: msrSysenterCS}}
	if err := v.GetMSRs(got); err != nil || got[0].Data != 0x10 {
		t.Fatalf("GetMSRs = %+v, %v", got, err)
	}
	if err := v.GetMSRs([]kvm.MSREntry{{Index: 0xdead_0000}}); err == nil {
		t.Error("GetMSRs of a bogus MSR succeeded")
	}
	st, err := v.MPState()
	if err != nil || st != kvm.MPStateRunnable {
		t.Fatalf("BSP MPState = %d, %v", st, err)
	}
	l, err := v.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
}

// TestPortIO: OUT of each width and IN reach the device at the right offset
// with the right data; the IN value goes back out so the test sees it
// round-trip; an unclaimed IN reads all ones; REP OUTSB arrives as four
// byte writes in order; HLT ends it.
func TestPortIO(t *testing.T) {
	m := newMachine(t, false)
	var dev recorder
	if err := m.pio.Insert(&dev, 0x500, 0x10); err != nil {
		t.Fatal(err)
	}
	m.load(t, []byte{
		0xba, 0x03, 0x05, // mov $0x503, %dx
		0xb0, 0x5a, // mov $0x5a, %al
		0xee,             // out %al, (%dx)
		0xb8, 0x34, 0x12, // mov $0x1234, %ax
		0xef,                               // out %ax, (%dx)
		0x66, 0xb8, 0xef, 0xbe, 0xad, 0xde, // mov $0xdeadbeef, %eax
		0xba, 0x04, 0x05, // mov $0x504, %dx
		0x66, 0xef, // out %eax, (%dx)
		0xba, 0x08, 0x05, // mov $0x508, %dx
		0x66, 0xed, // in (%dx), %eax
		0xba, 0x0c, 0x05, // mov $0x50c, %dx
		0x66, 0xef, // out %eax, (%dx)
		0xba, 0x00, 0x06, // mov $0x600, %dx   (nobody there)
		0xed,             // in (%dx), %ax
		0xba, 0x0e, 0x05, // mov $0x50e, %dx
		0xef,             // out %ax, (%dx)
		0xbe, 0x00, 0x30, // mov $0x3000, %si
		0xb9, 0x04, 0x00, // mov $4, %cx
		0xba, 0x0a, 0x05, // mov $0x50a, %dx
		0xfc,       // cld
		0xf3, 0x6e, // rep outsb
		0xf4, // hlt
	})
	if err := m.mem.WriteAt([]byte("wxyz"), 0x3000); err != nil {
		t.Fatal(err)
	}
	v := m.vcpu(t, 0, 0, 0)
	m.run(t, v, 10*time.Second, untilHLT)
	want := []access{
		{true, 3, "\x5a"},
		{true, 3, "\x34\x12"},
		{true, 4, "\xef\xbe\xad\xde"},
		{false, 8, "r4"},
		{true, 0xc, "\xa8\xa9\xaa\xab"},
		{true, 0xe, "\xff\xff"},
		{true, 0xa, "w"}, {true, 0xa, "x"}, {true, 0xa, "y"}, {true, 0xa, "z"},
	}
	if got := dev.accesses(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("device saw\n%v\nwant\n%v", got, want)
	}
	// KVM counted them too: a port exit per instruction at least (a
	// string instruction may be one), and every one an exit.
	fd, err := v.StatsFD()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	st, err := kvm.ReadStats(fd)
	if err != nil {
		t.Fatal(err)
	}
	ios, ok1 := st.Get("io_exits")
	exits, ok2 := st.Get("exits")
	// PVM (a KVM that runs guests without hardware virtualisation) takes
	// the port instructions as exits but does not count them as port
	// exits: io_exits=0 with exits=12 on a PVM host (2026-12-07).
	portExits := ios >= 7 || testenv.PVM()
	if !ok1 || !ok2 || exits < 7 || exits < ios || !portExits {
		t.Errorf("KVM's counts: io_exits=%d (%v) exits=%d (%v), want 7 or more port exits among the exits (PVM: %v)", ios, ok1, exits, ok2, testenv.PVM())
	}
}

// TestMMIO: MMIO writes of 1, 2 and 4 bytes and a 4-byte read reach the
// MMIO bus device at the right offsets; an unclaimed read is all ones.
func TestMMIO(t *testing.T) {
	m := newMachine(t, false)
	var dev recorder
	if err := m.mmio.Insert(&dev, mmioBase, 0x100); err != nil {
		t.Fatal(err)
	}
	m.load(t, []byte{
		0xc6, 0x06, 0x10, 0x00, 0x42, // movb $0x42, 0x10
		0xc7, 0x06, 0x12, 0x00, 0x34, 0x12, // movw $0x1234, 0x12
		0x66, 0xa1, 0x20, 0x00, // mov 0x20, %eax
		0x66, 0xa3, 0x30, 0x00, // mov %eax, 0x30
		0xa1, 0x00, 0x08, // mov 0x800, %ax   (nobody there)
		0xa3, 0x34, 0x00, // mov %ax, 0x34
		0xf4, // hlt
	})
	v := m.vcpu(t, 0, mmioBase, 0)
	m.run(t, v, 10*time.Second, untilHLT)
	want := []access{
		{true, 0x10, "\x42"},
		{true, 0x12, "\x34\x12"},
		{false, 0x20, "r4"},
		{true, 0x30, "\xc0\xc1\xc2\xc3"},
		{true, 0x34, "\xff\xff"},
	}
	if got := dev.accesses(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("device saw\n%v\nwant\n%v", got, want)
	}
}

// apicIDGuest reads its own APIC id from the in-kernel LAPIC (DS based at
// 0xFEE00000) and writes it, with BL beside it, to port 0x510.
var apicIDGuest = []byte{
	0x66, 0xa1, 0x20, 0x00, // mov 0x20, %eax      (LAPIC ID register)
	0x66, 0xc1, 0xe8, 0x18, // shr $24, %eax
	0x88, 0xdc, // mov %bl, %ah
	0xba, 0x10, 0x05, // mov $0x510, %dx
	0xef,       // out %ax, (%dx)
	0xeb, 0xfe, // 1: jmp 1b
}

// TestVCPUs starts n vCPUs at once, each on its own thread, with the
// in-kernel irqchip: every one must run and report its own APIC id (read
// by the guest from its LAPIC) next to the RBX the VMM gave it.
func TestVCPUs(t *testing.T) {
	for _, n := range []int{4, 64} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			m := newMachine(t, true)
			if max, _ := m.vm.CheckExtension(kvm.CapMaxVCPUs); max < n {
				testenv.Need(t, false, fmt.Sprintf("KVM allows %d vCPUs per VM, test needs %d", max, n))
			}
			m.load(t, apicIDGuest)
			var dev recorder
			if err := m.pio.Insert(&dev, 0x510, 2); err != nil {
				t.Fatal(err)
			}
			vcpus := make([]*kvm.VCPU, n)
			for id := range vcpus {
				vcpus[id] = m.vcpu(t, id, 0xFEE0_0000, uint64(3*id+1))
				if id > 0 {
					// Application processors wait for INIT/SIPI otherwise.
					if err := vcpus[id].SetMPState(kvm.MPStateRunnable); err != nil {
						t.Fatal(err)
					}
				}
				l, err := vcpus[id].LAPIC()
				if err != nil {
					t.Fatal(err)
				}
				if got := int(l.Regs[0x23]); got != id {
					t.Errorf("vCPU %d: KVM_GET_LAPIC says APIC id %d", id, got)
				}
			}
			var wg sync.WaitGroup
			for _, v := range vcpus {
				wg.Go(func() { m.run(t, v, 30*time.Second, untilPort(0x510)) })
			}
			wg.Wait()
			seen := map[string]bool{}
			for _, a := range dev.accesses() {
				seen[a.data] = true
			}
			for id := range n {
				if want := string([]byte{byte(id), byte(3*id + 1)}); !seen[want] {
					t.Errorf("vCPU %d did not report APIC id %d with RBX %d", id, id, 3*id+1)
				}
			}
			if len(dev.accesses()) != n {
				t.Errorf("%d reports from %d vCPUs", len(dev.accesses()), n)
			}
		})
	}
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// count drains an eventfd and returns its counter (0 when never signalled).
func count(t *testing.T, fd int) uint64 {
	t.Helper()
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err == unix.EAGAIN {
		return 0
	} else if err != nil {
		t.Fatal(err)
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24
}

// TestIOEventFD: guest writes that match an ioeventfd (PIO with and
// without datamatch, MMIO) signal it inside the kernel and never reach the
// VMM; a non-matching write and a deassigned ioeventfd do reach it.
func TestIOEventFD(t *testing.T) {
	m := newMachine(t, false)
	var dev, mdev recorder
	if err := m.pio.Insert(&dev, 0x520, 0x10); err != nil {
		t.Fatal(err)
	}
	if err := m.mmio.Insert(&mdev, mmioBase, 0x100); err != nil {
		t.Fatal(err)
	}
	m.load(t, []byte{
		0xba, 0x20, 0x05, // mov $0x520, %dx
		0xb0, 0x01, // mov $1, %al
		0xee,             // out %al, (%dx)         -> efdPIO
		0xba, 0x22, 0x05, // mov $0x522, %dx
		0xb8, 0x41, 0x00, // mov $0x41, %ax
		0xef,             // out %ax, (%dx)         no match: exits
		0xb8, 0x42, 0x00, // mov $0x42, %ax
		0xef,                         // out %ax, (%dx)         -> efdMatch
		0xc6, 0x06, 0x40, 0x00, 0x07, // movb $7, 0x40          -> efdMMIO
		0xba, 0x2f, 0x05, // mov $0x52f, %dx
		0xee, // out %al, (%dx)         done
		0xf4, // hlt
	})
	efdPIO, efdMatch, efdMMIO := eventfd(t), eventfd(t), eventfd(t)
	evPIO := kvm.IOEvent{Addr: 0x520, Len: 1, PIO: true}
	for _, b := range []struct {
		fd int
		ev kvm.IOEvent
	}{
		{efdPIO, evPIO},
		{efdMatch, kvm.IOEvent{Addr: 0x522, Len: 2, PIO: true, Match: true, Data: 0x42}},
		{efdMMIO, kvm.IOEvent{Addr: mmioBase + 0x40, Len: 1}},
	} {
		if err := m.vm.IOEventFD(b.fd, b.ev, false); err != nil {
			t.Fatal(err)
		}
	}
	v := m.vcpu(t, 0, mmioBase, 0)
	m.run(t, v, 10*time.Second, untilHLT)
	want := []access{{true, 2, "\x41\x00"}, {true, 0xf, "\x42"}}
	if got := dev.accesses(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("VMM saw\n%v\nwant\n%v", got, want)
	}
	if got := mdev.accesses(); len(got) != 0 {
		t.Errorf("MMIO write covered by an ioeventfd reached the VMM: %v", got)
	}
	for name, fd := range map[string]int{"PIO": efdPIO, "datamatch": efdMatch, "MMIO": efdMMIO} {
		if n := count(t, fd); n != 1 {
			t.Errorf("%s ioeventfd signalled %d times, want 1", name, n)
		}
	}

	// Without the PIO binding the first write exits like any other.
	if err := m.vm.IOEventFD(efdPIO, evPIO, true); err != nil {
		t.Fatal(err)
	}
	m.reset(t, v, mmioBase, 0)
	m.run(t, v, 10*time.Second, untilHLT)
	if got := dev.accesses(); len(got) < 3 || got[2] != (access{true, 0, "\x01"}) {
		t.Errorf("after deassign the VMM saw %v", got)
	}
	if n := count(t, efdPIO); n != 0 {
		t.Errorf("deassigned ioeventfd signalled %d times", n)
	}
}

// interruptGuest programs the PIC (vectors 0x20-0x27, only IRQ 5
// unmasked), reports ready on port 0x530, then waits with interrupts on.
// Every vector's handler writes its vector number to port 0x531.
var interruptGuest = []byte{
	0xb0, 0x11, 0xe6, 0x20, // ICW1: edge, cascade, ICW4 follows
	0xb0, 0x20, 0xe6, 0x21, // ICW2: vector base 0x20
	0xb0, 0x04, 0xe6, 0x21, // ICW3: slave on IRQ 2
	0xb0, 0x01, 0xe6, 0x21, // ICW4: 8086 mode
	0xb0, 0xdf, 0xe6, 0x21, // OCW1: mask all but IRQ 5
	0xba, 0x30, 0x05, // mov $0x530, %dx
	0xee,       // out %al, (%dx)     ready
	0xfb,       // sti
	0xf4,       // 1: hlt
	0xeb, 0xfd, // jmp 1b
}

func (m *machine) interruptVCPU(t *testing.T) *kvm.VCPU {
	t.Helper()
	m.load(t, interruptGuest)
	for vec := range 256 {
		handler := uint16(0x2000 + 16*vec)
		stub := []byte{
			0xb0, byte(vec), // mov $vec, %al
			0xba, 0x31, 0x05, // mov $0x531, %dx
			0xee,       // out %al, (%dx)
			0xf4,       // 1: hlt
			0xeb, 0xfd, // jmp 1b
		}
		if err := m.mem.WriteAt(stub, uint64(handler)); err != nil {
			t.Fatal(err)
		}
		// Real-mode IVT entry: offset, segment 0.
		if err := m.mem.PutUint32(uint64(4*vec), uint32(handler)); err != nil {
			t.Fatal(err)
		}
	}
	v := m.vcpu(t, 0, 0, 0)
	// What firmware does on the boot CPU: LINT0 takes the PIC's output
	// (ExtINT) and the APIC is software-enabled for MSIs.
	l, err := v.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	put32 := func(reg int, val uint32) {
		l.Regs[reg], l.Regs[reg+1], l.Regs[reg+2], l.Regs[reg+3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
	}
	put32(0xF0, 0x1FF)  // spurious vector register: enable, vector 0xFF
	put32(0x350, 0x700) // LVT LINT0: ExtINT, unmasked
	put32(0x360, 0x400) // LVT LINT1: NMI
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestInterrupts raises an interrupt in each way the VMM can and checks
// that the guest takes it at the expected vector: a legacy line by
// KVM_IRQ_LINE and by irqfd (default routing and a custom GSI route), and
// an MSI by KVM_SIGNAL_MSI and by irqfd on an MSI route.
func TestInterrupts(t *testing.T) {
	const msiAddr = 0xFEE0_0000 // fixed delivery to APIC id 0
	for _, tc := range []struct {
		name   string
		vector byte
		raise  func(t *testing.T, m *machine) error
	}{
		{"irq line", 0x25, func(t *testing.T, m *machine) error {
			if err := m.vm.IRQLine(5, true); err != nil {
				return err
			}
			return m.vm.IRQLine(5, false)
		}},
		{"irqfd default route", 0x25, func(t *testing.T, m *machine) error {
			fd := eventfd(t)
			if err := m.vm.IRQFD(fd, 5, -1, false); err != nil {
				return err
			}
			_, err := unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			return err
		}},
		{"irqfd custom route", 0x25, func(t *testing.T, m *machine) error {
			err := m.vm.SetGSIRouting([]kvm.Route{
				{GSI: 30, Type: kvm.RouteIRQChip, Chip: kvm.IRQChipPICMaster, Pin: 5},
				{GSI: 30, Type: kvm.RouteIRQChip, Chip: kvm.IRQChipIOAPIC, Pin: 5},
			})
			if err != nil {
				return err
			}
			fd := eventfd(t)
			if err := m.vm.IRQFD(fd, 30, -1, false); err != nil {
				return err
			}
			_, err = unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			return err
		}},
		{"signal msi", 0x41, func(t *testing.T, m *machine) error {
			ok, err := m.vm.SignalMSI(kvm.MSI{Addr: msiAddr, Data: 0x41})
			if err == nil && !ok {
				err = fmt.Errorf("MSI not delivered")
			}
			return err
		}},
		{"irqfd msi route", 0x42, func(t *testing.T, m *machine) error {
			if err := m.vm.SetGSIRouting([]kvm.Route{{GSI: 31, Type: kvm.RouteMSI, MSI: kvm.MSI{Addr: msiAddr, Data: 0x42}}}); err != nil {
				return err
			}
			fd := eventfd(t)
			if err := m.vm.IRQFD(fd, 31, -1, false); err != nil {
				return err
			}
			_, err := unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t, true)
			v := m.interruptVCPU(t)
			var ready, got recorder
			if err := m.pio.Insert(&ready, 0x530, 1); err != nil {
				t.Fatal(err)
			}
			if err := m.pio.Insert(&got, 0x531, 1); err != nil {
				t.Fatal(err)
			}
			m.run(t, v, 10*time.Second, untilPort(0x530))
			if err := tc.raise(t, m); err != nil {
				t.Fatal(err)
			}
			m.run(t, v, 10*time.Second, untilPort(0x531))
			if a := got.accesses(); len(a) != 1 || a[0].data != string([]byte{tc.vector}) {
				t.Errorf("guest took %v, want vector %#x", a, tc.vector)
			}
		})
	}
}

// TestStop: SetImmediateExit makes Run return ExitIntr without entering the
// guest, and with a signal it stops a vCPU spinning in the guest.
func TestStop(t *testing.T) {
	m := newMachine(t, false)
	m.load(t, []byte{0xeb, 0xfe}) // 1: jmp 1b
	v := m.vcpu(t, 0, 0, 0)

	v.SetImmediateExit(true)
	if exit, err := v.Run(); err != nil || exit != kvm.ExitIntr {
		t.Fatalf("Run with immediate_exit = %v, %v", exit, err)
	}
	if r, _ := v.Regs(); r.RIP != codeAddr {
		t.Fatalf("guest ran despite immediate_exit: RIP %#x", r.RIP)
	}
	v.SetImmediateExit(false)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	done := make(chan struct{})
	var kicker sync.WaitGroup
	defer kicker.Wait() // before the vCPU is closed
	kicker.Go(func() {
		time.Sleep(50 * time.Millisecond)
		v.SetImmediateExit(true)
		for {
			unix.Tgkill(unix.Getpid(), tid, unix.SIGUSR1)
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	start := time.Now()
	exit, err := v.Run()
	close(done)
	if err != nil || exit != kvm.ExitIntr {
		t.Fatalf("Run of a spinning guest after a stop request = %v, %v", exit, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stopping took %v", d)
	}
}

// TestHoldP: with SetHoldP, the run after an exit keeps the goroutine's
// P; a guest that then spins is interrupted by the runtime itself (a
// collection stopping the world, or its preemption after 10 ms), so a P
// held in KVM_RUN never holds the rest of the process up, and the run
// after the interruption gives its P up again.
func TestHoldP(t *testing.T) {
	atLeastProcs(t, 3)
	m := newMachine(t, false)
	m.load(t, []byte{
		0xba, 0x40, 0x05, // mov $0x540, %dx
		0xee,       // out %al, (%dx)
		0xeb, 0xfe, // 1: jmp 1b
	})
	v := m.vcpu(t, 0, 0, 0)
	v.SetHoldP(true)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if kvm.HoldingP(v) {
		t.Fatal("the first run would keep its P")
	}
	if exit, err := v.Run(); err != nil || exit != kvm.ExitIO {
		t.Fatalf("first Run = %v, %v; want the OUT", exit, err)
	}
	if !kvm.HoldingP(v) {
		t.Fatal("the run after an exit would not keep its P")
	}
	gc := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		runtime.GC()
		gc <- time.Since(start)
	}()
	exit, err := v.Run() // spins, holding the P, until the runtime interrupts it
	if err != nil || exit != kvm.ExitIntr {
		t.Fatalf("Run of the spinning guest = %v, %v; want ExitIntr", exit, err)
	}
	if kvm.HoldingP(v) {
		t.Error("the run after an interruption would keep its P")
	}
	select {
	case d := <-gc:
		t.Logf("a collection took %v while the vCPU held its P in the guest", d)
	case <-time.After(30 * time.Second):
		t.Fatal("a collection waited 30 s for the vCPU holding its P")
	}
}

// atLeastProcs raises GOMAXPROCS to n for the test where it is lower: a
// vCPU keeping its P in the guest needs Ps to spare.
func atLeastProcs(tb testing.TB, n int) {
	if old := runtime.GOMAXPROCS(0); old < n {
		runtime.GOMAXPROCS(n)
		tb.Cleanup(func() { runtime.GOMAXPROCS(old) })
	}
}

// ioLoopGuest writes AL to port 0x540 forever.
var ioLoopGuest = []byte{
	0xba, 0x40, 0x05, // mov $0x540, %dx
	0xee,       // 1: out %al, (%dx)
	0xeb, 0xfd, // jmp 1b
}

type counter struct{ n int }

func (c *counter) Read(uint64, []byte)  {}
func (c *counter) Write(uint64, []byte) { c.n++ }

func benchMachine(b *testing.B) (*machine, *kvm.VCPU) {
	m := newMachine(b, false)
	m.load(b, ioLoopGuest)
	return m, m.vcpu(b, 0, 0, 0)
}

// TestIOExitAllocs holds the whole exit round trip through the Go run loop
// (KVM_RUN, decoding, bus dispatch to a device) to no allocation, on a
// real vCPU: what BenchmarkIOExitBus measures.
func TestIOExitAllocs(t *testing.T) {
	m := newMachine(t, false)
	m.load(t, ioLoopGuest)
	v := m.vcpu(t, 0, 0, 0)
	var dev counter
	if err := m.pio.Insert(&dev, 0x540, 1); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if n := testing.AllocsPerRun(1000, func() { m.oneExit(t, v) }); n != 0 {
		t.Errorf("%v allocations per exit, want 0", n)
	}
	if dev.n < 1000 {
		t.Errorf("device saw %d writes", dev.n)
	}
}

// oneExit runs v until one exit reaches the machine's buses, and returns
// how many KVM_RUNs on the way were interrupted (the Go runtime's
// signals: preemption, the collector).
func (m *machine) oneExit(tb testing.TB, v *kvm.VCPU) (intr int) {
	for {
		exit, err := v.Run()
		if err != nil {
			tb.Fatal(err)
		}
		if v.Dispatch(exit, &m.pio, &m.mmio) {
			return intr
		}
		if exit != kvm.ExitIntr {
			tb.Fatalf("unexpected exit %v", exit)
		}
		intr++
	}
}

// BenchmarkIOExitBus measures one guest OUT through the Go run loop: Run,
// exit decoding and bus dispatch to a device.
func BenchmarkIOExitBus(b *testing.B) { benchIOExit(b, false) }

// BenchmarkIOExitHeld is BenchmarkIOExitBus with the vCPU keeping its P
// in the guest (SetHoldP), as a VMM's vCPUs do.
func BenchmarkIOExitHeld(b *testing.B) {
	atLeastProcs(b, 3)
	benchIOExit(b, true)
}

func benchIOExit(b *testing.B, hold bool) {
	m, v := benchMachine(b)
	v.SetHoldP(hold)
	var dev counter
	if err := m.pio.Insert(&dev, 0x540, 1); err != nil {
		b.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	intr := 0
	for b.Loop() {
		intr += m.oneExit(b, v)
	}
	b.ReportMetric(float64(intr)/float64(b.N), "intr/op")
	if dev.n < b.N {
		b.Fatalf("device saw %d writes in %d iterations", dev.n, b.N)
	}
}

// BenchmarkIOExitRaw is the floor for BenchmarkIOExitBus: the same guest
// driven by a bare KVM_RUN ioctl, reading kvm_run directly.
func BenchmarkIOExitRaw(b *testing.B) {
	m, v := benchMachine(b)
	size, err := m.sys.VCPUMmapSize()
	if err != nil {
		b.Fatal(err)
	}
	run, err := unix.Mmap(v.Fd(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(run)
	const kvmRun = 0xae80
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	n, intr := 0, 0
	for b.Loop() {
		for {
			_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.Fd()), kvmRun, 0)
			if e == 0 {
				break
			}
			if e != unix.EINTR {
				b.Fatal(e)
			}
			intr++
		}
		// exit_reason at 8 (2 = IO), io.port at 34.
		if run[8] != 2 || run[34] != 0x40 || run[35] != 0x05 {
			b.Fatalf("unexpected exit % x", run[8:40])
		}
		n++
	}
	if !bytes.Equal(run[8:12], []byte{2, 0, 0, 0}) || n != b.N {
		b.Fatalf("loop ran %d of %d", n, b.N)
	}
	b.ReportMetric(float64(intr)/float64(b.N), "intr/op")
}
