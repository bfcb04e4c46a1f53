package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/vmm/seccomp"
)

// seccompEnv on the kernel command line (which the kernel passes to PID 1
// as environment) chooses what the VMMs' and the switch's seccomp filters
// do with a refused system call: "kill" (the default) or "log", for
// development. PID 1 passes it on as a flag: a jailed process has no
// environment.
const seccompEnv = "HYPERROOT_SECCOMP"

// seccompKillWait bounds how long a VMM's exit report waits for the
// kernel's record of the call that killed it: the audit thread prints it
// asynchronously, usually within milliseconds of the kill.
const seccompKillWait = 2 * time.Second

// seccompLog follows the kernel's audit records of the VMMs' seccomp
// actions in the kernel log (/dev/kmsg): which call killed a VMM, and in
// Log mode each call a filter would have refused, relayed once per VMM
// and call so that the lists (vmm/seccomp) can be proved and refreshed
// on an appliance, which has no shell to run dmesg in.
type seccompLog struct {
	c    *console
	mode seccomp.Mode

	mu     sync.Mutex
	vms    map[int]string          // pid -> "vm <name>" or "switch", while it runs
	killed map[int]string          // VMM pid -> the call that killed it
	logged map[loggedCall]bool     // relayed already
	wake   map[int]chan<- struct{} // a report waiting for pid's record
}

// startSeccompLog reads the mode from the environment, says once on the
// console which one is in force, and, where the kernel allows, turns on
// the kernel's audit (which is what logs seccomp actions; no audit daemon
// runs, so the kernel prints the records to its log) and follows it.
func startSeccompLog(c *console) *seccompLog {
	mode := seccomp.Kill
	if v := os.Getenv(seccompEnv); v != "" {
		m, err := seccomp.ParseMode(v)
		if err != nil || m == seccomp.Off {
			c.Printf("seccomp: %s=%s: want kill or log; using kill", seccompEnv, v)
			m = seccomp.Kill
		}
		mode = m
	}
	l := newSeccompLog(c, mode)
	kmsg, err := os.Open("/dev/kmsg")
	if err == nil {
		// Only what comes from now on: the VMMs start later.
		_, err = kmsg.Seek(0, io.SeekEnd)
	}
	if err == nil {
		err = enableAudit()
	}
	if err == nil {
		err = os.WriteFile("/proc/sys/kernel/printk_ratelimit_burst", []byte(auditBurst), 0)
	}
	if err == nil && mode == seccomp.Log {
		// The kernel rate-limits the audit records it prints (10 in 5 s):
		// in Log mode every one counts.
		err = os.WriteFile("/proc/sys/kernel/printk_ratelimit", []byte("0\n"), 0)
	}
	switch {
	case err != nil:
		c.Printf("seccomp: %s (no kernel log of seccomp actions: %v; a VMM killed by its filter is reported with syscall=unknown)", mode, err)
	case mode == seccomp.Log:
		c.Printf("seccomp: log (development: system calls the VMMs' filters refuse are logged, not killed)")
	default:
		c.Printf("seccomp: kill")
	}
	if err == nil {
		goLoop(c, "seccomp log", func() { l.follow(kmsg) })
	} else if kmsg != nil {
		kmsg.Close()
	}
	return l
}

// loggedCall is a call a VMM's filter would have refused, in log mode.
type loggedCall struct {
	pid     int
	syscall string
}

func newSeccompLog(c *console, mode seccomp.Mode) *seccompLog {
	return &seccompLog{c: c, mode: mode, vms: map[int]string{}, killed: map[int]string{},
		logged: map[loggedCall]bool{}, wake: map[int]chan<- struct{}{}}
}

// Mode is the --seccomp flag of the VMMs.
func (l *seccompLog) Mode() string {
	if l == nil {
		return ""
	}
	return l.mode.String()
}

// Track names VMM pid after VM name until Killed is asked about it.
func (l *seccompLog) Track(pid int, name string) { l.track(pid, "vm "+name) }

// TrackSwitch follows the switch's pid, whose filter (vmm/seccomp's Switch)
// kills and logs the same way, until Killed or Forget.
func (l *seccompLog) TrackSwitch(pid int) { l.track(pid, "switch") }

func (l *seccompLog) track(pid int, label string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.vms[pid] = label
}

// Killed is the system call that made VMM pid's filter kill it, as the
// kernel's audit recorded it, or "unknown"; it waits up to
// seccompKillWait for the record. It forgets pid.
func (l *seccompLog) Killed(pid int) string {
	if l == nil {
		return "unknown"
	}
	woken := make(chan struct{}, 1)
	l.mu.Lock()
	name, ok := l.killed[pid]
	if !ok {
		l.wake[pid] = woken
	}
	l.mu.Unlock()
	if !ok {
		select {
		case <-woken:
		case <-time.After(seccompKillWait):
		}
		l.mu.Lock()
		name, ok = l.killed[pid]
		l.mu.Unlock()
	}
	l.forget(pid)
	if !ok {
		return "unknown"
	}
	return name
}

// forget drops what is known about VMM pid, which has exited.
func (l *seccompLog) forget(pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.vms, pid)
	delete(l.killed, pid)
	delete(l.wake, pid)
	for k := range l.logged {
		if k.pid == pid {
			delete(l.logged, k)
		}
	}
}

// Forget drops VMM pid, which has exited other than by its filter.
func (l *seccompLog) Forget(pid int) {
	if l != nil {
		l.forget(pid)
	}
}

// follow reads the kernel log for seccomp records and SELinux denials
// until it fails.
func (l *seccompLog) follow(kmsg *os.File) {
	defer kmsg.Close()
	buf := make([]byte, 8192) // a /dev/kmsg read returns one record
	for {
		n, err := kmsg.Read(buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records were overwritten before we read them
		}
		if err != nil {
			l.c.Printf("seccomp: kernel log: %v", err)
			return
		}
		rec := string(buf[:n])
		if r, ok := seccomp.ParseRecord(rec); ok {
			l.record(r)
		} else if avc, ok := parseAVC(rec); ok {
			// Every SELinux denial, of any process: a normal run has
			// none, so each one is news (the kernel rate-limits them).
			l.c.Printf("selinux: %s", avc)
		}
	}
}

func (l *seccompLog) record(r seccomp.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	label, ours := l.vms[r.PID]
	if !ours {
		return // not a VMM or the switch (or one already reported)
	}
	if r.Killed {
		l.killed[r.PID] = r.Syscall
		if w, ok := l.wake[r.PID]; ok {
			w <- struct{}{}
			delete(l.wake, r.PID)
		}
		return
	}
	if k := (loggedCall{r.PID, r.Syscall}); !l.logged[k] {
		l.logged[k] = true
		l.c.Printf("%s seccomp: logged syscall=%s", label, r.Syscall)
	}
}

// enableAudit turns the kernel's audit on, as the audit=1 boot parameter
// would: with no audit daemon listening, the kernel prints its records,
// seccomp's included, to the kernel log.
func enableAudit() error {
	var st [auditStatusLen]byte
	binary.NativeEndian.PutUint32(st[0:], unix.AUDIT_STATUS_ENABLED|unix.AUDIT_STATUS_BACKLOG_LIMIT) // mask
	binary.NativeEndian.PutUint32(st[4:], 1)                                                         // enabled
	binary.NativeEndian.PutUint32(st[20:], auditBacklog)                                             // backlog_limit
	if _, err := auditRequest(unix.AUDIT_SET, st[:]); err != nil {
		return fmt.Errorf("audit: enable: %w", err)
	}
	return nil
}

// auditBacklog is how many audit records the kernel queues for printing
// (its default is 64): a burst of denials, such as a VMM taken over trying
// one wall after another, must not lose the record that explains a kill.
const auditBacklog = 1024

// auditBurst is how many records the kernel prints in one 5-second
// interval (printk_ratelimit_burst, default 10): audit records are the
// only frequent users of that limit on an appliance, and each one is news.
const auditBurst = "100\n"

// auditEnabled tells whether the kernel's audit is on.
func auditEnabled() (bool, error) {
	st, err := auditRequest(unix.AUDIT_GET, nil)
	if err != nil {
		return false, fmt.Errorf("audit: status: %w", err)
	}
	if len(st) < 8 {
		return false, fmt.Errorf("audit: status: %d bytes", len(st))
	}
	return binary.NativeEndian.Uint32(st[4:]) != 0, nil
}

// auditStatusLen is the size of struct audit_status: mask, enabled and
// nine more 32-bit fields (the kernel reads only those mask names).
const auditStatusLen = 11 * 4

// auditRequest sends one audit netlink request and returns the payload of
// the kernel's answer (AUDIT_GET's status; nothing for an acknowledgement).
func auditRequest(typ uint16, payload []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	ne := binary.NativeEndian
	msg := make([]byte, unix.NLMSG_HDRLEN+len(payload))
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], typ)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], 1) // sequence
	copy(msg[unix.NLMSG_HDRLEN:], payload)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var answer []byte
	acked, wantAnswer := false, typ == unix.AUDIT_GET
	buf := make([]byte, 8192)
	for !acked || wantAnswer && answer == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case typ:
				answer = append([]byte(nil), m.Data...)
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, fmt.Errorf("short netlink error")
				}
				if e := int32(ne.Uint32(m.Data)); e != 0 {
					return nil, unix.Errno(-e)
				}
				// The kernel may send the answer after it (from a thread of its own).
				acked = true
			}
		}
	}
	return answer, nil
}
