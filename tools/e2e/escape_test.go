package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestEscape is the escape suite: attacker code that runs in a VMM exactly
// as a guest that took its VMM over would (init/escape.go, compiled only
// into this test's build of hyperroot, which an overlay puts in place of
// the image's /bin/hyperroot) tries to reach beyond its VM while another
// VM, the victim, runs. Each attempt runs in a VMM of its own, at one of
// three stages of the VMM's start:
//
//   - setup: in its SELinux domain (svirt_t at its category pair) and its
//     namespaces, still root with every capability and the host's files
//     in view: SELinux is the only wall there, so what it denies (another
//     VM's disk by MCS, the appliance's files, sockets, exec, modules) is
//     shown to be its doing;
//   - jailed: in the jail (empty root, own uid, no capabilities, Landlock),
//     no seccomp yet;
//   - running: every wall up, where the guest would run.
//
// Every attempt must be denied; PID 1 of the test's build names the wall
// that said no on the console, and counts the attempts denied: the
// seccomp filter (the VMM is killed, reason=seccomp syscall=...), SELinux
// (an "avc: denied" line from that VMM's context), the namespaces (ENOENT,
// ESRCH: it cannot even name the target), capabilities (EPERM) or
// Landlock (EACCES without a SELinux denial where DAC allows the access).
// At set-up the attacker is root with CAP_DAC_OVERRIDE: file modes could
// not stop it there, whatever they are, so a denial there is SELinux's.
func TestEscape(t *testing.T) { parallel(t); escapeSuite(t, true) }

// TestEscapeWithoutSELinux is the escape suite on a kernel without
// SELinux (an lsm= list without it, as on a board whose kernel has none;
// Debian's kernel ignores selinux=0, built without its boot parameter;
// the last lsm= on the command line wins over the board's): the console
// says the jail alone holds each VMM, and it does: every attempt from the
// jail, before and after the seccomp filters, is denied. (At set-up, before
// the jail, SELinux is the only wall: those attempts are not made here.)
func TestEscapeWithoutSELinux(t *testing.T) { parallel(t); escapeSuite(t, false) }

func escapeSuite(t *testing.T, selinux bool) {
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "bin", "hyperroot"), "../../init", "-tags", "escape", "-trimpath", "-ldflags", "-s -w")
	// The victim's disk is a block device, as on hardware: /dev is a
	// directory any VMM may search, so that at set-up nothing but the
	// disk's own label stands between the attacker and it.
	const disk = "/dev/vda"
	img := filepath.Join(t.TempDir(), "victim.img")
	if err := os.WriteFile(img, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := vmmcli.NICSocket("/run/hyperroot/switch", "victim", 0)
	stages := map[string][]string{
		"setup":   {"disk", "disk-ro", "config", "mem", "inet", "netlink", "packet", "neighbour", "exec", "module"},
		"jailed":  {"disk", "disk-ro", "config", "kvm", "listdir", "mem", "inet", "netlink", "packet", "neighbour", "exec", "ptrace", "signal", "mount", "module", "capability", "setuid"},
		"running": {"disk", "disk-ro", "config", "kvm", "listdir", "mem", "inet", "netlink", "packet", "neighbour", "exec", "ptrace", "signal", "mount", "module", "capability", "setuid"},
	}
	opts := qemu.Options{Oneshot: true, Memory: "3G", Drives: []string{img}}
	mode := `hyperroot: selinux: enforcing `
	if !selinux {
		delete(stages, "setup")
		opts.Append = "lsm=landlock,lockdown,yama,integrity,bpf"
		mode = `hyperroot: selinux: off \(.*\): each VMM is held by its jail alone$`
	}
	// The victim first: its disk is labelled for it before it starts.
	vms := []string{loadVM("victim", "echo", 1, "128M",
		"    disks:\n      - {path: "+disk+"}\n    nics:\n      - {network: lan}\n")}
	var names []string
	for stage, list := range stages {
		for _, a := range list {
			name := "x-" + stage + "-" + a
			names = append(names, name)
			vms = append(vms, loadVM(name, "off", 1, "80M", "",
				"hyperroot.escape="+stage+":"+a, "hyperroot.escape.disk="+disk, "hyperroot.escape.sock="+sock))
		}
	}
	sort.Strings(names)
	cfg := netConfig(t, lanNet, vms...)
	testbed(t, func(t testing.TB) {
		if selinux {
			expectDenials(t)
		}
		pr, pw := io.Pipe()
		defer pw.Close()
		o := opts
		o.Config, o.Overlay, o.Stdin = cfg, overlay, pr
		m := start(t, o)
		expect(t, m, mode)
		victim := expect(t, m, `hyperroot: vm victim started pid=\d+`)
		// Every attacker's VMM exits, and the victim's guest comes to
		// read its console, in whatever order.
		for left, victimUp := len(names), false; left > 0 || !victimUp; {
			if l := expect(t, m, `hyperroot: vm x-\S+ exited |^victim\| guest: action echo`); strings.HasPrefix(l, "victim|") {
				victimUp = true
			} else {
				left--
			}
		}
		fmt.Fprintln(pw, "@victim poweroff")
		// The verdict is "fail": the attackers' VMMs were killed.
		r := m.Wait()
		if !r.PowerOff || r.Panic || r.TimedOut || r.Silent != 0 {
			t.Fatalf("appliance did not power off cleanly: %+v", r)
		}
		lines := r.Lines
		victimPair := pairOf(lines, "victim")
		if selinux && victimPair == "" {
			t.Fatalf("no SELinux category pair of the victim's VMM on the console (%s)", victim)
		}
		if !selinux && (victimPair != "" || hasLine(lines, `avc: `)) {
			t.Fatalf("SELinux at work with an lsm= list without it: %s", victim)
		}
		// PID 1 of this build names the wall that denied each attempt,
		// and counts them, on the console.
		for _, name := range names {
			if l := lineWith(lines, `hyperroot: escape: `+regexp.QuoteMeta(name)+` `); !strings.Contains(l, " denied by ") {
				t.Errorf("%s: NOT DENIED: %q", name, l)
			}
		}
		if total := fmt.Sprintf(`hyperroot: escape: %d/%d attempts denied \(`, len(names), len(names)); !hasLine(lines, total) {
			t.Errorf("console lacks %s", total)
		}
		if !selinux {
			wantLines(t, lines, "hyperroot: vm victim exited code=0 reason=poweroff")
			return
		}
		// At set-up SELinux is the only wall.
		for _, a := range stages["setup"] {
			if l := lineWith(lines, `hyperroot: escape: x-setup-`+a+` `); !strings.Contains(l, " denied by selinux ") {
				t.Errorf("x-setup-%s: not denied by SELinux: %q", a, l)
			}
		}
		// What only MCS can refuse: at set-up the attacker is root with
		// every capability and the victim's disk in view.
		for _, a := range []string{"disk", "disk-ro"} {
			name := "x-setup-" + a
			if !hasLine(lines, `avc: denied .* scontext=system_u:system_r:svirt_t:`+regexp.QuoteMeta(pairOf(lines, name))+` tcontext=system_u:object_r:svirt_image_t:`+regexp.QuoteMeta(victimPair)+` tclass=blk_file`) {
				t.Errorf("%s: no SELinux denial of the victim's disk (svirt_image_t:%s) to the attacker's pair", name, victimPair)
			}
		}
		// Nothing of a normal VM was denied: the victim ran its course.
		if hasLine(lines, `avc: denied .* scontext=system_u:system_r:svirt_t:`+regexp.QuoteMeta(victimPair)+` `) {
			t.Errorf("SELinux denied the victim's own VMM something")
		}
		wantLines(t, lines, "hyperroot: vm victim exited code=0 reason=poweroff")
	})
}

// pairOf is the MCS level ("s0:cX,cY") VM name's VMM ran at, from the
// console's "vm <name> started ... selinux=<context>", or "".
func pairOf(lines []string, name string) string {
	ctx := field(lines, `hyperroot: vm `+regexp.QuoteMeta(name)+` started `, "selinux")
	level, ok := strings.CutPrefix(ctx, "system_u:system_r:svirt_t:")
	if !ok || !pairRE.MatchString(level) {
		return ""
	}
	return level
}

var pairRE = regexp.MustCompile(`^s0:c\d+,c\d+$`)
