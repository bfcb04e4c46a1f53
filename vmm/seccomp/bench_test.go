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
// mode), alternating, 3 rounds; the metrics are the medians per exit and
// their ratio (filtered / unfiltered).
func BenchmarkIOExit(b *testing.B) {
	testenv.NeedKVM(b)
	var off, on []float64
	for round := 0; round < 3; round++ {
		off = append(off, ioExitChild(b, Off, b.N))
		on = append(on, ioExitChild(b, Kill, b.N))
	}
	b.ReportMetric(median(off), "unfiltered-ns/exit")
	b.ReportMetric(median(on), "filtered-ns/exit")
	b.ReportMetric(median(on)/median(off), "ratio")
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
		if err := exits(1000); err != nil { // warm-up
			errc <- err
			return
		}
		start := time.Now()
		err := exits(n)
		took = time.Since(start)
		errc <- err
	}()
	if err := <-errc; err != nil {
		return err
	}
	fmt.Printf("ns %d\n", took.Nanoseconds())
	return nil
}
