package e2e

import (
	"fmt"
	"io"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestCtl: `hyperroot ctl` drives a VM's lifecycle through the management
// API's unix socket in the appliance (PID 1 serves it): the appliance runs
// `hyperroot ctl shell` as its hyperroot.run job and the test types its
// commands on the console ("@run ..."). A hostile name is refused with the
// API's message and changes nothing.
func TestCtl(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := writeConfig(t, guestVM("managed", 1, "128M", "wait", "always"))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr, Append: "hyperroot.run=/bin/hyperroot,ctl,shell"})
		expect(t, m, `hyperroot: run started pid=\d+ /bin/hyperroot ctl shell$`)
		seen(t, m, `^managed\| guest: action wait$`)
		fmt.Fprintln(pw, "@run vm list")
		expect(t, m, `^run\| NAME +STATE +PID +CPUS +MEMORY +RESTART$`)
		expect(t, m, `^run\| managed +running +[1-9]\d* +1 +128M always$`)
		// ctl escapes the name: the path stays one segment and the
		// server sees, and refuses, the name as typed.
		fmt.Fprintln(pw, "@run vm get ../../etc")
		expect(t, m, `^run\| ctl: vm get \.\./\.\./etc: vm name "\.\./\.\./etc": want 1-32 lower-case letters, digits and dashes \(HTTP 400\)$`)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| vm managed stopped pid 0$`)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| ctl: vm stop managed: vm managed is not running: conflict \(HTTP 409\)$`)
		fmt.Fprintln(pw, "@run vm start managed")
		expect(t, m, `^run\| vm managed running pid [1-9]\d*$`)
		nth(t, m, `^managed\| guest: action wait$`, 2)
		fmt.Fprintln(pw, "@run host")
		expect(t, m, `^run\| hyperroot \S+ kernel \S+ cpus \d+ memory \d+ kvm ok `)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| vm managed stopped pid 0$`)
		fmt.Fprintln(pw, "@run exit")
		expect(t, m, `hyperroot: run exited code=0`)
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
	})
}
