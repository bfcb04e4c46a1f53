package machine

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/virtio/blk"
)

// vcpuWatch is what the run loop publishes about one vCPU for Dump, and the
// channel through which Dump asks the vCPU's own thread for its state.
//
// KVM serialises a vCPU's ioctls on a mutex that KVM_RUN holds while the
// guest runs, so another thread cannot read the registers of a running
// vCPU: it would block until the guest exits on its own, which a guest
// spinning with interrupts off never does. Dump therefore sets
// immediate_exit, kicks the thread out of KVM_RUN with kickSignal, and the
// vCPU goroutine itself reads the state and answers.
type vcpuWatch struct {
	inGuest  atomic.Bool   // inside KVM_RUN (in the guest, or halted in KVM)
	exits    atomic.Uint64 // exits to userspace so far
	lastExit atomic.Uint32 // kvm.Exit of the last one
	io, mmio atomic.Uint64 // port and MMIO exits among them
	wanted   atomic.Bool   // Dump is waiting for an answer
	answer   chan string   // the answer, buffered 1
}

func newWatches(n int) []vcpuWatch {
	w := make([]vcpuWatch, n)
	for i := range w {
		w[i].answer = make(chan string, 1)
	}
	return w
}

// Exits counts the vCPUs' exits to the VMM so far: all of them, and the port
// I/O and MMIO ones among them. Exits are what a nested guest pays most
// for (each is a round trip through two hypervisors); the VMM reports the
// counts when it ends, so that a guest that suddenly needs many more (as
// the PCI bus scan of issue 9 did) is seen.
func (m *Machine) Exits() (all, io, mmio uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.watch {
		all += m.watch[i].exits.Load()
		io += m.watch[i].io.Load()
		mmio += m.watch[i].mmio.Load()
	}
	return all, io, mmio
}

// dumpWait is how long Dump waits for a kicked vCPU to answer before it
// reports the vCPU as unresponsive (stuck in the kernel, or in the VMM
// handling an exit: the goroutine stacks then say where).
const dumpWait = 2 * time.Second

// statsSpan is the least time over which Dump reports how KVM's counters
// moved.
const statsSpan = time.Second

// Dump writes the state of every vCPU and the VMM's goroutine stacks to w,
// each line starting with prefix: for finding out why a guest makes no
// progress. Per vCPU: KVM's own counts (exits, faults, injected
// interrupts), where its thread is (in KVM_RUN or in the VMM, with the
// exit count and the last exit), its multiprocessing state (runnable,
// halted, an AP waiting for INIT or SIPI), registers, the in-kernel local
// APIC (pending and in-service vectors, timer) and the events KVM holds
// (KVM_GET_VCPU_EVENTS); then how KVM's counts moved during the dump. A running vCPU is kicked out of the guest to read
// them and re-enters it at once; the guest only loses that exit's time.
// Dump may be called from any goroutine while Run runs; each line is one
// Write.
func (m *Machine) Dump(w io.Writer, prefix string) {
	m.dumpMu.Lock()
	defer m.dumpMu.Unlock()
	line := func(format string, a ...any) {
		io.WriteString(w, prefix+fmt.Sprintf(format, a...)+"\n")
	}
	line("%d vCPUs", len(m.vcpus))
	began := time.Now()
	before, serr := m.stats.snapshot()
	disks := m.DiskStats()
	if serr != nil {
		line("kvm counts: %v", serr)
	}
	for i, v := range m.vcpus {
		if serr == nil && i < len(before.vcpus) {
			line("vcpu %d: kvm counts%s", i, counts(before.vcpus[i], dumpCounters))
		}
		m.mu.Lock()
		tid, running := 0, m.tids != nil
		if running && i < len(m.tids) {
			tid = m.tids[i]
		}
		var watch *vcpuWatch
		if i < len(m.watch) {
			watch = &m.watch[i]
		}
		m.mu.Unlock()
		if watch == nil { // Run has not begun on a Machine assembled by hand
			line("vcpu %d: not started", i)
			continue
		}
		where := "in the VMM"
		if watch.inGuest.Load() {
			where = "in KVM_RUN"
		}
		if n := watch.exits.Load(); n == 0 {
			where += ", no exits yet"
		} else {
			where = fmt.Sprintf("%s, %d exits, last %v", where, n, kvm.Exit(watch.lastExit.Load()))
		}
		if !running || tid == 0 {
			// Not read from here: a thread still in (or entering)
			// KVM_RUN would hold the vCPU's mutex for as long as the
			// guest runs.
			state := "stopped"
			if running {
				state = "not started"
			}
			line("vcpu %d: %s (%s)", i, state, where)
			continue
		}
		select { // an answer that came after an earlier Dump gave up
		case <-watch.answer:
		default:
		}
		watch.wanted.Store(true)
		v.SetImmediateExit(true)
		unix.Tgkill(os.Getpid(), tid, kickSignal)
		select {
		case s := <-watch.answer:
			line("vcpu %d: thread %d was %s", i, tid, where)
			for _, l := range strings.Split(s, "\n") {
				line("%s", l)
			}
		case <-time.After(dumpWait):
			line("vcpu %d: thread %d did not answer within %s (%s): see its goroutine below", i, tid, dumpWait, where)
		}
	}
	// What moved while the dump ran (at least statsSpan): a vCPU whose
	// guest makes no progress while its exits or faults climb is spinning
	// inside KVM; one where nothing moved never ran.
	time.Sleep(time.Until(began.Add(statsSpan)))
	if serr == nil {
		if after, err := m.stats.snapshot(); err != nil {
			line("kvm counts: %v", err)
		} else {
			line("kvm counts moved over %s (this dump's own kicks included):", after.at.Sub(before.at).Round(time.Millisecond))
			for i := range min(len(before.vcpus), len(after.vcpus)) {
				line("vcpu %d:%s", i, moved(before.vcpus[i], after.vcpus[i]))
			}
			line("vm:%s", moved(before.vm, after.vm))
			line("vm counts%s", counts(after.vm, nil))
		}
	}
	// The disks' finished requests over the same span: a disk whose guest
	// waits while nothing finishes is stuck, one where they trickle is
	// slow (a throttle, or a guest whose clock says its run is not over).
	for i, now := range m.DiskStats() {
		if i < len(disks) {
			line("disk %d:%s", i, diskMoved(disks[i], now))
		}
	}
	if m.serial != nil {
		line("serial: %s", m.serial.State())
	}
	m.describeDevices(line)
	for _, l := range strings.Split(strings.TrimRight(goroutines(), "\n"), "\n") {
		line("%s", l)
	}
	line("end")
}

// describeDevices writes each virtio device's description (its queues,
// vectors and requests: virtiopci.Transport.Describe). A description takes
// the device's locks, which a stalled device may hold for good: each runs
// on a goroutine of its own, given dumpWait, after which the dump moves on
// (the goroutine stacks at the end say who holds what).
func (m *Machine) describeDevices(line func(string, ...any)) {
	m.mu.Lock()
	ts, names := m.virtio, m.vnames
	m.mu.Unlock()
	for i, t := range ts {
		got := make(chan []string, 1)
		go func() { got <- t.Describe() }()
		select {
		case ls := <-got:
			for _, l := range ls {
				line("%s: %s", names[i], l)
			}
		case <-time.After(dumpWait):
			line("%s: no description within %s (a lock held: see the goroutines below)", names[i], dumpWait)
		}
	}
}

// diskMoved lists the request classes whose finished count changed
// between two of a disk's snapshots, or says none did.
func diskMoved(before, after blk.Stats) string {
	var s string
	for c := range after {
		if d := after[c].Requests - before[c].Requests; d != 0 {
			s += fmt.Sprintf(" %v+%d", blk.Class(c), d)
		}
	}
	if s == "" {
		return " no request finished"
	}
	return " requests finished" + s
}

// answerDump runs on vCPU i's own thread, out of KVM_RUN, when Dump asked:
// it lets the vCPU re-enter the guest (unless the machine is stopping) and
// answers with its state.
func (m *Machine) answerDump(i int, v *kvm.VCPU) {
	watch := &m.watch[i]
	if !watch.wanted.Swap(false) {
		return
	}
	m.mu.Lock()
	if m.tids != nil { // stop keeps immediate_exit set
		v.SetImmediateExit(false)
	}
	m.mu.Unlock()
	var mem uint64Reader
	if m.mem != nil { // a Machine assembled by hand may have none
		mem = m.mem
	}
	select {
	case watch.answer <- strings.Join(describeVCPU(i, v, mem), "\n"):
	default: // an unread answer is still there
	}
}

// describeVCPU reads what KVM holds about a vCPU that is not in KVM_RUN,
// and walks the guest's page tables (in mem, when not nil) for its RIP
// and its kernel stack (guestStack).
func describeVCPU(i int, v *kvm.VCPU, mem uint64Reader) []string {
	var out []string
	add := func(format string, a ...any) {
		out = append(out, fmt.Sprintf("vcpu %d: ", i)+fmt.Sprintf(format, a...))
	}
	if s, err := v.MPState(); err != nil {
		add("%v", err)
	} else {
		add("mp_state %s", mpStateName(s))
	}
	r, rerr := v.Regs()
	s, serr := v.Sregs()
	switch {
	case rerr != nil:
		add("%v", rerr)
	case serr != nil:
		add("%v", serr)
	default:
		add("rip=%#x rsp=%#x rflags=%#x (interrupts %s) cs=%#x cpl=%d cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x",
			r.RIP, r.RSP, r.RFLAGS, onOff(r.RFLAGS&(1<<9) != 0), s.CS.Selector, s.CS.DPL, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
		add("rax=%#x rbx=%#x rcx=%#x rdx=%#x rsi=%#x rdi=%#x rbp=%#x", r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP)
		add("r8=%#x r9=%#x r10=%#x r11=%#x r12=%#x r13=%#x r14=%#x r15=%#x", r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15)
		if mem != nil {
			note := ""
			if r.RIP == s.CR2 {
				note = " (rip is the last fault's address: it faulted fetching this instruction)"
			}
			add("%s%s", pageWalk(mem, s.EFER, s.CR4, s.CR3, r.RIP), note)
			if st := guestStack(mem, s.EFER, s.CR4, s.CR3, s.CS.DPL, r.RSP, s.IDT.Base, s.IDT.Limit); st != "" {
				add("%s", st)
			}
		}
	}
	if l, err := v.LAPIC(); err != nil {
		add("%v", err)
	} else {
		add("%s", describeLAPIC(&l, serr == nil && s.APICBase&apicBaseEXTD != 0))
		if lapicTimerMode(&l) == timerTSCDeadline {
			add("%s", describeDeadline(v))
		}
	}
	if e, err := v.Events(); err != nil {
		add("%v", err)
	} else {
		add("%s", describeEvents(&e))
	}
	return out
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func mpStateName(s kvm.MPState) string {
	switch s {
	case kvm.MPStateRunnable:
		return "runnable"
	case kvm.MPStateUninitialized:
		return "uninitialized (an AP waiting for INIT)"
	case kvm.MPStateInitReceived:
		return "init-received (an AP waiting for SIPI)"
	case kvm.MPStateHalted:
		return "halted (HLT, waiting for an interrupt)"
	case kvm.MPStateSIPIReceived:
		return "sipi-received"
	}
	return fmt.Sprintf("%d", uint32(s))
}

// lapicReg reads the 32-bit local APIC register at offset off.
func lapicReg(l *kvm.LAPIC, off int) uint32 {
	if off < 0 || off+4 > len(l.Regs) {
		return 0
	}
	b := l.Regs[off:]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// lapicVectors lists the vectors set in the 256-bit register array at off
// (IRR at 0x200, ISR at 0x100: eight 32-bit words 16 bytes apart).
func lapicVectors(l *kvm.LAPIC, off int) string {
	var vs []string
	for w := 0; w < 8; w++ {
		bits := lapicReg(l, off+16*w)
		for b := 0; b < 32; b++ {
			if bits&(1<<b) != 0 {
				vs = append(vs, fmt.Sprintf("%#x", w*32+b))
			}
		}
	}
	return "[" + strings.Join(vs, " ") + "]"
}

// describeLAPIC names what decides whether the vCPU gets interrupts: the
// pending (IRR) and in-service (ISR) vectors, the task priority, whether
// the APIC is enabled, and the timer.
func describeLAPIC(l *kvm.LAPIC, x2apic bool) string {
	id := lapicReg(l, 0x20) >> 24
	if x2apic { // the whole register (KVM_CAP_X2APIC_API's format)
		id = lapicReg(l, 0x20)
	}
	timer := lapicReg(l, 0x320)
	mode := [...]string{"one-shot", "periodic", "tsc-deadline", "reserved"}[lapicTimerMode(l)]
	masked := ""
	if timer&(1<<16) != 0 {
		masked = " masked"
	}
	svr := lapicReg(l, 0xF0)
	return fmt.Sprintf("lapic id=%d %s tpr=%#x irr=%s isr=%s timer=%s%s vector=%#x initial=%d current=%d divide=%#x lint0=%#x lint1=%#x",
		id, map[bool]string{true: "enabled", false: "software-disabled"}[svr&(1<<8) != 0],
		lapicReg(l, 0x80), lapicVectors(l, 0x200), lapicVectors(l, 0x100), mode, masked, timer&0xFF,
		lapicReg(l, 0x380), lapicReg(l, 0x390), lapicReg(l, 0x3E0), lapicReg(l, 0x350), lapicReg(l, 0x360))
}

// The local APIC timer's mode (LVT timer bits 17-18).
const timerTSCDeadline = 2

func lapicTimerMode(l *kvm.LAPIC) uint32 { return lapicReg(l, 0x320) >> 17 & 3 }

// Model-specific registers of the TSC-deadline timer.
const (
	msrTSC         = 0x10
	msrTSCDeadline = 0x6E0
)

// describeDeadline says when a vCPU's TSC-deadline timer fires, against its
// TSC now: in that mode the LAPIC's initial and current counts are unused,
// and a guest that stopped taking timer interrupts shows here whether its
// timer is disarmed (0), due, or long overdue (a lost interrupt).
func describeDeadline(v *kvm.VCPU) string {
	msrs := []kvm.MSREntry{{Index: msrTSC}, {Index: msrTSCDeadline}}
	if err := v.GetMSRs(msrs); err != nil {
		return err.Error()
	}
	return deadlineText(msrs[0].Data, msrs[1].Data)
}

func deadlineText(tsc, deadline uint64) string {
	switch {
	case deadline == 0:
		return fmt.Sprintf("tsc-deadline disarmed tsc=%d", tsc)
	case deadline > tsc:
		return fmt.Sprintf("tsc-deadline=%d in %d cycles tsc=%d", deadline, deadline-tsc, tsc)
	}
	return fmt.Sprintf("tsc-deadline=%d passed %d cycles ago tsc=%d", deadline, tsc-deadline, tsc)
}

func describeEvents(e *kvm.VCPUEvents) string {
	return fmt.Sprintf("events exception(injected=%d pending=%d nr=%d error=%#x) interrupt(injected=%d nr=%#x soft=%d shadow=%d) nmi(injected=%d pending=%d masked=%d) sipi_vector=%#x smm=%d",
		e.Exception.Injected, e.Exception.Pending, e.Exception.Nr, e.Exception.ErrorCode,
		e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Soft, e.Interrupt.Shadow,
		e.NMI.Injected, e.NMI.Pending, e.NMI.Masked, e.SIPIVector, e.SMI.SMM)
}

// goroutines returns every goroutine's stack, as a panic would print them.
func goroutines() string {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) || len(buf) >= 4<<20 {
			return string(bytes.TrimRight(buf[:n], "\n"))
		}
		buf = make([]byte, 2*len(buf))
	}
}
