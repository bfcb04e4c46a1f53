package seccomp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	childCases["switch-allowed"] = switchAllowed
	for name, call := range map[string]func(){
		"switch-socket-unix": func() { unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) },
		"switch-ioctl":       func() { unix.IoctlGetTermios(0, unix.TCGETS) },
		"switch-execve":      func() { unix.Exec("/bin/true", []string{"true"}, nil) },
		"switch-fork":        func() { unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0) },
		"switch-symlink":     func() { unix.Symlink("/etc/shadow", filepath.Join(os.TempDir(), "never")) },
		"switch-mkdir":       func() { unix.Mkdir(filepath.Join(os.TempDir(), "never"), 0o700) },
		"switch-mmap-exec": func() {
			unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		},
		"switch-fcntl-setown":        func() { unix.FcntlInt(0, unix.F_SETOWN, unix.Getpid()) },
		"switch-ptrace":              func() { unix.PtraceAttach(1) },
		"switch-mmap-exec-disguised": mmapExecDisguised,
	} {
		childCases[name] = func() error {
			if err := Switch(Kill); err != nil {
				return err
			}
			call()
			return errors.New("the refused call returned")
		}
	}
}

// switchAllowed does under the switch's filter what a serving switch does:
// the runtime's work, a vhost-user connection accepted (its client made
// before the filter, as a VMM's is outside the switch) with a memory file
// and an eventfd passed, checked, mapped and polled, and the lease file's
// atomic rewrite in a directory.
func switchAllowed() error {
	dir := os.Getenv(switchDirEnv) // the test's, which removes it
	// Raw sockets: package net would link cgo into the test binary, whose
	// C threads make calls (rseq, mprotect) no pure-Go switch makes.
	sock := filepath.Join(dir, "0.sock")
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Bind(l, &unix.SockaddrUnix{Name: sock})
	}
	if err == nil {
		err = unix.Listen(l, 4)
	}
	client, cerr := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Connect(client, &unix.SockaddrUnix{Name: sock})
	}
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	mem, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err == nil {
		err = unix.Ftruncate(mem, 1<<16)
	}
	if err == nil {
		_, err = unix.FcntlInt(uintptr(mem), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
	}
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	// The runtime's poller starts with the first pollable file, which a
	// switch opens long before its filter (its listeners).
	warm, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	defer os.NewFile(uintptr(warm), "warm").Close()

	if err := Switch(Kill); err != nil {
		return err
	}
	if err := allowedRuntime(); err != nil {
		return err
	}
	c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	if _, err := unix.Getsockname(c); err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	if err := unix.Sendmsg(client, []byte("mem"), unix.UnixRights(mem, efd), nil, 0); err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := unix.Recvmsg(c, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return fmt.Errorf("recvmsg: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 2 {
		return fmt.Errorf("descriptors: %v %v", fds, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GET_SEALS, 0); err != nil {
		return fmt.Errorf("F_GET_SEALS: %w", err)
	}
	b, err := unix.Mmap(fds[0], 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	b[0] = 1
	unix.Munmap(b)
	if _, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fds[1])); err != nil {
		return fmt.Errorf("readlink: %w", err)
	}
	dup, err := unix.FcntlInt(uintptr(fds[1]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		return fmt.Errorf("non-blocking: %w", err)
	}
	kick := os.NewFile(uintptr(dup), "kick")
	unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	var v [8]byte
	if _, err := kick.Read(v[:]); err != nil {
		return fmt.Errorf("kick through the poller: %w", err)
	}
	kick.Close()
	unix.Close(fds[0])
	unix.Close(c)
	// The lease file, as net/dhcp writes it, and a claim appended.
	path := filepath.Join(dir, "lan.leases")
	tmp, err := os.CreateTemp(dir, ".lan.leases.tmp-*")
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer os.Remove(tmp.Name()) // unlink fails (renamed), then rmdir: ENOENT
	tmp.WriteString("{}\n")
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	tmp.Close()
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	d.Sync()
	d.Close()
	f, err := os.OpenFile(filepath.Join(dir, "claims6"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("claims: %w", err)
	}
	f.WriteString("a.0 fe80::1\n")
	f.Close()
	// The listener's socket file goes at exit.
	unix.Close(l)
	return os.Remove(sock)
}

// allowedRuntime is allowedWork without what the switch does not do
// (positional I/O, new sockets).
func allowedRuntime() error {
	done := make(chan int)
	for i := 0; i < 8; i++ {
		go func() { done <- deepStack(500) }()
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	return unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGURG)
}

// switchDirEnv names the directory the switch-allowed child writes in.
const switchDirEnv = "HYPERROOT_SECCOMP_TEST_DIR"

func TestSwitchFilter(t *testing.T) {
	needSeccomp(t)
	t.Run("switch-allowed", func(t *testing.T) {
		t.Setenv(switchDirEnv, t.TempDir())
		ws, out := runCase(t, "switch-allowed")
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("%v, want exit 0; output:\n%s", describe(ws), out)
		}
	})
	for _, name := range []string{"switch-socket-unix", "switch-ioctl", "switch-execve", "switch-fork",
		"switch-symlink", "switch-mkdir", "switch-mmap-exec", "switch-fcntl-setown", "switch-ptrace",
		"switch-mmap-exec-disguised"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ws, out := runCase(t, name)
			if !ws.Signaled() || ws.Signal() != unix.SIGSYS {
				t.Errorf("%v, want killed by SIGSYS; output:\n%s", describe(ws), out)
			}
		})
	}
	for _, m := range []Mode{Kill, Log} {
		p := SwitchPolicy(m)
		if _, err := p.Assemble(); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
}
