package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
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
// against the VMM's own uid.

// refusedReconnect says whether a line of a VMM's output is a refused
// reconnection to the switch.
func refusedReconnect(line string) bool {
	return strings.HasPrefix(line, "vmm: virtio-net ") && strings.Contains(line, ": reconnect: ") && strings.Contains(line, "permission denied")
}

// describeSockets says what the filesystem holds of vm's NIC sockets in
// the switch's directory dir: owner, mode and SELinux label of the
// directory and of each socket.
func describeSockets(dir string, vm config.VM) string {
	d := vmmcli.NICDir(dir, vm.Name)
	parts := []string{fmt.Sprintf("vmm uid %d; %s", vm.ID, fileState(d))}
	for i := range vm.NICs {
		parts = append(parts, fileState(vmmcli.NICSocket(dir, vm.Name, i)))
	}
	return strings.Join(parts, "; ")
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
	return fmt.Sprintf("%s: uid=%d gid=%d mode=%v label=%s", filepath.Base(path), st.Uid, st.Gid, os.FileMode(st.Mode&0o7777), label)
}
