package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestDataDisk: an empty disk named in the configuration with format:
// if-empty is partitioned and formatted at the first boot and mounted on
// /var/lib/hyperroot; a VM's disk named by a relative path is made there,
// and the guest writes to it; a configuration applied through the API is
// kept there. The second boot, whose image holds another configuration,
// finds the disk by its label, boots the applied configuration, and the
// guest reads back what it wrote; the API's certificate is the one made at
// the first boot, and the DHCP lease of a VM is in force again. Power lost
// right after a configuration was kept: the next boot has it. A disk that holds something is never formatted. The
// host's e2fsck finds the filesystem clean after both boots.
func TestDataDisk(t *testing.T) {
	parallel(t)
	const seed = 4242
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 256<<20); err != nil {
		t.Fatal(err)
	}
	api := newRemoteAPI(t)
	want := sha(fileContent(seed, "raw", 1<<20))
	vm := func(action string) string {
		return diskVM("keep", 1, "128M", action, seed, []string{"{path: vms/keep.img, size: 16M}"})
	}
	// A VM on a network, whose lease the switch keeps.
	head := "data: {device: /dev/vda, format: if-empty}\n" + api.config() + "networks:\n" + lanNet + "vms:\n" +
		netVM("dhcp", "net-dhcp", []string{"{network: lan}"})
	var pin, lease string
	testbed(t, func(t testing.TB) {
		cfg := configFile(t, head+vm("disk-raw-write"))
		m := start(t, api.options(qemu.Options{Config: cfg, Drives: []string{data}}))
		expect(t, m, `hyperroot: data: /dev/vda has no filesystem labelled hyperroot-data: formatting it if it is empty \(GPT, one partition, ext4\)$`)
		expect(t, m, `hyperroot: data: /dev/vda1 formatted in `)
		expect(t, m, `hyperroot: data: /dev/vda1 \(named in the configuration\) mounted on /var/lib/hyperroot$`)
		api.connect(t, m)
		pin = api.pin
		if got := expect(t, m, `^keep\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, want) {
			t.Fatalf("the guest wrote %q, want sha256 %s", got, want)
		}
		expect(t, m, `hyperroot: vm keep exited code=0`)
		lease = strings.TrimSpace(seen(t, m, `switch\| lease network=lan ip=10\.20\.0\.1\d\d mac=\S+ port=dhcp\.0$`))
		lease = lease[strings.Index(lease, "ip="):]
		seen(t, m, `hyperroot: vm dhcp exited code=0`)
		// The same VM, now reading: applied through the API, and kept.
		next := filepath.Join(t.TempDir(), "next.yaml")
		write(t, next, head+vm("disk-raw-read"))
		if out := api.must(t, "config", "apply", "-f", next); out != "config applied: restarted keep unchanged dhcp\n" {
			t.Errorf("config apply: %q", out)
		}
		seen(t, m, `hyperroot: config: kept on the data disk for the next boot \(/var/lib/hyperroot/config\.yaml\)$`)
		if got := expect(t, m, `^keep\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, want) {
			t.Errorf("the guest read %q, want sha256 %s", got, want)
		}
		powerButton(t, m)
	})
	checkExt4(t, data)

	testbed(t, func(t testing.TB) {
		// The image's own configuration has no VMs: the data disk's wins.
		cfg := configFile(t, api.config()+"vms: []\n")
		m := start(t, api.options(qemu.Options{Config: cfg, Drives: []string{data}}))
		expect(t, m, `hyperroot: data: /dev/vda1 \(labelled hyperroot-data\) mounted on /var/lib/hyperroot$`)
		expect(t, m, `hyperroot: config: /var/lib/hyperroot/config\.yaml \(the data disk's, last applied; 2 VMs, 1 networks\)$`)
		expect(t, m, `hyperroot: leases: 1 networks' leases restored from /var/lib/hyperroot/leases$`)
		api.connect(t, m)
		// The lease of the first boot is in force, and the guest gets
		// its address again.
		ip, mac, _ := strings.Cut(strings.TrimPrefix(lease, "ip="), " mac=")
		mac, _, _ = strings.Cut(mac, " ")
		if out := api.must(t, "leases"); !regexp.MustCompile(`(?m)^lan +` + regexp.QuoteMeta(ip) + ` +` + mac + ` +dhcp +`).MatchString(out) {
			t.Errorf("the first boot's lease (%s) is not in force:\n%s", lease, out)
		}
		if got := seen(t, m, `^dhcp\| guest: net lease ip=`); !strings.Contains(got, "ip="+ip+"/24 ") {
			t.Errorf("after the reboot the guest leased %q, want %s", got, ip)
		}
		if api.pin != pin {
			t.Errorf("the API's certificate changed across boots: %s, then %s", pin, api.pin)
		}
		if hasLine(m.Lines(), `certificate .* \(made now`) {
			t.Errorf("the second boot made a new certificate")
		}
		if got := expect(t, m, `^keep\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, want) {
			t.Errorf("after a reboot the guest read %q, want sha256 %s", got, want)
		}
		expect(t, m, `hyperroot: vm keep exited code=0`)
		// The power fails right after another configuration is kept.
		next := filepath.Join(t.TempDir(), "next.yaml")
		write(t, next, head+vm("echo"))
		if out := api.must(t, "config", "apply", "-f", next); out != "config applied: restarted keep unchanged dhcp\n" {
			t.Errorf("config apply: %q", out)
		}
		seen(t, m, `hyperroot: config: kept on the data disk for the next boot `)
		m.Kill()
	})

	testbed(t, func(t testing.TB) {
		// After the power loss: the disk mounts (its journal replayed)
		// and the configuration kept last is in force.
		m := start(t, qemu.Options{Config: configFile(t, "vms: []\n"), Drives: []string{data}})
		expect(t, m, `hyperroot: data: /dev/vda1 \(labelled hyperroot-data\) mounted on /var/lib/hyperroot$`)
		expect(t, m, `hyperroot: config: /var/lib/hyperroot/config\.yaml \(the data disk's, last applied; 2 VMs, 1 networks\)$`)
		expect(t, m, `^keep\| guest: action echo$`)
		powerButton(t, m)
	})
	checkExt4(t, data)

	// A disk with something on it is refused whole, and nothing is
	// mounted: the VM's relative disk is then in RAM.
	full := filepath.Join(t.TempDir(), "full.img")
	junk := make([]byte, 64<<20)
	copy(junk[4096:], "not empty")
	if err := os.WriteFile(full, junk, 0o644); err != nil {
		t.Fatal(err)
	}
	testbed(t, func(t testing.TB) {
		cfg := configFile(t, "data: {device: /dev/vda, format: if-empty}\nvms:\n"+vm("disk-raw-write"))
		m := start(t, qemu.Options{Config: cfg, Drives: []string{full}})
		expect(t, m, `hyperroot: data: /dev/vda has no filesystem labelled hyperroot-data: formatting it if it is empty`)
		expect(t, m, `hyperroot: error: data: data disk /dev/vda: holds data \(its first or last MiB is not all zeros\): not formatted`)
		expect(t, m, `^keep\| guest: raw sha256 `)
		powerButton(t, m)
	})
	if b, err := os.ReadFile(full); err != nil || string(b[4096:4105]) != "not empty" || len(b) != len(junk) {
		t.Errorf("the refused disk changed (%v)", err)
	}
}

// checkExt4 runs the host's e2fsck, read-only, on the data disk image's
// partition (from 1 MiB on).
func checkExt4(t *testing.T, img string) {
	t.Helper()
	e2fsck := testenv.NeedTool(t, "e2fsck", "e2fsprogs")
	part := filepath.Join(t.TempDir(), "part.img")
	if out, err := exec.Command("dd", "if="+img, "of="+part, "bs=1M", "skip=1", "conv=sparse", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	out, err := exec.Command(e2fsck, "-fn", part).CombinedOutput()
	if err != nil || !regexp.MustCompile(`hyperroot-data: \d+/\d+ files`).Match(out) {
		t.Errorf("e2fsck -fn of the data disk: %v\n%s", err, out)
	}
}
