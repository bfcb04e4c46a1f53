package jail_test

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/hyperroot/hyperroot/internal/jail"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

// benchArg starts the test binary as the benchmark's child: with "jailed"
// after it, it jails itself as a VMM does and exits; else it exits at once.
const benchArg = "jail-bench-child"

func benchChild(args []string) int {
	if len(args) == 1 && args[0] == "jailed" {
		if _, err := jail.Enter(jail.Config{UID: vmID, GID: vmID}); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			return 1
		}
	}
	return 0
}

// BenchmarkStart is what the jail adds to starting a VMM: a child process
// started and waited for, plain (a new session, no namespaces) against
// jailed (jail.Attr's namespaces and jail.Enter on itself, as a VMM with
// --jail). docs/PERFORMANCE.md has the figures and the ratio.
func BenchmarkStart(b *testing.B) {
	testenv.Need(b, os.Geteuid() == 0, "root (namespaces, pivot_root, setuid): run the benchmark as root")
	bin := testenv.JailableTest(b)
	for _, tc := range []struct {
		name string
		attr func() *syscall.SysProcAttr
	}{
		{"plain", func() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL} }},
		{"jailed", jail.Attr},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				cmd := exec.Command(bin, benchArg, tc.name)
				cmd.Env, cmd.SysProcAttr = []string{}, tc.attr()
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%s child: %v\n%s", tc.name, err, out)
				}
			}
		})
	}
}
