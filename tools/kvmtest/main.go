// Command kvmtest runs the tests that need /dev/kvm where KVM is.
//
//	kvmtest list            (host, at the module root) one line per package
//	                        with KVM tests: "<dir> <-test.run regexp>"
//	kvmtest appliance [-bench] [-image DIR]
//	                        (host, at the module root) boot a oneshot appliance
//	                        under QEMU that runs the KVM tests (or, with -bench,
//	                        the KVM benchmarks) and print their output
//	kvmtest probe           exit 0 if this host's /dev/kvm is usable for the
//	                        KVM tests (a hardware KVM; not PVM's), else say
//	                        why and exit 1
//	kvmtest run MANIFEST    (inside the appliance, as its hyperroot.run job)
//	                        run each test binary the manifest names
//
// On a machine whose host has no /dev/kvm, `./build.sh test` runs every
// other test on the host and leaves these out (go test -skip with the list's
// regexp); the e2e suite (tools/e2e TestKVMInAppliance) compiles the
// packages' test binaries, carries them and this program into a oneshot
// appliance under QEMU, where KVM works nested, and reports each test
// from the console. A manifest line is "<dir> [NAME=value...] <arg>...":
// the binary is <dir>/pkg.test next to the manifest, run in its own
// directory (so that testdata/ is found) with that environment added and
// those arguments.
//
// The run's console protocol, which the e2e suite parses:
//
//	kvmtest: start <dir>
//	... the test binary's -test.v output ...
//	kvmtest: end <dir> ok|FAIL code=<n> seconds=<s>
//	kvmtest: done packages=<n> failed=<m>
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/internal/kvmtests"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "list":
		root := "."
		if len(os.Args) > 2 {
			root = os.Args[2]
		}
		pkgs, err := kvmtests.Find(root)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kvmtest:", err)
			os.Exit(1)
		}
		for _, p := range pkgs {
			if len(p.Tests) > 0 {
				fmt.Println(p.Dir, p.RunRegexp())
			}
		}
	case "run":
		if len(os.Args) != 3 {
			usage()
		}
		os.Exit(run(os.Args[2]))
	case "probe":
		if err := testenv.KVMUsable(); err != nil {
			fmt.Println("kvmtest:", err)
			os.Exit(1)
		}
		if testenv.PVM() {
			fmt.Println("kvmtest: /dev/kvm is PVM's (kvm_pvm), which runs guests without hardware virtualisation: fine for the hand-made guests of vmm/kvm, far too slow for the Linux guests the other KVM tests boot (TestSeccompKillInAppliance's had not powered off when its 10 minutes ran out, 2026-12-07): they run in the appliance")
			os.Exit(1)
		}
	case "appliance":
		os.Exit(appliance(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kvmtest list [root] | kvmtest probe | kvmtest appliance [-bench] [-image DIR] | kvmtest run MANIFEST")
	os.Exit(2)
}

// envRE matches the NAME=value fields that may lead a manifest line's
// arguments: environment for that package's tests.
var envRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`)

// run executes every manifest entry and returns 0 only if all passed.
func run(manifest string) int {
	f, err := os.Open(manifest)
	if err != nil {
		fmt.Println("kvmtest:", err)
		return 1
	}
	defer f.Close()
	base := filepath.Dir(manifest)
	n, failed := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		n++
		dir, args := fields[0], fields[1:]
		env := os.Environ()
		for len(args) > 0 && envRE.MatchString(args[0]) {
			env = append(env, args[0])
			args = args[1:]
		}
		fmt.Println("kvmtest: start", dir)
		start := time.Now()
		cmd := exec.Command("./pkg.test", args...)
		cmd.Dir = filepath.Join(base, dir)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		err := cmd.Run()
		code, verdict := 0, "ok"
		if err != nil {
			verdict = "FAIL"
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else {
				fmt.Println("kvmtest:", err)
			}
			failed++
		}
		fmt.Printf("kvmtest: end %s %s code=%d seconds=%.1f\n", dir, verdict, code, time.Since(start).Seconds())
	}
	if err := sc.Err(); err != nil {
		fmt.Println("kvmtest:", err)
		return 1
	}
	fmt.Printf("kvmtest: done packages=%d failed=%d\n", n, failed)
	if failed > 0 || n == 0 {
		return 1
	}
	return 0
}
