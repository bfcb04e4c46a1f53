package machine

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/vmm/cpuid"
	"github.com/hyperroot/hyperroot/vmm/kvm"
)

// spinCode disables interrupts and jumps to itself for ever: a guest that
// never exits on its own, which only a kick gets out of KVM_RUN.
var spinCode = []byte{
	0xFA,       // cli
	0xEB, 0xFE, // jmp $
}

// TestDumpSpinningGuest: Dump reads the registers of vCPUs spinning in the
// guest with interrupts off (so it must kick them out of KVM_RUN), names
// their RIP, and the guest goes on spinning afterwards.
func TestDumpSpinningGuest(t *testing.T) {
	m := tinyMachine(t, 2, spinCode)
	done := make(chan Result, 1)
	go func() { done <- m.Run() }()
	defer func() {
		m.Stop()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("Run did not return within 20s of Stop")
		}
	}()
	// Wait until both vCPU threads are in the guest (progress, not time).
	deadline := time.Now().Add(20 * time.Second) // for this wait and the next
	for {
		m.mu.Lock()
		started := len(m.watch) == 2 && m.tids != nil && m.tids[0] != 0 && m.tids[1] != 0
		m.mu.Unlock()
		if started && m.watch[0].inGuest.Load() && m.watch[1].inGuest.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("vCPUs did not enter the guest within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	spinRIP := fmt.Sprintf("rip=%#x ", tinyCodeAddr+1) // the jmp
	// A vCPU thread marks itself in the guest just before KVM_RUN: with
	// more than one host CPU a dump can come before it ran the cli (rip
	// at the start, the kick making KVM_RUN return at once). Dump until
	// both spin, then check that dumps find them there and leave them
	// spinning.
	for {
		var b bytes.Buffer
		m.Dump(&b, "dump: ")
		if strings.Contains(b.String(), "dump: vcpu 0: "+spinRIP) && strings.Contains(b.String(), "dump: vcpu 1: "+spinRIP) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the vCPUs never reached the spin loop within 20s:\n%s", b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for round := 0; round < 2; round++ { // the guest runs on after a dump
		var b bytes.Buffer
		m.Dump(&b, "dump: ")
		out := b.String()
		for i := 0; i < 2; i++ {
			for _, want := range []string{
				fmt.Sprintf("dump: vcpu %d: thread ", i),
				fmt.Sprintf("dump: vcpu %d: %s", i, spinRIP),
				fmt.Sprintf("dump: vcpu %d: mp_state runnable", i),
				// The tiny guest runs in real mode: nothing to walk.
				fmt.Sprintf("dump: vcpu %d: not in long mode", i),
				// KVM's counts as they stood, and what moved.
				fmt.Sprintf("dump: vcpu %d: kvm counts ", i),
			} {
				if !strings.Contains(out, want) {
					t.Errorf("round %d: dump lacks %q:\n%s", round, want, out)
				}
			}
		}
		for _, want := range []string{"(interrupts off)", "dump: kvm counts moved over ", "dump: vm counts ", "dump: goroutine ", "dump: end"} {
			if !strings.Contains(out, want) {
				t.Errorf("round %d: dump lacks %q:\n%s", round, want, out)
			}
		}
		if _, rest, ok := strings.Cut(out, "dump: kvm counts moved over "); ok {
			lines := strings.SplitN(rest, "\n", 5)
			if len(lines) < 5 || !strings.HasPrefix(lines[1], "dump: vcpu 0: ") || !strings.HasPrefix(lines[2], "dump: vcpu 1: ") || !strings.HasPrefix(lines[3], "dump: vm: ") {
				t.Errorf("round %d: what moved is not one line per vCPU and one for the VM:\n%s", round, rest)
			}
		}
		for _, l := range strings.Split(out, "\n") {
			if l != "" && !strings.HasPrefix(l, "dump: ") {
				t.Errorf("line without the prefix: %q", l)
			}
		}
	}
	select {
	case r := <-done:
		t.Fatalf("Run returned after a dump: %v (%s)", r.Exit, r.Detail)
	default:
	}
}

func TestDescribeLAPIC(t *testing.T) {
	var l kvm.LAPIC
	put := func(off int, v uint32) {
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put(0x20, 3<<24)
	put(0xF0, 1<<8|0xFF)
	put(0x200+16*7, 1<<(0xEC-224)|1<<31) // IRR: vectors 0xEC and 0xFF pending
	put(0x100+16, 1<<(0x30-32))          // ISR: 0x30 in service
	put(0x320, 1<<17|0xEC)               // periodic, vector 0xEC
	put(0x380, 1000)
	got := describeLAPIC(&l, false)
	for _, want := range []string{"id=3 ", "enabled", "irr=[0xec 0xff]", "isr=[0x30]", "timer=periodic vector=0xec initial=1000"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	put(0x20, 1023)
	if got := describeLAPIC(&l, true); !strings.Contains(got, "id=1023 ") {
		t.Errorf("x2APIC mode: %q lacks id=1023", got)
	}
	if lapicReg(&l, 1022) != 0 || lapicReg(&l, -1) != 0 {
		t.Error("lapicReg out of bounds is not 0")
	}
}

func TestKVMCounts(t *testing.T) {
	before := kvm.Stats{{Name: "exits", Values: []uint64{10}}, {Name: "io_exits", Values: []uint64{4}}, {Name: "hist", Values: []uint64{1, 2}}, {Name: "blocking", Values: []uint64{1}}}
	after := kvm.Stats{{Name: "exits", Values: []uint64{15}}, {Name: "io_exits", Values: []uint64{4}}, {Name: "hist", Values: []uint64{3, 2}}, {Name: "blocking", Values: []uint64{0}}, {Name: "new", Values: []uint64{2}}}
	if got, want := moved(before, after), " exits+5 blocking-1 new+2"; got != want {
		t.Errorf("moved: %q, want %q", got, want)
	}
	if got := moved(after, after); got != " nothing moved" {
		t.Errorf("moved with no change: %q", got)
	}
	if got, want := counts(after, []string{"io_exits", "exits", "missing"}), " io_exits=4 exits=15"; got != want {
		t.Errorf("counts: %q, want %q", got, want)
	}
	if got, want := counts(after, nil), " exits=15 io_exits=4 new=2"; got != want {
		t.Errorf("every count: %q, want %q", got, want)
	}
	if got := counts(kvm.Stats{}, dumpCounters); got != " none" {
		t.Errorf("no counts: %q", got)
	}
}

func TestDeadlineText(t *testing.T) {
	for _, tc := range []struct {
		tsc, deadline uint64
		want          string
	}{
		{100, 0, "tsc-deadline disarmed tsc=100"},
		{100, 350, "tsc-deadline=350 in 250 cycles tsc=100"},
		{400, 350, "tsc-deadline=350 passed 50 cycles ago tsc=400"},
	} {
		if got := deadlineText(tc.tsc, tc.deadline); got != tc.want {
			t.Errorf("deadlineText(%d, %d) = %q, want %q", tc.tsc, tc.deadline, got, tc.want)
		}
	}
}

// TestDumpTSCDeadline: a vCPU whose local APIC timer is in TSC-deadline
// mode is dumped with its deadline (KVM_GET_MSRS), which its LAPIC's
// counts do not show.
func TestDumpTSCDeadline(t *testing.T) {
	sys, vm := irqchipVM(t)
	v, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// KVM's LAPIC takes the LVT's TSC-deadline mode only from a vCPU
	// whose CPUID offers it.
	supported, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCPUID2(cpuid.WithTSCDeadline(supported)); err != nil {
		t.Fatal(err)
	}
	l, err := v.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	const lvtt = 0x320
	put := func(off int, x uint32) {
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	put(0xF0, 1<<8|0xFF)                       // software-enabled
	put(lvtt, timerTSCDeadline<<17|1<<16|0xEC) // TSC-deadline, masked, vector 0xEC
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	now := []kvm.MSREntry{{Index: msrTSC}}
	if err := v.GetMSRs(now); err != nil {
		t.Fatal(err)
	}
	// Far ahead, but not so far that KVM's conversion to nanoseconds
	// (cycles x 10^6 / kHz, in 64 bits) overflows into "due".
	deadline := now[0].Data + 1<<40
	if err := v.SetMSRs([]kvm.MSREntry{{Index: msrTSCDeadline, Data: deadline}}); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(describeVCPU(0, v, nil), "\n")
	for _, want := range []string{"timer=tsc-deadline masked vector=0xec", fmt.Sprintf("vcpu 0: tsc-deadline=%d in ", deadline)} {
		if !strings.Contains(out, want) {
			t.Errorf("dump lacks %q:\n%s", want, out)
		}
	}
}
