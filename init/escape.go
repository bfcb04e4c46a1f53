//go:build escape

package main

// The escape suite's attacker (see escapeHook): built only with -tags
// escape, for tools/e2e's TestEscape. A VM's command line names what to
// try and where:
//
//	hyperroot.escape=<stage>:<attempt>  hyperroot.escape.disk=<path>  hyperroot.escape.sock=<path>
//
// disk is another VM's disk, sock another VM's vhost-user socket. Each
// attempt is one system call (or a scan of them) that a VMM taken over by
// its guest would make to reach beyond its VM; it is reported as
//
//	hyperroot vmm: escape <stage> <attempt>: denied <ERRNO>
//	hyperroot vmm: escape <stage> <attempt>: NOT DENIED
//
// and the VMM exits. A call the seccomp filter refuses kills the VMM
// before it can report: the supervisor's exit line (reason=seccomp
// syscall=<name>) says so instead. Which wall said no is for the test to
// tell from the errno, the stage and the console's SELinux denials.

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

func init() { escapeHook = escape }

func escape(stage string, a vmmcli.Args) (int, bool) {
	var want, disk, sock string
	for _, f := range strings.Fields(a.Cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "hyperroot.escape":
			want = v
		case "hyperroot.escape.disk":
			disk = v
		case "hyperroot.escape.sock":
			sock = v
		}
	}
	st, attempt, _ := strings.Cut(want, ":")
	if st != stage {
		return 0, false
	}
	try, ok := attempts(stage, disk, sock)[attempt]
	if !ok {
		report(stage, attempt, "unknown attempt")
		return vmmcli.ExitError, true
	}
	err := try()
	var errno unix.Errno
	switch {
	case err == nil:
		report(stage, attempt, "NOT DENIED")
		return vmmcli.ExitError, true
	case errors.As(err, &errno):
		report(stage, attempt, "denied "+unix.ErrnoName(errno))
	default:
		report(stage, attempt, "denied "+err.Error())
	}
	return vmmcli.ExitPoweroff, true
}

func report(stage, attempt, outcome string) {
	os.Stderr.WriteString("hyperroot vmm: escape " + stage + " " + attempt + ": " + outcome + "\n")
}

// attempts are the escapes, by name. Each returns nil only if it worked.
func attempts(stage, disk, sock string) map[string]func() error {
	setup := stage == "setup"
	open := func(path string, flags int) func() error {
		return func() error {
			fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}
	}
	socket := func(family, typ, proto int) func() error {
		return func() error {
			fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}
	}
	return map[string]func() error{
		"disk":    open(disk, unix.O_RDWR),
		"disk-ro": open(disk, unix.O_RDONLY),
		"config":  open("/etc/hyperroot/config.yaml", unix.O_RDONLY),
		"kvm":     open("/dev/kvm", unix.O_RDWR),
		// The jail's own root, which its mode (0755) lets anyone list.
		"listdir": open("/", unix.O_RDONLY|unix.O_DIRECTORY),
		"mem":     open("/dev/mem", unix.O_RDONLY),
		// The appliance's own services listen on its loopback: a
		// datagram there is on its way to them.
		"inet": func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, []byte{0}, 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}})
		},
		// The appliance's interfaces, to reconfigure: any link but a
		// loopback in view is the host's network reached.
		"netlink":   hostLinks,
		"packet":    socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))),
		"neighbour": func() error { return connectUnix(sock) },
		"exec": func() error {
			return unix.Exec("/bin/hyperroot", []string{"hyperroot", "version"}, nil)
		},
		"ptrace": func() error {
			return eachOtherPid(setup, func(pid int) error { return unix.PtraceSeize(pid) })
		},
		"signal": func() error {
			return eachOtherPid(setup, func(pid int) error { return unix.Kill(pid, unix.SIGKILL) })
		},
		"mount": func() error { return unix.Mount("none", "/", "tmpfs", 0, "") },
		"module": func() error {
			_, _, e := unix.Syscall(unix.SYS_INIT_MODULE, 0, 0, 0)
			if e != 0 {
				return e
			}
			return nil
		},
		"capability": func() error {
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			data := [2]unix.CapUserData{{Effective: ^uint32(0), Permitted: ^uint32(0)}, {Effective: ^uint32(0), Permitted: ^uint32(0)}}
			return unix.Capset(&hdr, &data[0])
		},
		"setuid": func() error { return unix.Setresuid(0, 0, 0) },
	}
}

// hostLinks lists the network interfaces in view over rtnetlink: nil (an
// escape) when there is one besides the loopback, ENODEV when there is
// not.
func hostLinks() error {
	rib, err := syscall.NetlinkRIB(unix.RTM_GETLINK, unix.AF_UNSPEC)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return err
	}
	links := 0
	for _, m := range msgs {
		if m.Header.Type == unix.RTM_NEWLINK {
			links++
		}
	}
	if links > 1 {
		return nil
	}
	return unix.ENODEV
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// connectUnix connects to the vhost-user socket at path.
func connectUnix(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

// eachOtherPid makes call on every process the VMM could name other than
// its own threads: at set-up those the host's /proc lists (still mounted
// then), later pids 2 to 32768 (reading a directory is not what is being
// tried). It returns nil if any call succeeded (an escape), else the
// error most calls got.
func eachOtherPid(setup bool, call func(pid int) error) error {
	var pids []int
	if setup {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	if len(pids) == 0 {
		for pid := 2; pid <= 32768; pid++ {
			pids = append(pids, pid)
		}
	}
	counts := map[unix.Errno]int{}
	for _, pid := range pids {
		// Its own threads (the VMM is its PID namespace's pid 1) do not
		// count: tgkill with signal 0 finds them.
		if pid == 1 || unix.Tgkill(1, pid, 0) == nil {
			continue
		}
		err := call(pid)
		if err == nil {
			return nil
		}
		var errno unix.Errno
		if errors.As(err, &errno) {
			counts[errno]++
		}
	}
	most, n := unix.Errno(unix.ESRCH), 0
	for e, c := range counts {
		if c > n {
			most, n = e, c
		}
	}
	return most
}
