package e2e

import (
	"fmt"
	"io"
	"regexp"
	"strconv"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

var spewRE = regexp.MustCompile(`guest: spew bytes=(\d+) ms=(\d+) console=(\S+)$`)

// TestVirtioConsole: a guest whose command line names console=hvc0 gets a
// virtio console beside the UART; its output and its input go through it.
// Each of two guests, one on hvc0 and one on the UART (ttyS0), writes
// 16 KiB of lines to its console and times it until the console took them
// (tcdrain): every line arrives, in order, and the ratio of the two times
// is what the virtio console saves a talkative guest (README, Measured).
func TestVirtioConsole(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		vm := func(name, console string) string {
			return fmt.Sprintf(`  - name: %s
    cpus: 1
    memory: 128M
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=%s panic=-1 quiet hyperroot.guest=spew,echo
    restart: never
`, name, console)
		}
		m := start(t, qemu.Options{Config: configFile(t, "vms:\n"+vm("hvc", "hvc0")+vm("tty", "ttyS0")), Oneshot: true, Stdin: pr})
		// Both spews done before anything is typed: the appliance's
		// console echoes typed lines into the stream a guest is writing.
		for _, name := range []string{"hvc", "tty"} {
			seen(t, m, `^`+name+`\| `+spewRE.String())
		}
		ms := map[string]float64{}
		for _, name := range []string{"hvc", "tty"} {
			l := seen(t, m, `^`+name+`\| `+spewRE.String())
			s := spewRE.FindStringSubmatch(l)
			want := map[string]string{"hvc": "/dev/hvc0", "tty": "/dev/console"}[name]
			if s[1] != "16384" || s[3] != want {
				t.Errorf("%s: %q, want 16384 bytes on %s", name, l, want)
			}
			ms[name], _ = strconv.ParseFloat(s[2], 64)
			// Every line, in order, and nothing else between them.
			var got []int
			lineRE := regexp.MustCompile(`^` + name + `\| guest: spew (\d{6}) x+$`)
			for _, l := range m.Lines() {
				if s := lineRE.FindStringSubmatch(l); s != nil {
					n, _ := strconv.Atoi(s[1])
					got = append(got, n)
				}
			}
			if len(got) != 256 {
				t.Errorf("%s: %d of 256 lines arrived whole", name, len(got))
			}
			for i, n := range got {
				if n != i {
					t.Errorf("%s: line %d is number %d", name, i, n)
					break
				}
			}
			// Input reaches the guest on its console.
			fmt.Fprintf(pw, "@%s typed on %s\n", name, name)
			expect(t, m, `^`+name+`\| guest: echo typed on `+name+`$`)
			fmt.Fprintf(pw, "@%s poweroff\n", name)
			seen(t, m, `hyperroot: vm `+name+` exited code=0 reason=poweroff$`)
		}
		t.Logf("16 KiB of console lines: hvc0 %.0f ms, ttyS0 %.0f ms: ratio %.3f", ms["hvc"], ms["tty"], ms["hvc"]/ms["tty"])
		if ms["hvc"] >= ms["tty"] {
			t.Errorf("the virtio console (%.0f ms) was not faster than the UART (%.0f ms)", ms["hvc"], ms["tty"])
		}
		if r := m.Wait(); !r.OK() {
			t.Errorf("appliance: %s", r.Why())
		}
	})
}
