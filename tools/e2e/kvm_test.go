package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
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
	base := filepath.Join(overlay, "kvmtests")
	var manifest strings.Builder
	build := func(args ...string) {
		t.Helper()
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		// The appliance's CPU model lacks the v2/v3 features.
		cmd.Env = append(os.Environ(), "GOAMD64=v1", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	build("build", "-o", filepath.Join(base, "kvmtest"), "./tools/kvmtest")
	for _, p := range pkgs {
		if len(p.Tests) == 0 {
			continue
		}
		dir := filepath.Join(base, filepath.FromSlash(p.Dir))
		build("test", "-c", "-o", filepath.Join(dir, "pkg.test"), "./"+p.Dir)
		if err := copyTree(filepath.Join(root, filepath.FromSlash(p.Dir), "testdata"), filepath.Join(dir, "testdata")); err != nil {
			t.Fatal(err)
		}
		// HYPERROOT_IMAGE: the tests that need a Linux kernel take the
		// test guest's, which the image carries in /guest.
		fmt.Fprintf(&manifest, "%s HYPERROOT_IMAGE=/guest -test.v -test.count=1 -test.timeout=20m -test.run %s\n", p.Dir, p.RunRegexp())
	}
	if err := os.WriteFile(filepath.Join(base, "manifest"), []byte(manifest.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("vms: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := start(t, qemu.Options{Config: cfg, Overlay: overlay, Oneshot: true,
		Append: "hyperroot.run=/kvmtests/kvmtest,run,/kvmtests/manifest"})
	r := m.Wait()
	out := runOutput(r.Lines)
	for _, p := range pkgs {
		if len(p.Tests) == 0 {
			continue
		}
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

// copyTree copies the regular files under src (if it exists) to dst.
func copyTree(src, dst string) error {
	if _, err := os.Stat(src); os.IsNotExist(err) {
		return nil
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
}
