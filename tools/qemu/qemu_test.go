package qemu

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHasVirtFlag(t *testing.T) {
	for in, want := range map[string]bool{
		"processor\t: 0\nflags\t\t: fpu vme svm lm\n": true,
		"flags\t\t: fpu vmx\n":                        true,
		"flags\t\t: fpu vmxnet hypervisor\n":          false,
		"model name\t: svm vmx\nflags\t: fpu\n":       false,
	} {
		if got := hasVirtFlag(in); got != want {
			t.Errorf("hasVirtFlag(%q) = %v", in, got)
		}
	}
}

func TestQEMUMajor(t *testing.T) {
	for in, want := range map[string]int{
		"QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright": 7,
		"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\n":                  10,
		"not qemu": -1,
	} {
		got, ok := qemuMajor(in)
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("qemuMajor(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestChooseAccel(t *testing.T) {
	if a, _ := chooseAccel("tcg"); strings.Join(a, " ") != "-accel tcg -cpu max" {
		t.Errorf("tcg: %v", a)
	}
	if a, _ := chooseAccel("kvm"); strings.Join(a, " ") != "-accel kvm -cpu host" {
		t.Errorf("kvm: %v", a)
	}
	if _, err := chooseAccel("xen"); err == nil {
		t.Error("accepted accel xen")
	}
}

func TestResult(t *testing.T) {
	good := Result{Verdict: "pass", PowerOff: true}
	if !good.OK() || good.Why() != "ok" {
		t.Errorf("good result: %v %q", good.OK(), good.Why())
	}
	for _, tc := range []struct {
		r   Result
		why string
	}{
		{Result{Verdict: "pass", PowerOff: true, TimedOut: true}, "timed out"},
		{Result{Verdict: "pass", PowerOff: true, Panic: true}, "kernel panic"},
		{Result{PowerOff: true}, "no 'hyperroot: result' line"},
		{Result{Verdict: "fail errors=2", PowerOff: true}, "result fail errors=2"},
		{Result{Verdict: "pass"}, "no clean poweroff"},
		{Result{Verdict: "pass", PowerOff: true, ExitCode: 1}, "QEMU exit status 1"},
	} {
		if tc.r.OK() || !strings.Contains(tc.r.Why(), tc.why) {
			t.Errorf("%+v: OK=%v Why=%q, want %q", tc.r, tc.r.OK(), tc.r.Why(), tc.why)
		}
	}
}

func TestStartBadInput(t *testing.T) {
	img := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		os.WriteFile(filepath.Join(img, f), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(img, "board.yaml"), []byte("name: qemu\nkernel: {package: linux-image-amd64}\nconsole: ttyS0\n"), 0o644)
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Image: img, Binary: "no-such-qemu"}, "no-such-qemu not found: apt-get install qemu-system-x86"},
		{Options{Image: t.TempDir(), Binary: "sh"}, "no built image in"},
		{Options{Image: img, Binary: "sh", Memory: "2X"}, `memory "2X"`},
		{Options{Image: img, Binary: "sh", CPUs: -1, Accel: "tcg"}, "cpus -1"},
		{Options{Image: img, Binary: "sh", Config: "/no/such"}, "config /no/such: not a readable file"},
		{Options{Image: img, Binary: "sh", Overlay: "/no/such"}, "overlay /no/such: not a directory"},
		{Options{Image: img, Binary: "sh", Accel: "hvf"}, `accel "hvf"`},
	} {
		_, err := Start(context.Background(), tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
}

func TestApplianceTimeout(t *testing.T) {
	for _, tc := range []struct{ host, want time.Duration }{
		{10 * time.Minute, 8 * time.Minute},
		{4 * time.Minute, 192 * time.Second},
		{100 * time.Second, 80 * time.Second},
		{30 * time.Second, 15 * time.Second},
	} {
		if got := ApplianceTimeout(tc.host); got != tc.want {
			t.Errorf("ApplianceTimeout(%s) = %s, want %s", tc.host, got, tc.want)
		}
	}
}

// TestSilenceDumps: a console that goes silent gets "dump" typed on it, the
// dump's output is kept, and only then is QEMU killed. What the caller
// types still arrives. The "QEMU" here is a script that plays the
// appliance's part.
func TestSilenceDumps(t *testing.T) {
	img, fake := fakeQEMU(t, `#!/bin/sh
echo "hyperroot: ready"
while read -r line; do
	case "$line" in
	dump) echo "vm| hyperroot vmm: dump: vcpu 0: rip=0x1234" ;;
	?*) echo "typed: $line" ;;
	esac
done
`)
	m, err := Start(context.Background(), Options{Image: img, Binary: fake, Accel: "tcg", Silence: time.Second, Stdin: strings.NewReader("hello\n")})
	if err != nil {
		t.Fatal(err)
	}
	r := m.Wait()
	if r.Silent < time.Second {
		t.Errorf("Silent = %s, want at least 1s", r.Silent)
	}
	got := strings.Join(r.Lines, "\n")
	for _, want := range []string{"typed: hello", "vm| hyperroot vmm: dump: vcpu 0: rip=0x1234"} {
		if !strings.Contains(got, want) {
			t.Errorf("console lacks %q:\n%s", want, got)
		}
	}
	if !strings.Contains(r.Why(), "console silent") {
		t.Errorf("Why() = %q", r.Why())
	}
}

// TestTypingAfterExit: once QEMU has exited, lines the caller writes
// into its pipe are dropped, not left blocking the caller.
func TestTypingAfterExit(t *testing.T) {
	img, fake := fakeQEMU(t, "#!/bin/sh\nexec 0<&-\necho bye\n")
	pr, pw := io.Pipe()
	defer pw.Close()
	m, err := Start(context.Background(), Options{Image: img, Binary: fake, Accel: "tcg", Stdin: pr})
	if err != nil {
		t.Fatal(err)
	}
	m.Wait()
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = fmt.Fprintf(pw, "line %d after QEMU exited\n", i)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("typing after exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("typing after QEMU exited blocked for 20 s")
	}
}

// fakeQEMU makes an image directory with placeholder files and a board,
// and a "QEMU" that is script, playing the appliance's part.
func fakeQEMU(t *testing.T, script string) (img, binary string) {
	t.Helper()
	dir := t.TempDir()
	img = filepath.Join(dir, "image")
	os.Mkdir(img, 0o755)
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		os.WriteFile(filepath.Join(img, f), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(img, "board.yaml"), []byte("name: qemu\nkernel: {package: linux-image-amd64}\nconsole: ttyS0\n"), 0o644)
	binary = filepath.Join(dir, "fake-qemu")
	if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return img, binary
}

func TestNUMAArgs(t *testing.T) {
	got, err := numaArgs("2G", 3, 2, 0)
	want := "-object memory-backend-ram,id=numa0,size=1024M -numa node,nodeid=0,memdev=numa0,cpus=0,cpus=2 " +
		"-object memory-backend-ram,id=numa1,size=1024M -numa node,nodeid=1,memdev=numa1,cpus=1"
	if err != nil || strings.Join(got, " ") != want {
		t.Errorf("numaArgs = %q, %v; want %q", strings.Join(got, " "), err, want)
	}
	got, err = numaArgs("2G", 2, 2, 21)
	if want := " -numa dist,src=0,dst=1,val=21 -numa dist,src=1,dst=0,val=21"; err != nil || !strings.HasSuffix(strings.Join(got, " "), want) {
		t.Errorf("numaArgs with a distance = %q, %v; want it to end with %q", strings.Join(got, " "), err, want)
	}
	if _, err := numaArgs("1025", 1, 2, 0); err == nil {
		t.Errorf("1025 MiB split in 2: no error")
	}
}
