package jail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// checkNamespaces refuses to go on unless the process runs in namespaces
// other than its parent's (Attr; but the network one with hostNet, see
// AttrHostNetwork): pivoting the root of the host's mount namespace would
// pull it from under every process on the host. It looks
// through the host's /proc, still mounted at this point, where the process
// finds itself (and so its parent) under its pid in the host's PID
// namespace.
func checkNamespaces(hostNet bool) error {
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return fmt.Errorf("jail: find itself in /proc: %w", err)
	}
	st, err := os.ReadFile("/proc/" + self + "/status")
	if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	parent := ""
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			parent = strings.TrimSpace(v)
		}
	}
	if parent == "" || parent == "0" {
		return errors.New("jail: no parent process to compare namespaces with")
	}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		if ns == "net" && hostNet {
			continue
		}
		var mine, theirs unix.Stat_t
		if err := unix.Stat("/proc/self/ns/"+ns, &mine); err != nil {
			return fmt.Errorf("jail: namespace %s: %w", ns, err)
		}
		if err := unix.Stat("/proc/"+parent+"/ns/"+ns, &theirs); err != nil {
			return fmt.Errorf("jail: namespace %s of the parent (pid %s): %w", ns, parent, err)
		}
		if mine.Ino == theirs.Ino && mine.Dev == theirs.Dev {
			return fmt.Errorf("jail: in its parent's %s namespace, want one of its own (start the process with jail.Attr)", ns)
		}
	}
	return nil
}

// newRoot replaces the process's root with an empty tmpfs that holds, at
// their own paths, read-only bind mounts of binds, read-write ones of
// writable, and nothing else, and makes it read-only. It reports whether
// pivot_root did it (see Report.PivotRoot).
func newRoot(binds, writable []string) (pivoted bool, err error) {
	// Clones of the directories to keep, taken first, while their paths
	// still lead to them: detached mounts, attached below later.
	type bind struct {
		path string
		fd   int
	}
	var bs []bind
	defer func() {
		for _, b := range bs {
			unix.Close(b.fd)
		}
	}()
	all := append(slices.Clip(binds), writable...)
	for i, p := range all {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return false, fmt.Errorf("jail: bind %q: want a clean absolute path below /", p)
		}
		if slices.Contains(all[:i], p) {
			return false, fmt.Errorf("jail: bind %s: given twice", p)
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			return false, fmt.Errorf("jail: bind %s: %w", p, err)
		}
		bs = append(bs, bind{p, fd})
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
		if i < len(binds) {
			attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
		}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return false, fmt.Errorf("jail: bind %s: mount flags: %w", p, err)
		}
	}
	// Nothing mounted here from now on reaches the host, nor the reverse.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return false, fmt.Errorf("jail: make mounts private: %w", err)
	}
	// The host's mounts (/proc, /dev, /sys, /run, ...) go first: pivot_root
	// would take them away with the old root, but where the root is the
	// initramfs they would stay under the new one.
	if err := detachSubmounts(); err != nil {
		return false, err
	}
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("jail: tmpfs: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"mode", "0755"}, {"size", "64k"}, {"nr_inodes", "64"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("jail: tmpfs %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return false, fmt.Errorf("jail: tmpfs: %w", err)
	}
	root, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return false, fmt.Errorf("jail: mount tmpfs: %w", err)
	}
	defer unix.Close(root)
	// On top of the old root: a place every system has, and attached, so
	// that the binds can be mounted inside it (older kernels attach
	// nothing to a detached mount).
	if err := unix.MoveMount(root, "", unix.AT_FDCWD, "/", unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return false, fmt.Errorf("jail: attach the new root: %w", err)
	}
	for _, b := range bs {
		rel := strings.TrimPrefix(b.path, "/")
		if err := mkdirAllAt(root, rel); err != nil {
			return false, fmt.Errorf("jail: bind %s: %w", b.path, err)
		}
		if err := unix.MoveMount(b.fd, "", root, rel, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return false, fmt.Errorf("jail: bind %s: %w", b.path, err)
		}
	}
	if err := unix.Fchdir(root); err != nil {
		return false, fmt.Errorf("jail: chdir to the new root: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one, and the
	// detach takes it, and all below it, out of this namespace.
	switch err := unix.PivotRoot(".", "."); {
	case err == nil:
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return false, fmt.Errorf("jail: detach the old root: %w", err)
		}
		pivoted = true
	case errors.Is(err, unix.EINVAL):
		// The root is the initramfs, which pivot_root refuses: chroot
		// into the tmpfs mounted over it, as switch_root does.
		if err := unix.Chroot("."); err != nil {
			return false, fmt.Errorf("jail: chroot: %w", err)
		}
	default:
		return false, fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return false, fmt.Errorf("jail: chdir /: %w", err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
	if err := unix.MountSetattr(root, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return false, fmt.Errorf("jail: make the root read-only: %w", err)
	}
	return pivoted, nil
}

// mkdirAllAt makes the directories of rel below dirfd, 0755 whatever the
// process's umask: the jailed process, no longer root, must be able to
// walk them to its binds. A umask inherited from a parent that had
// narrowed its own for a moment (PID 1 once did, to make its API socket,
// while it started VMMs) made them 0600, and the VMM's reconnections to
// its switch socket were refused with EACCES for good.
func mkdirAllAt(dirfd int, rel string) error {
	p := ""
	for _, part := range strings.Split(rel, "/") {
		p = filepath.Join(p, part)
		err := unix.Mkdirat(dirfd, p, 0o755)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err == nil {
			err = unix.Fchmodat(dirfd, p, 0o755, 0)
		}
		if err != nil {
			return fmt.Errorf("mkdir %s: %w", p, err)
		}
	}
	return nil
}

// detachSubmounts detaches every mount on top of the root's own one (each
// with all below it), as /proc/self/mountinfo lists them.
func detachSubmounts() error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	type mnt struct {
		id, parent int
		point      string
	}
	var ms []mnt
	rootID := -1
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		m := mnt{id, parent, unescapeMountinfo(f[4])}
		if m.point == "/" {
			rootID = id // the last mount on / is the one the root shows
		}
		ms = append(ms, m)
	}
	if rootID < 0 {
		return errors.New("jail: mountinfo lists no root mount")
	}
	for _, m := range ms {
		if m.parent != rootID || m.point == "/" {
			continue
		}
		err := unix.Unmount(m.point, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		// EINVAL: gone already, with a mount it was below.
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("jail: detach %s: %w", m.point, err)
		}
	}
	return nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
