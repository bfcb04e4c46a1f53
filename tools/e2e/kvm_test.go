package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/kvmtests"
	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestKVMInAppliance runs every test that needs /dev/kvm (found by
// internal/kvmtests: vmm/kvm, vmm/machine, init, ...) inside a oneshot
// appliance under QEMU, where KVM always works (nested under TCG on a host
// without hardware virtualisation). It is how those tests run on a machine
// whose host has no /dev/kvm, where `./build.sh test` leaves them out of the
// host's run; on a host with KVM they run in both places. Each test is a
// subtest here, package/name, with its output.
func TestKVMInAppliance(t *testing.T) {
	imageDir(t)
	goBin := testenv.NeedTool(t, "go", "golang")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := kvmtests.Find(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) == 0 {
		t.Fatal("no package with KVM tests found: internal/kvmtests lost them")
	}
	overlay := t.TempDir()
	staged, files, err := kvmtests.Stage(goBin, root, overlay, pkgs, kvmtests.Tests)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("vms: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := start(t, qemu.Options{Config: cfg, Overlay: overlay, Files: files, Oneshot: true,
		Append: "hyperroot.run=" + kvmtests.Command})
	r := m.Wait()
	out := runOutput(r.Lines)
	for _, p := range staged {
		t.Run(p.Dir, func(t *testing.T) { checkPackage(t, p, out) })
	}
	if !hasLine(r.Lines, `run\| kvmtest: done packages=\d+ failed=0$`) {
		t.Errorf("the appliance's test run did not finish cleanly")
	}
	if !r.OK() {
		t.Errorf("appliance: %s", r.Why())
	}
}

// runOutput returns the lines of the appliance's hyperroot.run job.
func runOutput(lines []string) []string {
	var out []string
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "run| "); ok {
			out = append(out, rest)
		}
	}
	return out
}

var testResultRE = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(`)

// checkPackage reports each of p's KVM tests as a subtest, from its
// package's section of the run's output.
func checkPackage(t *testing.T, p kvmtests.Package, out []string) {
	var section []string
	in, ended := false, ""
	for _, l := range out {
		switch {
		case l == "kvmtest: start "+p.Dir:
			in = true
		case in && strings.HasPrefix(l, "kvmtest: end "+p.Dir+" "):
			in, ended = false, l
		case in:
			section = append(section, l)
		}
	}
	if ended == "" {
		t.Fatalf("the appliance never finished running %s's tests (%d lines of output)", p.Dir, len(section))
	}
	results := map[string]string{}
	for _, l := range section {
		if m := testResultRE.FindStringSubmatch(l); m != nil {
			results[m[2]] = m[1]
		}
	}
	for _, name := range p.Tests {
		t.Run(name, func(t *testing.T) {
			var own []string
			for _, l := range section {
				if strings.Contains(l, name) || strings.HasPrefix(l, "    ") {
					own = append(own, l)
				}
			}
			switch results[name] {
			case "PASS":
				t.Logf("passed in the appliance")
			case "SKIP":
				t.Errorf("skipped in the appliance, which must have everything it needs:\n%s", strings.Join(own, "\n"))
			case "FAIL":
				t.Errorf("failed in the appliance:\n%s", strings.Join(section, "\n"))
			default:
				t.Errorf("no result in the appliance's output (%s)", ended)
			}
		})
	}
	if !strings.Contains(ended, " ok ") {
		t.Errorf("%s", ended)
	}
}
