package seccomp

import (
	"strconv"
	"strings"

	"github.com/elastic/go-seccomp-bpf/arch"
)

// Record is what the kernel's audit says about a system call a seccomp
// filter refused or logged: a line such as
//
//	audit: type=1326 audit(1796204496.123:45): auid=4294967295 uid=0 gid=0
//	ses=4294967295 subj=unconfined pid=98 comm="hyperroot" exe="/init"
//	sig=31 arch=c000003e syscall=41 compat=0 ip=0x4a1b2c code=0x80000000
//
// in the kernel log (/dev/kmsg), printed there when audit is enabled and no
// audit daemon listens, as in the appliance.
type Record struct {
	PID     int
	Syscall string // its name, or "syscall-<n>" for a number the table lacks
	Killed  bool   // the process was killed (sig= is not 0), rather than the call logged
}

// auditSeccomp is the audit record type of seccomp actions (AUDIT_SECCOMP).
const auditSeccomp = "type=1326"

// ParseRecord reads one kernel log line (a /dev/kmsg record or a dmesg
// line); ok is false when the line is not a seccomp record.
func ParseRecord(line string) (r Record, ok bool) {
	i := strings.Index(line, auditSeccomp+" ")
	if i < 0 {
		return Record{}, false
	}
	var nr = -1
	var archID string
	r.PID = -1
	for _, f := range strings.Fields(line[i+len(auditSeccomp):]) {
		k, v, found := strings.Cut(f, "=")
		if !found {
			continue
		}
		switch k {
		case "pid":
			if n, err := strconv.Atoi(v); err == nil {
				r.PID = n
			}
		case "syscall":
			if n, err := strconv.Atoi(v); err == nil {
				nr = n
			}
		case "sig":
			r.Killed = v != "0"
		case "arch":
			archID = v
		}
	}
	if r.PID < 0 || nr < 0 {
		return Record{}, false
	}
	r.Syscall = syscallName(archID, nr)
	return r, true
}

// syscallName names system call nr of the audit architecture archID (hex,
// as audit prints it).
func syscallName(archID string, nr int) string {
	for _, a := range []*arch.Info{arch.X86_64, arch.I386, arch.AARCH64, arch.ARM} {
		if strconv.FormatUint(uint64(a.ID), 16) != archID {
			continue
		}
		if name, ok := a.SyscallNumbers[nr]; ok {
			return name
		}
	}
	return "syscall-" + strconv.Itoa(nr)
}
