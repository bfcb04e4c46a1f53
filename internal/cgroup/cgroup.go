// Package cgroup manages cgroup v2 groups by writing cgroupfs directly:
// the appliance has no systemd or D-Bus to ask, and the interface is a
// handful of text files (Documentation/admin-guide/cgroup-v2.rst).
//
// The supervisor makes one group per VM and starts the VMM straight into
// it (clone3 with CLONE_INTO_CGROUP, through syscall.SysProcAttr's
// UseCgroupFD), so that no instruction of a guest ever runs outside its
// limits; it reads the group's events to tell an OOM kill from any other
// SIGKILL, and removes the group when the VMM is gone.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Root is where PID 1 mounts the cgroup v2 hierarchy.
const Root = "/sys/fs/cgroup"

// Group is one cgroup directory.
type Group struct {
	Path string
}

// Open returns the group at path, which must exist.
func Open(path string) (*Group, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("cgroup: %s is not a directory", path)
	}
	return &Group{Path: path}, nil
}

// Mkdir makes (or finds) the child group name of g. The controllers it
// will need must have been enabled in g (EnableControllers).
func (g *Group) Mkdir(name string) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup: bad group name %q", name)
	}
	p := filepath.Join(g.Path, name)
	if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return &Group{Path: p}, nil
}

// Controllers lists the controllers available in g (cgroup.controllers).
func (g *Group) Controllers() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(g.Path, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return strings.Fields(string(b)), nil
}

// EnableControllers makes the named controllers available to g's children
// (cgroup.subtree_control). A group with enabled controllers may hold no
// processes of its own (cgroup v2's "no internal processes" rule), the
// root excepted.
func (g *Group) EnableControllers(names ...string) error {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("+" + n)
	}
	return g.Set("cgroup.subtree_control", b.String())
}

// Set writes value to the group's file, as one write (cgroupfs takes a
// whole value per write).
func (g *Group) Set(file, value string) error {
	if strings.ContainsRune(file, '/') {
		return fmt.Errorf("cgroup: bad file name %q", file)
	}
	p := filepath.Join(g.Path, file)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", value, p, err)
	}
	return nil
}

// Get reads the group's file, without the final newline.
func (g *Group) Get(file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(g.Path, file))
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Keyed reads a flat-keyed file ("key value" lines: memory.events,
// cpu.stat) into a map.
func (g *Group) Keyed(file string) (map[string]uint64, error) {
	f, err := os.Open(filepath.Join(g.Path, file))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			m[k] = n
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cgroup: read %s: %w", f.Name(), err)
	}
	return m, nil
}

// CPUUsage is the CPU time the group's processes used (cpu.stat
// usage_usec), counted whether or not the cpu controller is enabled.
func (g *Group) CPUUsage() (time.Duration, error) {
	m, err := g.Keyed("cpu.stat")
	if err != nil {
		return 0, err
	}
	return time.Duration(m["usage_usec"]) * time.Microsecond, nil
}

// OOMKills is how many processes the kernel's OOM killer killed in the
// group because it reached memory.max (memory.events oom_kill).
func (g *Group) OOMKills() (uint64, error) {
	m, err := g.Keyed("memory.events")
	if err != nil {
		return 0, err
	}
	return m["oom_kill"], nil
}

// Stalled is how long the group's tasks have waited for a resource
// ("cpu", "memory" or "io"), from its pressure file's "some" line: the
// total time at least one of them was stalled. For memory this is where
// memory.high shows: the kernel makes a task that charges past it sleep
// (and counts the sleep here) instead of killing it.
func (g *Group) Stalled(resource string) (time.Duration, error) {
	s, err := g.Get(resource + ".pressure")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "some ")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("cgroup: %s.pressure total %q: %w", resource, v, err)
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
	}
	return 0, fmt.Errorf("cgroup: %s.pressure has no \"some ... total=\" line", resource)
}

// MemoryCurrent is the memory charged to the group now (memory.current).
func (g *Group) MemoryCurrent() (uint64, error) {
	v, err := g.Get("memory.current")
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup: memory.current %q: %w", v, err)
	}
	return n, nil
}

// Procs lists the processes in the group (cgroup.procs).
func (g *Group) Procs() ([]int, error) {
	s, err := g.Get("cgroup.procs")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(s) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Move moves process pid into the group.
func (g *Group) Move(pid int) error {
	return g.Set("cgroup.procs", strconv.Itoa(pid))
}

// Dir opens the group's directory for CLONE_INTO_CGROUP
// (syscall.SysProcAttr.CgroupFD); the caller closes it.
func (g *Group) Dir() (*os.File, error) {
	fd, err := unix.Open(g.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: open %s: %w", g.Path, err)
	}
	return os.NewFile(uintptr(fd), g.Path), nil
}

// Remove removes the group once it is empty. The kernel empties a group
// shortly after its last process was reaped, not at once, so Remove waits
// up to wait for that; a group that still holds processes then is left
// alone (an error says so).
func (g *Group) Remove(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Rmdir(g.Path)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			time.Sleep(5 * time.Millisecond)
		default:
			return fmt.Errorf("cgroup: remove %s: %w", g.Path, err)
		}
	}
}
