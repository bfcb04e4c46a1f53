package e2e

import (
	"fmt"
	"io"
	"regexp"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestPinning: VMs pinned to host CPUs (pin:) have each vCPU thread on
// its CPU and every other thread on the emulator CPUs, as the kernel
// reports them (/proc/<pid>/task/*/status, through the console's "qos
// <vm>"); two spinning VMs pinned to one CPU with cpu weights 100 and 300
// share it 25 / 75 % (± 5 points), measured from their groups' cpu.stat
// over 10 s of the appliance's clock.
func TestPinning(t *testing.T) {
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "vms:\n"+
			loadVM("light", "spin", 1, "192M", "    qos: {cpu: {weight: 100}}\n    pin: {vcpus: [1], emulator: [1]}\n", "hyperroot.spin=0")+
			loadVM("heavy", "spin", 1, "192M", "    qos: {cpu: {weight: 300}}\n    pin: {vcpus: [1], emulator: [1]}\n", "hyperroot.spin=0")+
			loadVM("pair", "echo", 2, "192M", "    pin: {vcpus: [1, 0], emulator: [0]}\n"))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr})
		query := func(name string) string { l, _, _ := qosUsage(t, m, pw, name); return l }

		// All three up (in any order), spinning until told.
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)

		// Where the kernel lets each thread run.
		line := query("pair")
		if !regexp.MustCompile(` affinity other=0 vcpu0=1 vcpu1=0$`).MatchString(line) {
			t.Errorf("pair's threads: %q, want vcpu0 on CPU 1, vcpu1 on 0, the rest on 0", line)
		}
		fmt.Fprintln(pw, "@pair poweroff")
		// Its vCPU 0 shares CPU 1 until it is gone.
		expect(t, m, `hyperroot: vm pair exited code=0 reason=poweroff$`)

		// Their shares of CPU 1 follow their weights.
		line = query("light")
		if !regexp.MustCompile(` affinity other=1 vcpu0=1$`).MatchString(line) {
			t.Errorf("light's threads: %q, want all on CPU 1", line)
		}
		r := cpuRates(t, m, pw, "light", "heavy")
		light, heavy := r[0], r[1]
		// Shares of what the CPU gave the two: an emulated appliance on a
		// busy host does not get a whole CPU.
		share := light / (light + heavy)
		t.Logf("on one CPU: weight 100 used %.3f, weight 300 used %.3f: %.1f%% / %.1f%%",
			light, heavy, share*100, 100-share*100)
		if share < 0.20 || share > 0.30 {
			t.Errorf("weights 100/300 on one CPU got %.1f%% / %.1f%%, want 25 / 75 ± 5", share*100, 100-share*100)
		}
		fmt.Fprintln(pw, "@light stop")
		fmt.Fprintln(pw, "@heavy stop")
		mustPass(t, m.Wait())
	})
}
