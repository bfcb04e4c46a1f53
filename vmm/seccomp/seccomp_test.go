package seccomp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	bpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/internal/uring"
)

// A filter cannot be unloaded, so each case runs in a child: the test
// binary run again with childEnv naming the case, which TestMain runs
// instead of the tests. The child exits 0 when every allowed call worked;
// a refused one kills it with SIGSYS.
const childEnv = "HYPERROOT_SECCOMP_TEST_CHILD"

func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		os.Exit(runChild(name))
	}
	os.Exit(m.Run())
}

// childCases are the children, by name: each loads filters and makes calls.
var childCases = map[string]func() error{
	// The process filter allows what the runtime and a VMM's threads do.
	"process-allowed": func() error {
		// A disk's io_uring backend, set up before the filters as the
		// VMM's is, and closed under them. Where the kernel refuses
		// io_uring, the VMM uses its thread pool, and so does this.
		ring, err := uring.Setup(4)
		var efd int
		if err == nil {
			efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
		}
		if err == nil {
			err = ring.RegisterEventfd(efd)
		}
		if err != nil {
			ring = nil
		}
		if err := Process(Kill, Options{}); err != nil {
			return err
		}
		if err := allowedWork(); err != nil {
			return err
		}
		if ring != nil {
			if err := ring.UnregisterEventfd(); err != nil {
				return err
			}
			unix.Close(efd)
			return ring.Close()
		}
		return nil
	},
	"process-socket-inet": func() error { return processThen(func() { unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0) }) },
	"process-execve":      func() error { return processThen(func() { unix.Exec("/bin/true", []string{"true"}, nil) }) },
	"process-ptrace":      func() error { return processThen(func() { unix.PtraceAttach(1) }) },
	"process-prctl":       func() error { return processThen(func() { unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0) }) },
	"process-setaffinity-other": func() error {
		return processThen(func() {
			var set unix.CPUSet
			set.Set(0)
			unix.SchedSetaffinity(1, &set)
		})
	},
	"process-openat": func() error { return processThen(func() { os.Open("/etc/hostname") }) },
	"process-ioctl":  func() error { return processThen(func() { unix.IoctlGetTermios(0, unix.TCGETS) }) },
	"process-fork": func() error {
		return processThen(func() { unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0) })
	},
	"process-mprotect": func() error {
		return processThen(func() {
			b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err == nil {
				unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC)
			}
		})
	},
	"process-mmap-exec-disguised": func() error { return processThen(mmapExecDisguised) },
	"process-mmap-exec": func() error {
		return processThen(func() { unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS) })
	},
	// A vCPU thread: KVM_RUN (on no descriptor: EBADF proves the call
	// reached the kernel) and the runtime's work are allowed, the rest of
	// the process goes on with the process filter only, and the thread
	// dies with its goroutine.
	"vcpu-allowed": func() error {
		// The network poller in use, as in a VMM (its console, kick
		// loops): a collection the vCPU thread starts or ends then polls
		// it, without waiting, as it restarts the world.
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		defer w.Close()
		if err := Process(Kill, Options{}); err != nil {
			return err
		}
		err = onVCPUThread(Kill, func() error {
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, ^uintptr(0), kvm0xae80, 0); e != unix.EBADF {
				return fmt.Errorf("KVM_RUN on no descriptor: %v, want EBADF", e)
			}
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				return fmt.Errorf("eventfd: %w", err)
			}
			if _, err := unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			unix.Close(fd)
			runtime.GC()    // the collector's work, stop-the-world included
			deepStack(1000) // stack growth
			time.Sleep(time.Millisecond)
			return nil
		})
		if err != nil {
			return err
		}
		// The vCPU thread is gone: what follows runs on threads with the
		// process filter alone, which allows what the vCPU filter does not.
		return allowedWork()
	},
	// Allowed by the process filter, refused on a vCPU thread.
	"vcpu-socket-unix": func() error {
		return vcpuThen(func() {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
		})
	},
	"vcpu-preadv": func() error {
		return vcpuThen(func() {
			var b [8]byte
			unix.Preadv(-1, [][]byte{b[:]}, 0)
		})
	},
	"vcpu-ioctl-set-regs": func() error {
		// KVM_SET_REGS: a request the process filter lets through for
		// no thread either, but checked here on the vCPU's own list.
		return vcpuThen(func() { unix.Syscall(unix.SYS_IOCTL, ^uintptr(0), 0x4090ae82, 0) })
	},
	// The runtime's non-waiting poll is allowed (vcpu-allowed), a
	// waiting one is not.
	"vcpu-epoll-wait": func() error {
		return vcpuThen(func() {
			var ev [1]unix.EpollEvent
			unix.Syscall6(unix.SYS_EPOLL_PWAIT, ^uintptr(0), uintptr(unsafe.Pointer(&ev[0])), 1, 10, 0, 0)
		})
	},
	"vcpu-ioctl-other": func() error {
		return vcpuThen(func() { unix.IoctlGetTermios(0, unix.TCGETS) })
	},
	// Log mode: the refused calls go through.
	"log-mode": func() error {
		if err := Process(Log, Options{}); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket(AF_INET) in log mode: %w", err)
		}
		unix.Close(fd)
		return onVCPUThread(Log, func() error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket(AF_UNIX) on a vCPU thread in log mode: %w", err)
			}
			unix.Close(fd)
			return nil
		})
	},
}

// mmapExecDisguised asks for executable memory with arguments that fooled
// the program go-seccomp-bpf assembles (see program.go): prot 317 has
// PROT_EXEC set and is seccomp(2)'s number, address 1 is what the VMM's
// condition on seccomp allows. Our programs must kill it.
func mmapExecDisguised() {
	unix.Syscall6(unix.SYS_MMAP, 1, 4096, 317, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uintptr(0), 0)
}

// kvm0xae80 is KVM_RUN.
const kvm0xae80 = 0xae80

// childCPUs is the child's CPU affinity, read before any filter (which
// refuses sched_getaffinity) for the vCPU thread to pin itself to.
var childCPUs unix.CPUSet

func runChild(name string) int {
	if err := unix.SchedGetaffinity(0, &childCPUs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bench, spec, _ := strings.Cut(name, ":")
	if bench == "ioexit" || bench == "kvmrun" { // BenchmarkIOExit, BenchmarkKVMRunCall
		n, err := strconv.Atoi(spec)
		switch {
		case err == nil && bench == "ioexit":
			err = runIOExits(n)
		case err == nil:
			err = runKVMRunCalls(n)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			return 1
		}
		return 0
	}
	run, ok := childCases[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "no child case %q\n", name)
		return 2
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

// processThen loads the process filter and makes a call it refuses; the
// child should not live to return.
func processThen(call func()) error {
	if err := Process(Kill, Options{}); err != nil {
		return err
	}
	call()
	return errors.New("the refused call returned")
}

// vcpuThen loads both filters and makes, on the vCPU thread, a call its
// filter refuses.
func vcpuThen(call func()) error {
	if err := Process(Kill, Options{}); err != nil {
		return err
	}
	return onVCPUThread(Kill, func() error {
		call()
		return errors.New("the refused call returned")
	})
}

// onVCPUThread runs f on a new goroutine locked to its thread with the
// vCPU filter loaded, the way vmm/machine runs a vCPU.
func onVCPUThread(m Mode, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		// What vmm/machine and the supervisor's pinning do to a vCPU
		// thread before its filter: name it, pin it.
		name := []byte("vcpu0\x00")
		if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0); err != nil {
			errc <- fmt.Errorf("PR_SET_NAME: %w", err)
			return
		}
		if err := unix.SchedSetaffinity(0, &childCPUs); err != nil {
			errc <- fmt.Errorf("sched_setaffinity: %w", err)
			return
		}
		if err := VCPUThread(m, Options{}); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// allowedWork does what a VMM's threads do besides KVM_RUN: goroutines on
// new threads, timers, the collector, channels, a pipe through the
// network poller, a vhost-user style socket pair with a descriptor passed,
// positional I/O, signals to a thread.
func allowedWork() error {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // forces new threads (from the template thread)
			defer runtime.UnlockOSThread()
			time.Sleep(time.Millisecond)
			deepStack(500)
		}()
	}
	wg.Wait()
	runtime.GC()
	// An eventfd through the network poller (epoll, fcntl), as the
	// VMM's kick loops and relays use them.
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "eventfd")
	defer f.Close()
	go func() {
		time.Sleep(time.Millisecond)
		if _, err := unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			errs <- fmt.Errorf("eventfd write: %w", err)
		}
	}()
	var b [8]byte
	if _, err := f.Read(b[:]); err != nil {
		return fmt.Errorf("eventfd read through the poller: %w", err)
	}
	// Positional I/O reaches the kernel (an eventfd cannot seek).
	if _, err := unix.Preadv(fd, [][]byte{b[:]}, 0); err != unix.ESPIPE {
		return fmt.Errorf("preadv on an eventfd: %v, want ESPIPE", err)
	}
	// A vhost-user style socket, and a signal to a thread.
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_UNIX): %w", err)
	}
	unix.Close(s)
	if err := unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGURG); err != nil {
		return fmt.Errorf("tgkill: %w", err)
	}
	select {
	case err := <-errs:
		return err
	default:
	}
	return nil
}

// deepStack recurses n times, growing the goroutine's stack.
func deepStack(n int) int {
	var pad [64]byte
	pad[0] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return deepStack(n-1) + int(pad[0])
}

// runCase runs child case name and returns how it ended.
func runCase(t *testing.T, name string) (syscall.WaitStatus, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+name)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", name, err)
	}
	return cmd.ProcessState.Sys().(syscall.WaitStatus), strings.TrimSpace(string(out))
}

func needSeccomp(t testing.TB) {
	t.Helper()
	_, err := os.Stat("/proc/sys/kernel/seccomp/actions_avail")
	testenv.Need(t, err == nil, "the kernel has no seccomp filters (/proc/sys/kernel/seccomp/actions_avail)")
}

func TestAllowed(t *testing.T) {
	needSeccomp(t)
	for _, name := range []string{"process-allowed", "vcpu-allowed", "log-mode"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ws, out := runCase(t, name)
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Errorf("child %s: %v, want exit 0; output:\n%s", name, describe(ws), out)
			}
		})
	}
}

func TestRefusedKills(t *testing.T) {
	needSeccomp(t)
	for _, name := range []string{"process-socket-inet", "process-execve", "process-ptrace", "process-openat",
		"process-ioctl", "process-fork", "process-prctl", "process-setaffinity-other", "process-mprotect", "process-mmap-exec", "process-mmap-exec-disguised",
		"vcpu-socket-unix", "vcpu-preadv", "vcpu-ioctl-set-regs", "vcpu-ioctl-other", "vcpu-epoll-wait"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ws, out := runCase(t, name)
			if !ws.Signaled() || ws.Signal() != unix.SIGSYS {
				t.Errorf("child %s: %v, want killed by SIGSYS; output:\n%s", name, describe(ws), out)
			}
		})
	}
}

func describe(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{Kill, Log, Off} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseMode("allow"); err == nil {
		t.Error("ParseMode(allow) did not fail")
	}
}

func TestPoliciesAssemble(t *testing.T) {
	for _, m := range []Mode{Kill, Log} {
		p, v := Policies(m, Options{Passthrough: true})
		for name, pol := range map[string]bpf.Policy{"process": p, "vcpu": v, "switch": SwitchPolicy(m)} {
			if _, err := compile(pol); err != nil {
				t.Errorf("%s %s: %v", m, name, err)
			}
		}
	}
}

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Record
		ok   bool
	}{
		{`6,1234,5678901,-;audit: type=1326 audit(1796204496.123:45): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=98 comm="hyperroot" exe="/init" sig=31 arch=c000003e syscall=41 compat=0 ip=0x4a1b2c code=0x80000000`,
			Record{PID: 98, Syscall: "socket", Killed: true}, true},
		{`[   12.5] audit: type=1326 audit(1796204496.123:46): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=7 comm="hyperroot" exe="/init" sig=0 arch=c000003e syscall=16 compat=0 ip=0x4a1b2c code=0x7ffc0000`,
			Record{PID: 7, Syscall: "ioctl"}, true},
		{`audit: type=1326 audit(1:2): pid=7 sig=31 arch=c000003e syscall=9999 code=0x80000000`,
			Record{PID: 7, Syscall: "syscall-9999", Killed: true}, true},
		{`audit: type=1701 audit(1:3): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=98 comm="hyperroot" exe="/init" sig=31 res=1`, Record{}, false},
		{`kvm [99]: vcpu0, guest rIP: 0xffffffff9c673744 Unhandled WRMSR(0xc0010007) = 0xffff`, Record{}, false},
		{`audit: type=1326 audit(1:2): sig=31 arch=c000003e syscall=41`, Record{}, false},
	} {
		got, ok := ParseRecord(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseRecord(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
