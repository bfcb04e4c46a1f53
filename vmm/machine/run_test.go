package machine

import (
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/vmm/devices/power"
	"github.com/hyperroot/hyperroot/vmm/kvm"
	"github.com/hyperroot/hyperroot/vmm/layout"
	"github.com/hyperroot/hyperroot/vmm/memory"
)

// poweroffCode is real-mode code that enters ACPI S5 through the sleep
// control register (SLP_TYP 5, SLP_EN), then halts for good.
var poweroffCode = []byte{
	0xBA, layout.SleepCtlPort & 0xFF, layout.SleepCtlPort >> 8, // mov dx, SleepCtlPort
	0xB0, layout.PowerOffSlpTy<<2 | 1<<5, // mov al, SLP_TYP=5 | SLP_EN
	0xEE,       // out dx, al
	0xF4,       // hlt
	0xEB, 0xFD, // jmp hlt
}

const tinyCodeAddr = 0x1000

// tinyMachine is a Machine without New: cpus vCPUs in real mode at
// tinyCodeAddr running code, and only the sleep registers on the port bus.
// There is no irqchip, so every vCPU runs at once (no INIT/SIPI wait) and
// HLT exits to the run loop.
func tinyMachine(t *testing.T, cpus int, code []byte) *Machine {
	t.Helper()
	testenv.NeedKVM(t)
	m := &Machine{}
	t.Cleanup(func() { m.Close() })
	var err error
	if m.sys, err = kvm.Open(); err != nil {
		t.Fatal(err)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.SetIdentityMapAddr(identityAddr); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.SetTSSAddr(tssAddr); err != nil {
		t.Fatal(err)
	}
	if m.mem, err = memory.New(1<<20, memory.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.mem.Register(m.vm, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.mem.WriteAt(code, tinyCodeAddr); err != nil {
		t.Fatal(err)
	}
	sleep := power.NewSleep(func() { m.stop(Result{ExitPoweroff, "guest powered off (ACPI S5)"}) })
	if err := m.pio.Insert(sleep, layout.SleepCtlPort, power.SleepSize); err != nil {
		t.Fatal(err)
	}
	for i := range cpus {
		v, err := m.vm.CreateVCPU(i)
		if err != nil {
			t.Fatal(err)
		}
		m.vcpus = append(m.vcpus, v)
		s, err := v.Sregs()
		if err != nil {
			t.Fatal(err)
		}
		s.CS.Base, s.CS.Selector = 0, 0
		if err := v.SetSregs(s); err != nil {
			t.Fatal(err)
		}
		if err := v.SetRegs(kvm.Regs{RIP: tinyCodeAddr, RFLAGS: 2, RSP: 0x8000}); err != nil {
			t.Fatal(err)
		}
	}
	m.tids = make([]int, cpus)
	m.stats.open(m.vm, m.vcpus)
	return m
}

// runWithin runs m and fails the test if Run does not return in time: a
// vCPU goroutine that never leaves is a hang, not a slow test.
func runWithin(t *testing.T, m *Machine, d time.Duration) Result {
	t.Helper()
	done := make(chan Result, 1)
	go func() { done <- m.Run() }()
	select {
	case r := <-done:
		return r
	case <-time.After(d):
		m.Stop()
		t.Fatalf("Run did not return within %s", d)
		return Result{}
	}
}

// TestRunEnds checks that Run returns, with the first reason, however the
// machine is stopped: by Stop before any vCPU goroutine started (which used
// to index the cleared tids slice and panic: the same path a vCPU whose
// goroutine starts after another vCPU's guest already powered off takes),
// or by the guest itself on one or several vCPUs at once.
func TestRunEnds(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cpus      int
		stopFirst bool
		rounds    int
		want      Exit
	}{
		{"stop before run, 1 vCPU", 1, true, 1, ExitStopped},
		{"stop before run, 4 vCPUs", 4, true, 1, ExitStopped},
		{"guest poweroff, 1 vCPU", 1, false, 1, ExitPoweroff},
		// Every vCPU powers off at once: the first stop must end them all,
		// including the goroutines that had not started yet.
		{"guest poweroff, 4 vCPUs", 4, false, 8, ExitPoweroff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range tc.rounds {
				m := tinyMachine(t, tc.cpus, poweroffCode)
				if tc.stopFirst {
					m.Stop()
				}
				r := runWithin(t, m, 20*time.Second)
				if r.Exit != tc.want {
					t.Fatalf("Run = %v (%s), want %v", r.Exit, r.Detail, tc.want)
				}
				if !m.stopping() {
					t.Fatal("Run returned but the machine is not stopping")
				}
			}
		})
	}
}
