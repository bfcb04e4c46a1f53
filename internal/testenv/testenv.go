// Package testenv decides what a test does when something it needs from the
// machine (a tool, /dev/kvm, a built image) is missing: skip with the reason
// when run bare (`go test ./...` on a laptop), fail loudly when run by
// `./build.sh test`, which sets HYPERROOT_STRICT=1 after installing
// everything the suite needs.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Strict reports whether missing prerequisites are failures.
func Strict() bool { return os.Getenv("HYPERROOT_STRICT") == "1" }

// Need stops the test when ok is false: t.Fatal under Strict, t.Skip
// otherwise. why says what is missing and how to get it.
func Need(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if Strict() {
		t.Fatalf("missing prerequisite: %s", why)
	}
	t.Skipf("missing prerequisite (set HYPERROOT_STRICT=1 to fail instead): %s", why)
}

// NeedTool is Need for a program on $PATH; it returns the program's path.
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, name+" not found: apt-get install "+pkg+" (./build.sh deps does it)")
	return p
}

// NeedKVM is Need for a usable /dev/kvm (see KVMUsable). `./build.sh
// test` never lets it skip or fail for want of one: on a host without KVM
// the tests that call it run inside the appliance (internal/kvmtests).
func NeedKVM(t testing.TB) {
	t.Helper()
	err := KVMUsable()
	Need(t, err == nil, "/dev/kvm not usable: "+errString(err))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
