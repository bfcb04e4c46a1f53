package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// The resource-control tests (qos_test.go, pin_test.go, hugepages_test.go)
// boot test guests without NICs that load what a limit controls (the spin
// and fill actions, image/guest/load.go) and read the VMs' cgroups through
// the console's "qos <vm>" command.

// loadVM is a configuration entry for the test guest: vCPUs, RAM, extra
// lines of YAML under the VM (each "    key: value\n") and kernel
// arguments after hyperroot.guest=<action>.
func loadVM(name, action string, cpus int, mem, extra string, cmdline ...string) string {
	return fmt.Sprintf(`  - name: %s
    cpus: %d
    memory: %s
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 panic=-1 quiet hyperroot.guest=%s %s
    restart: never
%s`, name, cpus, mem, action, strings.Join(cmdline, " "), extra)
}

var qosLineRE = regexp.MustCompile(`^\[\s*([0-9.]+)\] hyperroot: qos (\S+) cpu\.usage=([0-9.]+)s`)

// spinOnCue are the kernel arguments of a spin guest that idles until
// startSpinner cues it, then spins until its next console line: spinning
// from boot would take a host core from its neighbours for minutes.
const spinOnCue = "hyperroot.spin=0 hyperroot.spinwait=1"

// startSpinner cues the spinOnCue guest name, once it waits, through the
// appliance's console in, and returns when it spins.
func startSpinner(t testing.TB, m *qemu.Machine, in io.Writer, name string) {
	t.Helper()
	seen(t, m, `^`+name+`\| guest: spin waiting$`)
	fmt.Fprintf(in, "@%s go\n", name)
	expect(t, m, `^`+name+`\| guest: spin start `)
}

// qosUsage types "qos <name>" and returns the answer, its time stamp on
// the appliance's clock and the CPU time the VM's cgroup used, in seconds.
func qosUsage(t testing.TB, m *qemu.Machine, in io.Writer, name string) (line string, at, used float64) {
	t.Helper()
	fmt.Fprintln(in, "qos "+name)
	line = expect(t, m, `hyperroot: qos `+regexp.QuoteMeta(name)+` cpu\.usage=`)
	s := qosLineRE.FindStringSubmatch(line)
	if s == nil {
		t.Fatalf("cannot read time and usage from %q", line)
	}
	at, _ = strconv.ParseFloat(s[1], 64)
	used, _ = strconv.ParseFloat(s[3], 64)
	return line, at, used
}

// cpuRates measures each VM's CPU use, in CPUs, over at least 10 s of the
// appliance's clock (not ours: an emulated appliance's time may pass
// slower or faster than the host's).
func cpuRates(t testing.TB, m *qemu.Machine, in io.Writer, names ...string) []float64 {
	t.Helper()
	at0, used0 := make([]float64, len(names)), make([]float64, len(names))
	for i, n := range names {
		_, at0[i], used0[i] = qosUsage(t, m, in, n)
	}
	time.Sleep(10 * time.Second)
	rates := make([]float64, len(names))
	for i, n := range names {
		var at, used float64
		for {
			_, at, used = qosUsage(t, m, in, n)
			if at-at0[i] >= 10 {
				break
			}
			time.Sleep(time.Second)
		}
		rates[i] = (used - used0[i]) / (at - at0[i])
	}
	return rates
}

// configFile writes a configuration for the appliance and returns its path.
func configFile(t testing.TB, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
