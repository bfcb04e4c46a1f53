package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/child"
	"github.com/hyperroot/hyperroot/internal/svirt"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
)

// sVirt is the appliance's SELinux side of VM isolation (package svirt):
// nil when the kernel runs without SELinux, and then the jail alone holds
// each VMM.
type sVirt struct {
	cats svirt.Categorizer
}

// setupSELinux loads the image's policy, first thing after the base
// mounts, so that everything PID 1 starts afterwards runs labelled: the
// kernel's own enforcing=0 makes it permissive, for debugging the policy.
// It says on the console which mode is in force, or why there is none.
func setupSELinux(c *console, args cmdline) *sVirt {
	if !svirt.Available() {
		c.Printf("selinux: off (not enabled in this kernel: an lsm= list without selinux on its command line, or selinux=0 where the kernel takes it): each VMM is held by its jail alone")
		return nil
	}
	mode := svirt.Enforcing
	if args.Permissive {
		mode = svirt.Permissive
	}
	policy, err := os.ReadFile(svirt.PolicyPath)
	if err == nil {
		err = svirt.Load(policy, mode)
	}
	if err != nil {
		c.Errorf("selinux", fmt.Errorf("%w: each VMM is held by its jail alone", err))
		return nil
	}
	// PID 1's own places: what is created there from now on inherits
	// these labels, which the VMMs have no access to.
	for dir, label := range map[string]string{"/run": svirt.RunLabel, "/tmp": svirt.TmpLabel, "/dev/shm": svirt.TmpLabel} {
		if err := svirt.LabelPath(dir, label); err != nil {
			c.Errorf("selinux", err)
		}
	}
	// The configuration and board: the policy labels them by path, but
	// the kernel labels the initramfs's files by its root's label alone.
	if err := labelTree(confDir, svirt.ConfLabel); err != nil {
		c.Errorf("selinux", err)
	}
	if got := svirt.CurrentMode(); got != mode {
		c.Errorf("selinux", fmt.Errorf("asked for %s, the kernel says %s", mode, got))
		mode = got
	}
	how := "denials are enforced"
	if mode == svirt.Permissive {
		how = "denials are logged, not enforced (enforcing=0 on the command line)"
		// The kernel prints at most 10 audit records in 5 s: when
		// debugging the policy, every denial counts.
		os.WriteFile("/proc/sys/kernel/printk_ratelimit", []byte("0\n"), 0)
	}
	c.Printf("selinux: %s (policy of %d bytes: each VM's VMM runs as svirt_t with a category pair of its own; %s)", mode, len(policy), how)
	return &sVirt{}
}

// confDir holds the appliance's configuration and board description.
const confDir = "/etc/hyperroot"

// labelTree labels dir and everything below it.
func labelTree(dir, label string) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return svirt.LabelPath(p, label)
	})
}

// labelDevices gives the device nodes the policy tells apart their types,
// once their drivers are loaded: devtmpfs labels every node as a plain
// device, which no VMM may open.
func (s *sVirt) labelDevices(c *console) {
	if s == nil {
		return
	}
	for path, label := range map[string]string{"/dev/kvm": svirt.KVMLabel, "/dev/net/tun": svirt.TunLabel, "/dev/null": svirt.NullLabel,
		"/dev/vfio/vfio": svirt.VFIOLabel} {
		if err := svirt.LabelPath(path, label); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.Errorf("selinux", err)
		}
	}
}

// starter starts children through r in the SELinux domain label (r
// itself when SELinux is off).
func (s *sVirt) starter(r child.Starter, label string) child.Starter {
	if s == nil {
		return r
	}
	return labelledStarter{r, label}
}

type labelledStarter struct {
	r     child.Starter
	label string
}

func (l labelledStarter) Start(cmd *exec.Cmd) (ch <-chan unix.WaitStatus, err error) {
	err = svirt.Exec(l.label, func() error {
		ch, err = l.r.Start(cmd)
		return err
	})
	return ch, err
}

// labelVM gives vm a category pair and labels its disks (disks[i] open
// for vm.Disks[i]) for it: a writable disk becomes the VM's own image,
// which only a VMM of its pair may reach; a read-only one shared content,
// which any VMM may read and none write. It returns the VMM's domain and
// a function that undoes the labels when the VMM has exited: the
// writable disks get their labels back, the pair is freed. Read-only
// disks keep theirs, since other VMs may still be reading them.
func (s *sVirt) labelVM(vm config.VM, disks, groups []*os.File) (label string, undo func(), err error) {
	if s == nil {
		return "", func() {}, nil
	}
	pair, err := s.cats.Assign(vm.Name)
	if err != nil {
		return "", nil, err
	}
	type relabelled struct {
		f   *os.File
		old string
	}
	var done []relabelled
	undo = func() {
		for _, r := range done {
			svirt.Restore(r.f, r.old) // best effort: the VM is gone either way
			r.f.Close()
		}
		done = nil
		labelSockets(vm, svirt.ClosedSocketLabel)
		s.cats.Release(vm.Name)
	}
	// Its NIC sockets: only its own VMM reaches them, even another VMM
	// that is still root at its set-up.
	if err := labelSockets(vm, pair.SocketLabel()); err != nil {
		undo()
		return "", nil, err
	}
	for i, f := range disks {
		d := vm.Disks[i]
		// A cloud-init seed is read-only but the VM's own: it holds
		// its keys and user-data, which no other VMM may read.
		shared := d.ReadOnly && !isSeed(d)
		l := pair.ImageLabel()
		if shared {
			l = svirt.ContentLabel
		}
		old, err := svirt.Relabel(f, l)
		if err != nil {
			undo()
			return "", nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		if shared {
			continue
		}
		// A descriptor of our own to put the label back with: the
		// path may name something else by the time the VM stops.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			svirt.Restore(f, old)
			undo()
			return "", nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		done = append(done, relabelled{os.NewFile(uintptr(fd), d.Path), old})
	}
	// Its passed-through devices' IOMMU groups, as its own disks.
	for _, f := range groups {
		old, err := svirt.Relabel(f, pair.ImageLabel())
		if err != nil {
			undo()
			return "", nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			svirt.Restore(f, old)
			undo()
			return "", nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		done = append(done, relabelled{os.NewFile(uintptr(fd), f.Name()), old})
	}
	return pair.ProcessLabel(), undo, nil
}

// closeSockets puts every VM's NIC socket directory out of every VMM's
// reach (svirt.ClosedSocketLabel) once the switch has made them, before
// any VMM starts: a VM's own VMM opens its directory to its pair
// (labelVM) while it runs.
func (s *sVirt) closeSockets(c *console, vms []config.VM) {
	if s == nil {
		return
	}
	for _, vm := range vms {
		if err := labelSockets(vm, svirt.ClosedSocketLabel); err != nil {
			c.Errorf("selinux", err)
		}
	}
}

// labelSockets gives vm's NIC socket directory and the sockets in it
// label; sockets the switch makes there later take the directory's level
// (the policy's default_range). A VM without NICs, or whose directory the
// switch has not made, has nothing to label.
func labelSockets(vm config.VM, label string) error {
	if len(vm.NICs) == 0 {
		return nil
	}
	dir := vmmcli.NICDir(switchDir, vm.Name)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm %s: socket directory: %w", vm.Name, err)
	}
	if err := svirt.LabelPath(dir, label); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	for _, e := range ents {
		if e.Type()&os.ModeSocket == 0 {
			continue
		}
		if err := svirt.LabelPath(filepath.Join(dir, e.Name()), label); err != nil {
			return fmt.Errorf("vm %s: %w", vm.Name, err)
		}
	}
	return nil
}

// avcPrefix starts the text of the kernel's record of an SELinux decision.
const avcPrefix = "avc:"

// parseAVC picks a denial out of a kernel log record: the record's text
// from "avc:" on with its runs of spaces collapsed, or false when the
// record is not an SELinux denial.
func parseAVC(record string) (string, bool) {
	i := strings.Index(record, avcPrefix)
	if i < 0 {
		return "", false
	}
	text := strings.Join(strings.Fields(record[i:]), " ")
	if !strings.HasPrefix(text, "avc: denied ") {
		return "", false
	}
	return text, true
}
