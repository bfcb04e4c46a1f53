package e2e

import (
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestQcow2Clones: two VMs whose disks are thin qcow2 clones of one base
// image on the data disk, made by the appliance on first use. Each guest
// reads the base's first MiB through its clone, writes its own, and after
// a power-off and a new boot of the appliance reads its own back; then on
// the host, qemu-img finds every image clean, each clone holds its own
// data only, and the base is unchanged.
func TestQcow2Clones(t *testing.T) {
	parallel(t)
	testenv.NeedTool(t, "qemu-img", "qemu-utils")
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	testenv.NeedTool(t, "debugfs", "e2fsprogs")
	const baseSeed, size = 31, 64 << 20
	dir := t.TempDir()
	raw := make([]byte, size)
	copy(raw, fileContent(baseSeed, "raw", 1<<20))
	rand.NewChaCha8([32]byte{31}).Read(raw[1<<20 : 8<<20]) // the rest is sparse
	rawPath := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "bases"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(tree, "bases", "base.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, base)
	baseSum := fileSHA(t, base)
	data := filepath.Join(dir, "data.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", "-d", tree, data, "256M")

	cfg := func(action string) string {
		vm := func(name string, seed int) string {
			return diskVM(name, 1, "128M", action, seed, []string{"{path: vms/" + name + ".qcow2, base: bases/base.qcow2}"})
		}
		return "vms:\n" + vm("one", 11) + vm("two", 22)
	}
	baseHead := sha(raw[:1<<20])
	testbed(t, func(t testing.TB) {
		m := start(t, qemu.Options{Drives: []string{data}, Config: configFile(t, cfg("disk-raw-read,disk-raw-write"))})
		expect(t, m, `hyperroot: data: /dev/vda \(labelled hyperroot-data\) mounted on /var/lib/hyperroot$`)
		for _, vm := range []string{"one", "two"} {
			seen(t, m, `^`+vm+`\| hyperroot vmm: disk 0: qcow2 on `)
			// Its first read is the base's; then what it wrote.
			if got := seen(t, m, `^`+vm+`\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, baseHead) {
				t.Errorf("%s read %q through its new clone, want the base's %s", vm, got, baseHead)
			}
		}
		for _, vm := range []string{"one", "two"} {
			seen(t, m, `hyperroot: vm `+vm+` exited code=0 reason=poweroff`)
		}
		powerButton(t, m)
	})
	want := map[string]string{"one": sha(fileContent(11, "raw", 1<<20)), "two": sha(fileContent(22, "raw", 1<<20))}
	testbed(t, func(t testing.TB) {
		m := start(t, qemu.Options{Drives: []string{data}, Config: configFile(t, cfg("disk-raw-read"))})
		for vm, sum := range want {
			if got := seen(t, m, `^`+vm+`\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, sum) {
				t.Errorf("%s read %q after a reboot, want what it wrote: %s", vm, got, sum)
			}
		}
		for vm := range want {
			seen(t, m, `hyperroot: vm `+vm+` exited code=0 reason=poweroff`)
		}
		powerButton(t, m)
	})
	// On the host: every image clean, each clone its own, the base as it was.
	out := filepath.Join(dir, "out")
	for _, name := range []string{"bases/base.qcow2", "vms/one.qcow2", "vms/two.qcow2"} {
		p := filepath.Join(out, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, debugfsCat(t, data, name), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "qemu-img", "check", p)
	}
	if got := fileSHA(t, filepath.Join(out, "bases", "base.qcow2")); got != baseSum {
		t.Errorf("the base changed: sha256 %s, was %s", got, baseSum)
	}
	// Each clone, read through its base (named relative to the clone).
	for vm, sum := range want {
		clone := filepath.Join(out, "vms", vm+".qcow2")
		info := run(t, "qemu-img", "info", clone)
		if !strings.Contains(info, "backing file: ../bases/base.qcow2") {
			t.Errorf("%s: qemu-img info does not show the base as its backing file:\n%s", vm, info)
		}
		flat := filepath.Join(out, vm+".raw")
		run(t, "qemu-img", "convert", "-O", "raw", clone, flat)
		b, err := os.ReadFile(flat)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != size || sha(b[:1<<20]) != sum || sha(b[1<<20:]) != sha(raw[1<<20:]) {
			t.Errorf("%s: the clone's content is not its own first MiB over the base's rest", vm)
		}
	}
}

// run runs a host tool and returns its output, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestQcow2Kill: a VM churns its thin clone (writes of 4-64 KiB all over
// the disk, nearly each allocating a cluster, discards, a flush each
// round) while its VMM is SIGKILLed three times, each in the middle of a
// round (tools/e2e/vmkill, as an OOM kill or an operator's kill -9
// would). The supervisor restarts it each time, and each new VMM gives
// back what the kill leaked. After the appliance has powered off,
// qemu-img check finds the clone clean.
func TestQcow2Kill(t *testing.T) {
	parallel(t)
	testenv.NeedTool(t, "qemu-img", "qemu-utils")
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	testenv.NeedTool(t, "debugfs", "e2fsprogs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "bases"), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(tree, "bases", "base.qcow2"), "256M")
	data := filepath.Join(dir, "data.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hyperroot-data", "-d", tree, data, "1G")
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "vmkill", "vmkill"), "./vmkill")
	vm := diskVM("churn", 1, "128M", "disk-churn", 5, []string{"{path: vms/churn.qcow2, base: bases/base.qcow2}"})
	cfg := "vms:\n" + strings.Replace(vm, "restart: never", "restart: on-failure", 1)
	const kills = 3
	var given []string
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		m := start(t, qemu.Options{Drives: []string{data}, Config: configFile(t, cfg), Overlay: overlay,
			Append: "hyperroot.run=/vmkill/vmkill", Stdin: pr})
		for kill := 1; kill <= kills; kill++ {
			// This start's second round is flushed: the kill lands in
			// its third.
			nth(t, m, `^churn\| guest: churn round 2 flushed$`, kill)
			if _, err := io.WriteString(pw, "@run churn\n"); err != nil {
				t.Fatal(err)
			}
			nth(t, m, `^run\| vmkill: vm churn pid=\d+ killed$`, kill)
			nth(t, m, `hyperroot: vm churn exited code=137 reason=killed signal=SIGKILL$`, kill)
		}
		// The last start opened what the last kill left, and wrote on.
		nth(t, m, `^churn\| guest: churn round 2 flushed$`, kills+1)
		given = nil
		for _, l := range m.Lines() {
			if strings.Contains(l, "leaked clusters given back") {
				given = append(given, l)
			}
		}
		powerButton(t, m)
	})
	t.Logf("the VMM's opens after the kills: %q", given)
	// The clone beside its base, as on the data disk: qemu-img opens both.
	out := filepath.Join(dir, "out")
	for _, name := range []string{"vms/churn.qcow2", "bases/base.qcow2"} {
		p := filepath.Join(out, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, debugfsCat(t, data, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Log(run(t, "qemu-img", "check", filepath.Join(out, "vms", "churn.qcow2")))
}
