// Package svirt keeps the VMs of one appliance apart with SELinux, the way
// libvirt's sVirt does, with no userland: PID 1 loads the appliance's own
// policy (image/selinux/policy.conf, compiled when the image is built),
// gives each running VM a category pair of its own, starts the VM's VMM in
// the svirt_t domain at that pair and labels the VM's writable disks with
// it while the VM runs. The policy's MCS constraints then keep one VMM off
// another VM's disks and processes even if it got past every other wall
// (file modes, namespaces, Landlock): the kernel checks the labels on each
// open, read and write.
//
// Labels and exec contexts go through github.com/opencontainers/selinux;
// what it does not do (loading a policy, labelling an open descriptor) is
// done here with plain system calls.
package svirt

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime"
	"strings"
	"sync"

	selinux "github.com/opencontainers/selinux/go-selinux"
	"golang.org/x/sys/unix"
)

// PolicyPath is where the image carries the compiled policy.
const PolicyPath = "/etc/hyperroot/selinux/policy"

// fsDir is where selinuxfs is mounted, as every SELinux system has it.
const fsDir = "/sys/fs/selinux"

// Categories is how many MCS categories the policy declares (c0..c255):
// 32640 distinct pairs, far more than VMs run at once.
const Categories = 256

// The labels of the policy's types (see policy.conf for what each is).
const (
	// ContentLabel labels a disk any number of VMs may read and none write.
	ContentLabel = "system_u:object_r:svirt_content_t:s0"
	// SwitchLabel is the domain of the virtio-net switch. Its range
	// covers every category: it maps every VM's RAM.
	SwitchLabel = "system_u:system_r:hyperroot_switch_t:s0-s0:c0.c255"

	KVMLabel  = "system_u:object_r:kvm_device_t:s0"
	TunLabel  = "system_u:object_r:tun_device_t:s0"
	NullLabel = "system_u:object_r:null_device_t:s0"
	VFIOLabel = "system_u:object_r:vfio_device_t:s0"
	RunLabel  = "system_u:object_r:hyperroot_run_t:s0"
	// ClosedSocketLabel is a VM's socket directory and sockets while it
	// does not run: at categories no VMM's pair dominates.
	ClosedSocketLabel = "system_u:object_r:svirt_sock_t:s0:c0.c255"
	ConfLabel         = "system_u:object_r:hyperroot_conf_t:s0"
	TmpLabel          = "system_u:object_r:hyperroot_tmp_t:s0"
	xattrName         = "security.selinux"
	maxLabelSize      = 256
)

// Mode is what SELinux does on this appliance.
type Mode int

const (
	// Off: the kernel has no SELinux (or it is not among the enabled
	// LSMs); the jail alone holds the VMMs.
	Off Mode = iota
	// Permissive: the policy is loaded and labels are applied, denials
	// are logged and not enforced (for debugging a policy).
	Permissive
	// Enforcing: denials are enforced. The default.
	Enforcing
)

func (m Mode) String() string {
	switch m {
	case Permissive:
		return "permissive"
	case Enforcing:
		return "enforcing"
	}
	return "off"
}

// Available tells whether the running kernel has SELinux enabled: it
// registers its filesystem, selinuxfs, only then.
func Available() bool {
	data, err := os.ReadFile("/proc/filesystems")
	return err == nil && hasFilesystem(data, "selinuxfs")
}

func hasFilesystem(list []byte, name string) bool {
	for _, line := range bytes.Split(list, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) > 0 && string(f[len(f)-1]) == name {
			return true
		}
	}
	return false
}

// Load mounts selinuxfs, loads the compiled policy and sets the mode. It
// is for PID 1, once, before it starts anything: until a policy is
// loaded every process and file carries the kernel's initial labels.
func Load(policy []byte, mode Mode) error {
	if mode == Off {
		return errors.New("selinux: nothing to load in mode off")
	}
	if err := os.MkdirAll(fsDir, 0o755); err != nil {
		return fmt.Errorf("selinux: %w", err)
	}
	err := unix.Mount("selinuxfs", fsDir, "selinuxfs", unix.MS_NOSUID|unix.MS_NOEXEC, "")
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("selinux: mount selinuxfs: %w", err)
	}
	// One write of the whole policy: the kernel takes it or refuses it.
	if err := writeFile(fsDir+"/load", policy); err != nil {
		return fmt.Errorf("selinux: load policy: %w", err)
	}
	enforce := "0"
	if mode == Enforcing {
		enforce = "1"
	}
	if err := writeFile(fsDir+"/enforce", []byte(enforce)); err != nil {
		return fmt.Errorf("selinux: set %s: %w", mode, err)
	}
	return nil
}

func writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	n, err := f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != len(data) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(data))
	}
	return err
}

// CurrentMode reads the mode back from the kernel.
func CurrentMode() Mode {
	switch selinux.EnforceMode() {
	case selinux.Enforcing:
		return Enforcing
	case selinux.Permissive:
		return Permissive
	}
	return Off
}

// Pair is a VM's two categories, lowest first.
type Pair [2]uint16

// Level is the MCS level of the pair, such as "s0:c3,c17".
func (p Pair) Level() string { return fmt.Sprintf("s0:c%d,c%d", p[0], p[1]) }

// ProcessLabel is the context a VM's VMM runs in.
func (p Pair) ProcessLabel() string { return "system_u:system_r:svirt_t:" + p.Level() }

// SocketLabel is the context of the VM's NIC socket directory, and of the
// sockets in it, while it runs.
func (p Pair) SocketLabel() string { return "system_u:object_r:svirt_sock_t:" + p.Level() }

// ImageLabel is the context of the VM's writable disks while it runs.
func (p Pair) ImageLabel() string { return "system_u:object_r:svirt_image_t:" + p.Level() }

// pairs is how many distinct pairs there are.
const pairs = Categories * (Categories - 1) / 2

// pairAt is the i-th pair (0 <= i < pairs) in a fixed order.
func pairAt(i int) Pair {
	a := 0
	for n := Categories - 1; i >= n; n-- {
		i -= n
		a++
	}
	return Pair{uint16(a), uint16(a + 1 + i)}
}

// Categorizer hands out category pairs, one per running VM and no two
// alike. A VM gets the same pair each time it starts unless another VM
// holds it, so that labels on the console are stable from run to run.
type Categorizer struct {
	mu   sync.Mutex
	byVM map[string]Pair
	used map[Pair]string
}

// Assign returns vm's pair, taking a free one if it has none.
func (c *Categorizer) Assign(vm string) (Pair, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.byVM[vm]; ok {
		return p, nil
	}
	if c.byVM == nil {
		c.byVM, c.used = map[string]Pair{}, map[Pair]string{}
	}
	h := fnv.New32a()
	h.Write([]byte(vm))
	start := int(h.Sum32() % pairs)
	for k := 0; k < pairs; k++ {
		p := pairAt((start + k) % pairs)
		if _, taken := c.used[p]; !taken {
			c.byVM[vm], c.used[p] = p, vm
			return p, nil
		}
	}
	return Pair{}, fmt.Errorf("selinux: all %d category pairs are in use", pairs)
}

// Release frees vm's pair.
func (c *Categorizer) Release(vm string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.byVM[vm]; ok {
		delete(c.byVM, vm)
		delete(c.used, p)
	}
}

// Relabel sets the label of the open file f and returns what it was, for
// Restore. A file system that cannot carry labels is an error: a disk
// there could not be kept from the other VMs.
func Relabel(f *os.File, label string) (old string, err error) {
	old, err = fileLabel(f)
	if err != nil {
		return "", err
	}
	if err := setFileLabel(f, label); err != nil {
		return "", err
	}
	return old, nil
}

// Restore puts back a label Relabel replaced.
func Restore(f *os.File, old string) error { return setFileLabel(f, old) }

func fileLabel(f *os.File) (string, error) {
	buf := make([]byte, maxLabelSize)
	n, err := unix.Fgetxattr(int(f.Fd()), xattrName, buf)
	if err != nil {
		return "", fmt.Errorf("read its SELinux label: %w", err)
	}
	return strings.TrimRight(string(buf[:n]), "\x00"), nil
}

func setFileLabel(f *os.File, label string) error {
	if err := unix.Fsetxattr(int(f.Fd()), xattrName, []byte(label), 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("label it %s: its file system cannot carry SELinux labels", label)
		}
		return fmt.Errorf("label it %s: %w", label, err)
	}
	return nil
}

// LabelPath labels the file at path (a device node, a directory PID 1
// owns), not following a symbolic link.
func LabelPath(path, label string) error {
	if err := selinux.LsetFileLabel(path, label); err != nil {
		return fmt.Errorf("selinux: label %s %s: %w", path, label, err)
	}
	return nil
}

// Exec runs start, which must start one process and return (exec.Cmd's
// Start), with label as the context that process's exec takes. The label
// belongs to the calling thread, so the goroutine stays on it throughout;
// if it cannot be cleared again, the thread is left locked, and Go ends
// it with the goroutine rather than let a later start inherit the label.
func Exec(label string, start func() error) error {
	runtime.LockOSThread()
	if err := selinux.SetExecLabel(label); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("selinux: exec as %s: %w", label, err)
	}
	err := start()
	if selinux.SetExecLabel("") == nil {
		runtime.UnlockOSThread()
	}
	return err
}

// Socket runs make, which must create sockets on the calling thread (a
// listen), with label as the context they take: a socket PID 1 makes for
// another domain to serve (a switch port's, handed to the switch) must
// carry that domain's label, since a peer's connectto is checked against
// the listening socket's. Thread-bound as Exec.
func Socket(label string, make func() error) error {
	runtime.LockOSThread()
	if err := selinux.SetSocketLabel(label); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("selinux: socket as %s: %w", label, err)
	}
	err := make()
	if selinux.SetSocketLabel("") == nil {
		runtime.UnlockOSThread()
	}
	return err
}
