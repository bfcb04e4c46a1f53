package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

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
		vm := func(name, action string, cpus int, extra string, cmdline ...string) string {
			s := netVM(name, action, nil, cmdline...)
			s = regexp.MustCompile(`    nics:\n`).ReplaceAllString(s, "")
			s = regexp.MustCompile(`cpus: 1`).ReplaceAllString(s, "cpus: "+strconv.Itoa(cpus))
			return s + extra
		}
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(cfg, []byte("vms:\n"+
			vm("light", "spin", 1, "    qos: {cpu: {weight: 100}}\n    pin: {vcpus: [1], emulator: [1]}\n", "hyperroot.spin=0")+
			vm("heavy", "spin", 1, "    qos: {cpu: {weight: 300}}\n    pin: {vcpus: [1], emulator: [1]}\n", "hyperroot.spin=0")+
			vm("pair", "echo", 2, "    pin: {vcpus: [1, 0], emulator: [0]}\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr})
		stampRE := regexp.MustCompile(`^\[\s*([0-9.]+)\] hyperroot: qos (\S+) cpu\.usage=([0-9.]+)s`)
		query := func(name string) (line string, at, used float64) {
			fmt.Fprintln(pw, "qos "+name)
			line = expect(t, m, `hyperroot: qos `+name+` cpu\.usage=`)
			s := stampRE.FindStringSubmatch(line)
			if s == nil {
				t.Fatalf("cannot read time and usage from %q", line)
			}
			at, _ = strconv.ParseFloat(s[1], 64)
			used, _ = strconv.ParseFloat(s[3], 64)
			return line, at, used
		}

		// All three up (in any order), spinning until told.
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)
		expect(t, m, `^(light\| guest: spin start|heavy\| guest: spin start|pair\| guest: action echo)`)

		// Where the kernel lets each thread run.
		line, _, _ := query("pair")
		if !regexp.MustCompile(` affinity other=0 vcpu0=1 vcpu1=0$`).MatchString(line) {
			t.Errorf("pair's threads: %q, want vcpu0 on CPU 1, vcpu1 on 0, the rest on 0", line)
		}
		fmt.Fprintln(pw, "@pair poweroff")
		// Its vCPU 0 shares CPU 1 until it is gone.
		expect(t, m, `hyperroot: vm pair exited code=0 reason=poweroff$`)

		// Their shares of CPU 1 follow their weights.
		line, _, _ = query("light")
		if !regexp.MustCompile(` affinity other=1 vcpu0=1$`).MatchString(line) {
			t.Errorf("light's threads: %q, want all on CPU 1", line)
		}
		_, lt0, lu0 := query("light")
		_, ht0, hu0 := query("heavy")
		time.Sleep(10 * time.Second)
		_, lt1, lu1 := query("light")
		_, ht1, hu1 := query("heavy")
		for lt1-lt0 < 10 || ht1-ht0 < 10 {
			time.Sleep(time.Second)
			_, lt1, lu1 = query("light")
			_, ht1, hu1 = query("heavy")
		}
		light, heavy := (lu1-lu0)/(lt1-lt0), (hu1-hu0)/(ht1-ht0)
		// Shares of what the CPU gave the two: an emulated appliance on a
		// busy host does not get a whole CPU.
		share := light / (light + heavy)
		t.Logf("on one CPU: weight 100 used %.3f, weight 300 used %.3f (over %.1f s): %.1f%% / %.1f%%",
			light, heavy, lt1-lt0, share*100, 100-share*100)
		if share < 0.20 || share > 0.30 {
			t.Errorf("weights 100/300 on one CPU got %.1f%% / %.1f%%, want 25 / 75 ± 5", share*100, 100-share*100)
		}
		fmt.Fprintln(pw, "@light stop")
		fmt.Fprintln(pw, "@heavy stop")
		r := m.Wait()
		mustPass(t, r)
	})
}
