package seccomp

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/bus"
	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/memory"
)

// BenchmarkIOExit measures what the filters cost the hottest path a VMM
// has, a guest's port write through the Go run loop (KVM_RUN, exit
// decoding, bus dispatch; vmm/kvm BenchmarkIOExitBus): every KVM_RUN of
// a vCPU thread passes both filters. A filter cannot be unloaded, so each
// side runs in a child of its own, without filters and with both (Kill
// mode), alternating, 5 rounds of ioExitsPerChild exits each side (b.N
// does not scale them: run it with -benchtime 1x); the metrics are the
// medians per exit and their ratio (filtered / unfiltered), and the ratio
// of the fastest rounds (on a shared machine, interference only adds time).
func BenchmarkIOExit(b *testing.B) {
	testenv.NeedKVM(b)
	var off, on []float64
	for round := 0; round < 5; round++ {
		off = append(off, ioExitChild(b, Off, ioExitsPerChild))
		on = append(on, ioExitChild(b, Kill, ioExitsPerChild))
		b.Logf("round %d: unfiltered %.0f ns/exit, filtered %.0f ns/exit", round, off[round], on[round])
	}
	b.ReportMetric(median(off), "unfiltered-ns/exit")
	b.ReportMetric(median(on), "filtered-ns/exit")
	b.ReportMetric(median(on)/median(off), "ratio")
	b.ReportMetric(fastest(on)/fastest(off), "fastest-ratio")
}

// ioExitChild runs n port-write exits in a child with the filters of mode
// and returns the time per exit.
func ioExitChild(b *testing.B, m Mode, n int) float64 {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=ioexit:%s:%d", childEnv, m, n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("child (%s): %v: %s", m, err, stderr.String())
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(string(out), "ns ")), 64)
	if err != nil {
		b.Fatalf("child (%s) said %q", m, out)
	}
	return ns / float64(n)
}

// ioExitsPerChild is enough exits for a stable time per exit both on a
// host's KVM (~9 µs each: 0.1 s) and nested under TCG in the appliance
// (~75 µs: under a second).
const ioExitsPerChild = 10000

func fastest(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[0]
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// ioLoopGuest writes to port 0x540 for ever (real mode, at ioLoopAddr).
var ioLoopGuest = []byte{
	0xba, 0x40, 0x05, // mov $0x540, %dx
	0xee,       // 1: out %al, (%dx)
	0xeb, 0xfd, // jmp 1b
}

const ioLoopAddr = 0x1000

type portCounter struct{ n int }

func (c *portCounter) Read(uint64, []byte)  {}
func (c *portCounter) Write(uint64, []byte) { c.n++ }

// runIOExits is the child's side of BenchmarkIOExit: it builds the guest,
// loads the filters of mode (the vCPU's on the thread that runs it, as
// vmm/machine does), runs n exits after a warm-up and prints the time
// they took in nanoseconds.
func runIOExits(mode Mode, n int) error {
	sys, err := kvm.Open()
	if err != nil {
		return err
	}
	vm, err := sys.CreateVM()
	if err != nil {
		return err
	}
	if err := vm.SetIdentityMapAddr(0xFFFB_C000); err != nil {
		return err
	}
	if err := vm.SetTSSAddr(0xFFFB_D000); err != nil {
		return err
	}
	mem, err := memory.New(2<<20, memory.Options{})
	if err != nil {
		return err
	}
	if _, err := mem.Register(vm, 0); err != nil {
		return err
	}
	if err := mem.WriteAt(ioLoopGuest, ioLoopAddr); err != nil {
		return err
	}
	v, err := vm.CreateVCPU(0)
	if err != nil {
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		return err
	}
	if err := v.SetRegs(kvm.Regs{RIP: ioLoopAddr, RFLAGS: 2}); err != nil {
		return err
	}
	var pio, mmio bus.Bus
	var dev portCounter
	if err := pio.Insert(&dev, 0x540, 1); err != nil {
		return err
	}
	exits := func(n int) error {
		for i := 0; i < n; i++ {
			for {
				exit, err := v.Run()
				if err != nil {
					return err
				}
				if v.Dispatch(exit, &pio, &mmio) {
					break
				}
				if exit != kvm.ExitIntr { // the runtime's signals land here
					return fmt.Errorf("unexpected exit %v", exit)
				}
			}
		}
		return nil
	}
	return timeFiltered(mode, 1000, n, exits)
}

// BenchmarkKVMRunCall measures what the filters add to the KVM_RUN system
// call itself, on any host (no KVM: the call is made on no descriptor and
// fails with EBADF once it has passed the filters): the same loop in a
// child without filters and in one with both (a vCPU thread's), 5
// alternating rounds of kvmRunCallsPerChild calls; the filters' cost is
// the difference of the fastest rounds (interference only adds time). Added to an exit round
// trip measured on a real KVM (vmm/kvm BenchmarkIOExitBus), it gives the
// filters' share of it where the nested appliance is too noisy to tell.
func BenchmarkKVMRunCall(b *testing.B) {
	needSeccomp(b)
	var off, on []float64
	for round := 0; round < 5; round++ {
		off = append(off, kvmRunCallChild(b, Off))
		on = append(on, kvmRunCallChild(b, Kill))
		b.Logf("round %d: unfiltered %.1f ns/call, filtered %.1f ns/call", round, off[round], on[round])
	}
	b.ReportMetric(median(off), "unfiltered-ns/call")
	b.ReportMetric(median(on), "filtered-ns/call")
	b.ReportMetric(fastest(on)-fastest(off), "filter-ns/call")
}

const kvmRunCallsPerChild = 100000

func kvmRunCallChild(b *testing.B, m Mode) float64 {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=kvmrun:%s:%d", childEnv, m, kvmRunCallsPerChild))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("child (%s): %v: %s", m, err, stderr.String())
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(string(out), "ns ")), 64)
	if err != nil {
		b.Fatalf("child (%s) said %q", m, out)
	}
	return ns / kvmRunCallsPerChild
}

// runKVMRunCalls is the child's side of BenchmarkKVMRunCall.
func runKVMRunCalls(mode Mode, n int) error {
	calls := func(n int) error {
		for i := 0; i < n; i++ {
			if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ^uintptr(0), kvm0xae80, 0); e != syscall.EBADF {
				return fmt.Errorf("KVM_RUN on no descriptor: %v", e)
			}
		}
		return nil
	}
	return timeFiltered(mode, n/10, n, calls)
}

// timeFiltered is a benchmark child's timing: the process filter of mode
// loaded, then, on a locked thread under the vCPU thread's filter as well,
// loop run warm times and then n times, timed; it prints "ns <total>".
func timeFiltered(mode Mode, warm, n int, loop func(n int) error) error {
	if err := Process(mode); err != nil {
		return err
	}
	errc := make(chan error, 1)
	var took time.Duration
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := VCPUThread(mode); err != nil {
			errc <- err
			return
		}
		if err := loop(warm); err != nil {
			errc <- err
			return
		}
		start := time.Now()
		err := loop(n)
		took = time.Since(start)
		errc <- err
	}()
	if err := <-errc; err != nil {
		return err
	}
	fmt.Printf("ns %d\n", took.Nanoseconds())
	return nil
}
