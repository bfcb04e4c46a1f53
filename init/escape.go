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
// syscall=<name>) says so instead. Which wall said no, PID 1 (built with
// the same tag) tells from the console's lines before a oneshot run's
// verdict (tally), with the count of attempts denied.

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
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

// tally is escapeTally: it reads the console as a person would, and
// tells the walls apart from what the console shows of each attempt:
//
//   - the seccomp filter: the VMM was killed ("vm <name> exited ...
//     reason=seccomp syscall=<name>");
//   - SELinux: the attempt was denied and the kernel logged an "avc:
//     denied" for the attacker's context (its category pair is its own);
//   - the namespaces: the target is not in view (ENOENT, ESRCH; for the
//     network ENETUNREACH, a loopback that is down, and ENODEV, no
//     interface of the host's);
//   - capabilities: EPERM;
//   - Landlock: EACCES listing the jail's root, which DAC lets anyone
//     list; other EACCES without a SELinux denial are "landlock or DAC".
type tally struct {
	mu       sync.Mutex
	names    []string          // the attackers, in the configuration's order
	pairs    map[string]string // attacker -> its SELinux context, from its start line
	denied   map[string]bool   // contexts with an avc denial
	seccomp  map[string]string // attacker -> "syscall=..." it was killed for
	outcomes map[string]string // attacker -> what it reported
}

func init() {
	escapeTally = &tally{pairs: map[string]string{}, denied: map[string]bool{},
		seccomp: map[string]string{}, outcomes: map[string]string{}}
}

var (
	startedRE = regexp.MustCompile(`hyperroot: vm (\S+) started .* selinux=(\S+)`)
	killedRE  = regexp.MustCompile(`hyperroot: vm (\S+) exited code=\d+ reason=seccomp (syscall=\S+)`)
	reportRE  = regexp.MustCompile(`^(\S+)\| hyperroot vmm: escape \S+ \S+: (.*)$`)
	avcRE     = regexp.MustCompile(`avc: +denied .* scontext=(\S+) `)
)

func (t *tally) Expect(vms []config.VM) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, vm := range vms {
		if strings.Contains(vm.Cmdline, "hyperroot.escape=") {
			t.names = append(t.names, vm.Name)
		}
	}
}

func (t *tally) Line(line string) {
	line = strings.TrimRight(line, "\r\n")
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := startedRE.FindStringSubmatch(line); m != nil {
		t.pairs[m[1]] = m[2]
	} else if m := killedRE.FindStringSubmatch(line); m != nil {
		t.seccomp[m[1]] = m[2]
	} else if m := reportRE.FindStringSubmatch(line); m != nil {
		t.outcomes[m[1]] = m[2]
	} else if m := avcRE.FindStringSubmatch(line); m != nil {
		t.denied[m[1]] = true
	}
}

func (t *tally) Report(c *console) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.names) == 0 {
		return
	}
	denied, walls := 0, map[string]int{}
	for _, name := range t.names {
		wall, detail := t.outcome(name)
		if wall == "" {
			c.Printf("escape: %s NOT DENIED (%s)", name, detail)
			continue
		}
		denied++
		walls[wall]++
		c.Printf("escape: %s denied by %s (%s)", name, wall, detail)
	}
	var by []string
	for wall, n := range walls {
		by = append(by, fmt.Sprintf("%s %d", wall, n))
	}
	sort.Strings(by)
	c.Printf("escape: %d/%d attempts denied (%s)", denied, len(t.names), strings.Join(by, ", "))
}

// outcome is the wall that denied name's attempt and how, or "" and why
// none did.
func (t *tally) outcome(name string) (wall, detail string) {
	if call, ok := t.seccomp[name]; ok {
		return "seccomp", call
	}
	outcome, ok := t.outcomes[name]
	if !ok {
		return "", "no report and no seccomp kill"
	}
	errno, ok := strings.CutPrefix(outcome, "denied ")
	if !ok {
		return "", outcome
	}
	if ctx := t.pairs[name]; ctx != "" && t.denied[ctx] {
		return "selinux", errno
	}
	switch errno {
	case "ENOENT", "ESRCH", "ENETUNREACH", "ENODEV":
		return "namespace", errno
	case "EPERM":
		return "capabilities", errno
	case "EACCES":
		if strings.HasSuffix(name, "-listdir") {
			return "landlock", errno
		}
		return "landlock or DAC", errno
	}
	return "other", errno
}
