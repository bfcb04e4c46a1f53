package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// A VMM reconnecting to a restarted switch was once refused with
// "permission denied" on every attempt while its neighbour reconnected
// (docs/TESTING.md, Investigations). The jailed VMM cannot look at why (it
// has no stat in its seccomp filter); PID 1 can: on such a refusal it says
// who owns the VM's socket directory and sockets, their modes and labels,
// against the VMM's own uid; and, through /proc/<pid>/root, the same path
// as the VMM's own mount namespace shows it (every component from its
// root, with device and inode, to compare with PID 1's), the VMM's
// credentials and SELinux context, and its mount of the directory. That
// refusal came back with all of PID 1's view in order (2026-12-05); the
// difference was in the VMM's: directories of its jail made 0600 under a
// umask it had inherited from PID 1 (fixed: jail.mkdirAllAt,
// listenPrivate). The description stays for any other cause.

// refusedReconnect says whether a line of a VMM's output is a refused
// reconnection to the switch.
func refusedReconnect(line string) bool {
	return strings.HasPrefix(line, "vmm: virtio-net ") && strings.Contains(line, ": reconnect: ") && strings.Contains(line, "permission denied")
}

// describeSockets says what the filesystem holds of vm's NIC sockets in
// the switch's directory dir: owner, mode and SELinux label of the
// directory and of each socket; with pid, its VMM's, the same as that
// process sees them (procRoot: /proc in production).
func describeSockets(dir string, vm config.VM, procRoot string, pid int) string {
	d := vmmcli.NICDir(dir, vm.Name)
	parts := []string{fmt.Sprintf("vmm uid %d; %s", vm.ID, fileState(d))}
	for i := range vm.NICs {
		parts = append(parts, fileState(vmmcli.NICSocket(dir, vm.Name, i)))
	}
	if pid <= 0 {
		return strings.Join(parts, "; ")
	}
	proc := filepath.Join(procRoot, strconv.Itoa(pid))
	parts = append(parts, fmt.Sprintf("vmm pid %d %s context=%s; as it sees them:", pid, procCreds(proc), procFirstLine(filepath.Join(proc, "attr", "current"))))
	// Every component from the VMM's root down to the first socket.
	path := d
	if len(vm.NICs) > 0 {
		path = vmmcli.NICSocket(dir, vm.Name, 0)
	}
	at := filepath.Join(proc, "root")
	parts = append(parts, fileState(at+"/"))
	for _, c := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		at = filepath.Join(at, c)
		parts = append(parts, fileState(at))
	}
	parts = append(parts, "its mount: "+mountOf(filepath.Join(proc, "mountinfo"), d))
	return strings.Join(parts, "; ")
}

// procCreds is the Uid, Gid and Groups lines of a process's status.
func procCreds(proc string) string {
	b, err := os.ReadFile(filepath.Join(proc, "status"))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && (k == "Uid" || k == "Gid" || k == "Groups") {
			out = append(out, k+"="+strings.Join(strings.Fields(v), ","))
		}
	}
	return strings.Join(out, " ")
}

func procFirstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	l, _, _ := strings.Cut(strings.TrimRight(string(b), "\x00\n"), "\n")
	return l
}

// mountOf is the line of a mountinfo file whose mount point is dir, or
// says there is none.
func mountOf(mountinfo, dir string) string {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return err.Error()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return l
		}
	}
	return "none at " + dir
}

// fileState is one file's owner, mode and label, or why there is none.
func fileState(path string) string {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Sprintf("%s: %v", filepath.Base(path), err)
	}
	label := "none"
	buf := make([]byte, 256)
	if n, err := unix.Lgetxattr(path, "security.selinux", buf); err == nil {
		label = string(bytes.TrimRight(buf[:n], "\x00"))
	}
	return fmt.Sprintf("%s: uid=%d gid=%d mode=%v label=%s ino=%d:%d", filepath.Base(path), st.Uid, st.Gid, os.FileMode(st.Mode&0o7777), label, st.Dev, st.Ino)
}
