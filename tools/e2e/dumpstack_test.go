package e2e

import (
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestDumpGuestStack: a dump of a Linux guest halted in its idle loop
// lists the kernel addresses on its vCPU's stack and the IDT's first
// gate, and tools/ksyms, run in the same appliance (whose kernel the
// guest runs, at another random offset), names them: the vCPU halted in
// the idle path, called from the idle loop (do_idle). This is how a guest
// found spinning or halted for good in a test run is read afterwards
// (docs/TESTING.md).
func TestDumpGuestStack(t *testing.T) {
	parallel(t)
	overlay := t.TempDir()
	buildInto(t, filepath.Join(overlay, "ksyms", "ksyms"), "../ksyms")
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := configFile(t, "vms:\n"+loadVM("idle", "echo", 1, "128M", ""))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Overlay: overlay, Stdin: pr, Append: "hyperroot.run=/ksyms/ksyms"})
		expect(t, m, `^run\| ksyms: ready$`)
		seen(t, m, `^idle\| guest: action echo$`)
		// The guest is idle: its vCPU is halted nearly always, but a
		// dump may catch it in a timer interrupt; ask again then.
		var lines []string
		for try := 0; ; try++ {
			fmt.Fprintln(pw, "dump idle")
			lines = readDump(t, m, "idle")
			if hasLine(lines, `^vcpu 0: mp_state halted`) {
				break
			}
			if try == 9 {
				t.Fatalf("10 dumps never found the idle guest's vCPU halted:\n%s", strings.Join(lines, "\n"))
			}
		}
		var rip, stack string
		for _, l := range lines {
			if s := regexp.MustCompile(`^vcpu 0: rip=(0x[0-9a-f]+) `).FindStringSubmatch(l); s != nil {
				rip = s[1]
			}
			if strings.HasPrefix(l, "vcpu 0: stack at rsp") {
				stack = l
			}
		}
		s := regexp.MustCompile(`^vcpu 0: stack at rsp, kernel addresses in \d+ words:((?: \+0x[0-9a-f]+=0x[0-9a-f]+)+); idt0=(0x[0-9a-f]+)$`).FindStringSubmatch(stack)
		if rip == "" || s == nil {
			t.Fatalf("the dump has no rip or no kernel stack with idt0:\n%s", strings.Join(lines, "\n"))
		}
		var addrs []string
		for _, w := range strings.Fields(s[1]) {
			_, a, _ := strings.Cut(w, "=")
			addrs = append(addrs, a)
		}
		fmt.Fprintf(pw, "@run idt0=%s %s %s\n", s[2], rip, strings.Join(addrs, " "))
		named := map[string]string{}
		for range 1 + len(addrs) {
			l := expect(t, m, `^run\| ksyms: (0x[0-9a-f]+: .*|error: .*)$`)
			a, name, _ := strings.Cut(strings.TrimPrefix(l[strings.Index(l, "ksyms: "):], "ksyms: "), ": ")
			if a == "error" {
				t.Fatalf("ksyms: %s", name)
			}
			named[a] = name
		}
		t.Logf("rip %s: %s; stack: %v", rip, named[rip], named)
		if !regexp.MustCompile(`(idle|halt)`).MatchString(named[rip]) {
			t.Errorf("the halted vCPU's rip %s is %s, not in the idle path", rip, named[rip])
		}
		inLoop := false
		for _, a := range addrs {
			inLoop = inLoop || strings.HasPrefix(named[a], "do_idle+")
		}
		if !inLoop {
			t.Errorf("no return address into do_idle on the idle guest's stack: %v", named)
		}
		fmt.Fprintln(pw, "@run exit")
		fmt.Fprintln(pw, "@idle poweroff")
		r := m.Wait()
		wantLines(t, r.Lines, "hyperroot: vm idle exited code=0 reason=poweroff")
	})
}
