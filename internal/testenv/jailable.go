package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// JailableTest is the running test binary as jail.Enter accepts it for a
// child to jail itself: this one, or, when it links cgo (go test's
// default; the Go runtime cannot reach cgo's threads, see jail.Enter), the
// package's tests built again with CGO_ENABLED=0, as the appliance's binary
// is. It must run in the package's directory, as go test runs tests.
func JailableTest(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_GETPID, 0, 0, 0); errno != syscall.ENOTSUP {
		return self
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = NeedTool(t, "go", "golang")
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(self))
	cmd := exec.Command(goTool, "test", "-c", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the tests without cgo: %v\n%s", err, out)
	}
	return bin
}
