package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/safeopen"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/machine"
)

// Disks travel from the supervisor to `hyperroot vmm` as open descriptors,
// never as paths: the VMM will run in a jail that has no filesystem to
// open them in. The supervisor opens (or creates) each configured disk,
// passes it as an inherited descriptor (exec.Cmd.ExtraFiles: fd 3, 4, ...)
// and describes it with one `--disk fd=N,...` flag (vmmcli.ForVM).
// Standalone users of `hyperroot vmm` on a host write `--disk path=/x.img`
// instead.

// openDiskArg returns the file of a --disk flag: the inherited
// descriptor, or the file at Path opened read-write (read-only with ro),
// the VMM's side. It never creates a file.
func openDiskArg(d vmmcli.Disk) (*os.File, error) {
	if d.FD >= 0 {
		var st unix.Stat_t
		if err := unix.Fstat(d.FD, &st); err != nil {
			return nil, fmt.Errorf("fd %d: %w (not inherited from the parent?)", d.FD, err)
		}
		return os.NewFile(uintptr(d.FD), fmt.Sprintf("fd %d", d.FD)), nil
	}
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	return os.OpenFile(d.Path, flags, 0)
}

// machineDisk is the disk of a --disk flag as the machine takes it, with
// its backing chain's files (backingArgs).
func machineDisk(d vmmcli.Disk, f *os.File, backing []machine.BackingFile) machine.Disk {
	return machine.Disk{File: f, ReadOnly: d.ReadOnly, ID: d.ID, IOPS: d.IOPS, Bandwidth: d.Bandwidth, Poll: d.Poll,
		Direct: d.Direct, IO: machine.IOBackend(d.IO), Qcow2: d.Format == config.FormatQcow2, Backing: backing}
}

// backingArgs returns the backing chain of a qcow2 --disk flag: the
// inherited descriptors it names, or for a disk given by path (a person
// running `hyperroot vmm` on a host), the files its images' headers name,
// opened read-only relative to the image that names them.
func backingArgs(d vmmcli.Disk, f *os.File) ([]machine.BackingFile, error) {
	if d.Format != config.FormatQcow2 {
		return nil, nil
	}
	var out []machine.BackingFile
	if d.FD >= 0 {
		for _, b := range d.Backing {
			bf, err := openDiskArg(vmmcli.Disk{FD: b.FD})
			if err != nil {
				return nil, fmt.Errorf("backing file: %v", err)
			}
			out = append(out, machine.BackingFile{File: bf, Qcow2: b.Format == config.FormatQcow2})
		}
		return out, nil
	}
	chain, err := backingChain(f, d.Path, "", nil)
	if err != nil {
		return nil, err
	}
	for _, l := range chain {
		out = append(out, machine.BackingFile{File: l.f, Qcow2: l.qcow2})
	}
	return out, nil
}

// openDisk opens configured disk d for a VM, the supervisor's side. A
// missing file is created sparse when d has a size; an existing file is
// grown to d's size but never shrunk, since that would destroy the
// user's data. The file is locked (flock, exclusive for a writable disk,
// shared for a read-only one) so that two VMMs never write one image; the
// lock lives as long as any process holds the descriptor.
func openDisk(d config.Disk) (*os.File, error) {
	if err := checkDiskPath(d.Path); err != nil {
		return nil, err
	}
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := safeopen.Open(d.Path, flags)
	if errors.Is(err, fs.ErrNotExist) {
		switch {
		case d.ReadOnly:
			return nil, errors.New("does not exist (a read-only disk is never created)")
		case d.Size == 0:
			return nil, errors.New("does not exist, and no size is configured to create it")
		}
		return createDisk(d.Path, int64(d.Size))
	}
	if errors.Is(err, unix.EISDIR) {
		return nil, errors.New("is a directory")
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return nil, errors.New("is a symbolic link, or a path through one: name the file itself")
	}
	if err != nil {
		return nil, unwrapPath(err)
	}
	if err := checkDisk(f, d); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// createDisk makes a sparse file of size bytes.
func createDisk(path string, size int64) (*os.File, error) {
	// A relative path in the configuration is a file on the data disk,
	// in directories made for it.
	if strings.HasPrefix(path, config.DataDir+"/") {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create: %w", unwrapPath(err))
		}
	}
	f, err := safeopen.Open(path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, fmt.Errorf("create: %w", unwrapPath(err))
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create: %w", unwrapPath(err))
	}
	if err := lockDisk(f, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkDisk checks an existing disk against its configuration, locks it,
// and grows a file that is smaller than the configured size.
func checkDisk(f *os.File, d config.Disk) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	var size int64
	if err := checkDiskFS(f); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return errors.New("is a directory")
	case unix.S_IFCHR:
		return errors.New("is a character device (such as /dev/kvm), neither a regular file nor a block device")
	case unix.S_IFREG:
		size = st.Size
	case unix.S_IFBLK:
		n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("block device size: %w", err)
		}
		size = int64(n)
		if d.Size != 0 && int64(d.Size) != size {
			return fmt.Errorf("size %s does not match the block device's %d bytes (leave size out for a device)", d.Size, size)
		}
	default:
		return errors.New("is neither a regular file nor a block device")
	}
	if err := lockDisk(f, d.ReadOnly); err != nil {
		return err
	}
	want := int64(d.Size)
	switch {
	case want != 0 && want < size:
		return fmt.Errorf("size %s is smaller than the existing file (%d bytes): refusing to truncate it (raise size or leave it out)", d.Size, size)
	case want > size && d.ReadOnly:
		return fmt.Errorf("size %s is larger than the existing file (%d bytes), which a read-only disk cannot grow", d.Size, size)
	case want > size:
		if err := f.Truncate(want); err != nil {
			return fmt.Errorf("grow to %s: %w", d.Size, unwrapPath(err))
		}
	case size == 0:
		return errors.New("is empty: give it a size")
	}
	return nil
}

// A disk is the guest's to write, and to read back to its owner: a path in
// the configuration that leads to one of the appliance's own files would
// hand it to a guest. Such paths are refused by where they are (the
// appliance's own directories) and by what they lead to (a symbolic link,
// which could point anywhere; a file on the kernel's own filesystems; the
// running binary).

// applianceDirs are the appliance's own files: kernel interfaces, devices
// other than disks (a block device there is fine, see checkDisk), its
// configuration and board, the switch's sockets and leases, the binary,
// and on the data disk, the API's certificate, the saved configuration,
// the downloaded images (a VM writing one would change every disk made
// from it after its digest was checked) and the kept leases.
var applianceDirs = []string{"/proc", "/sys", "/etc/hyperroot", "/run/hyperroot", "/init", apiDataDir, savedConfig, imagesDir, leasesDir}

// checkDiskPath refuses a path in the appliance's own directories.
func checkDiskPath(path string) error {
	clean := filepath.Clean(path)
	for _, d := range applianceDirs {
		if clean == d || strings.HasPrefix(clean, d+"/") {
			return fmt.Errorf("is one of the appliance's own files (%s): not a disk", d)
		}
	}
	return nil
}

// kernelFS are the filesystems of the kernel's own objects, which hold no
// disk.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC: "proc", unix.SYSFS_MAGIC: "sysfs", unix.CGROUP_SUPER_MAGIC: "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2", unix.DEBUGFS_MAGIC: "debugfs", unix.TRACEFS_MAGIC: "tracefs",
	unix.SECURITYFS_MAGIC: "securityfs", unix.BPF_FS_MAGIC: "bpf", unix.DEVPTS_SUPER_MAGIC: "devpts",
	unix.EFIVARFS_MAGIC: "efivarfs", unix.PSTOREFS_MAGIC: "pstore",
}

// checkDiskFS refuses a file on one of the kernel's filesystems, or the
// running binary itself.
func checkDiskFS(f *os.File) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	if name, ok := kernelFS[int64(sfs.Type)]; ok {
		return fmt.Errorf("is on %s, one of the kernel's filesystems: not a disk", name)
	}
	var st, self unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) == nil && unix.Stat("/proc/self/exe", &self) == nil &&
		st.Dev == self.Dev && st.Ino == self.Ino {
		return errors.New("is the hyperroot binary itself: not a disk")
	}
	return nil
}

// lockDisk takes the disk's flock without waiting.
func lockDisk(f *os.File, shared bool) error {
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EWOULDBLOCK:
			return errors.New("is in use by another VM or process (locked)")
		}
		return fmt.Errorf("lock: %w", err)
	}
}

// unwrapPath drops the "open /path:" of an *fs.PathError: messages already
// name the disk.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// vmDisks are a VM's opened disks, and the backing chains of its qcow2
// disks (chains[i] is disks[i]'s, nil for a raw disk).
type vmDisks struct {
	files  []*os.File
	chains [][]link
}

func (v *vmDisks) Close() {
	closeFiles(v.files)
	for _, c := range v.chains {
		closeChain(c)
	}
}

// extra are every file the VMM inherits: the disks, then each chain's
// files in order, where args' backing descriptors point (withBacking).
func (v *vmDisks) extra() []*os.File {
	out := append([]*os.File(nil), v.files...)
	for _, c := range v.chains {
		for _, l := range c {
			out = append(out, l.f)
		}
	}
	return out
}

// withBacking fills in the backing descriptors of args' qcow2 disks.
func (v *vmDisks) withBacking(args *vmmcli.Args) {
	fd := vmmcli.FirstFD + len(v.files)
	for i, c := range v.chains {
		for _, l := range c {
			format := config.FormatRaw
			if l.qcow2 {
				format = config.FormatQcow2
			}
			args.Disks[i].Backing = append(args.Disks[i].Backing, vmmcli.Backing{FD: fd, Format: format})
			fd++
		}
	}
}

// shared are the backing files as read-only disks, to claim and label
// beside the VM's own.
func (v *vmDisks) shared() ([]config.Disk, []*os.File) {
	var disks []config.Disk
	var files []*os.File
	for _, c := range v.chains {
		for _, l := range c {
			disks = append(disks, config.Disk{Path: l.path, ReadOnly: true})
			files = append(files, l.f)
		}
	}
	return disks, files
}

// openDisks opens every disk of vm, or none: on error the ones opened are
// closed and the error names the disk. others are the other VMs' disks,
// which no backing chain may name (backingChain).
func openDisks(vm config.VM, others map[string]string) (*vmDisks, error) {
	v := &vmDisks{}
	for _, d := range vm.Disks {
		var f *os.File
		var chain []link
		var err error
		if d.Format == config.FormatQcow2 {
			f, chain, err = openQcow2Disk(d, others)
		} else {
			f, err = openDisk(d)
		}
		if err != nil {
			v.Close()
			return nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		v.files = append(v.files, f)
		v.chains = append(v.chains, chain)
	}
	return v, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// diskOwners remembers which VM each disk file belongs to, by device and
// inode, whatever path named it: two paths (a hard link, a bind mount, a
// second name of a block device) must not give one VM's disk to another.
// A file may be shared only read-only by all. Claims last as long as the
// supervisor: a VM that is not running keeps its disks.
type diskOwners struct {
	mu sync.Mutex
	m  map[[2]uint64]diskOwner
}

type diskOwner struct {
	vm, path string
	writable bool
}

// release forgets vm's claims: the VM is gone from the fleet.
func (o *diskOwners) release(vm string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, own := range o.m {
		if own.vm == vm {
			delete(o.m, id)
		}
	}
}

// claim records vm's disks (files[i] opened for disks[i]), or returns an
// error naming the disk and the VM it belongs to.
func (o *diskOwners) claim(vm string, disks []config.Disk, files []*os.File) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[[2]uint64]diskOwner{}
	}
	ids := make([][2]uint64, len(files))
	for i, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return fmt.Errorf("disk %s: stat: %w", disks[i].Path, err)
		}
		ids[i] = [2]uint64{st.Dev, st.Ino}
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			ids[i] = [2]uint64{^uint64(0), st.Rdev} // the device, whichever node names it
		}
		if prev, ok := o.m[ids[i]]; ok && prev.vm != vm && (prev.writable || !disks[i].ReadOnly) {
			return fmt.Errorf("disk %s: is vm %s's disk %s (the same file): a disk is shared only read-only", disks[i].Path, prev.vm, prev.path)
		}
	}
	for i, d := range disks {
		prev, ok := o.m[ids[i]]
		if !ok || prev.vm == vm {
			o.m[ids[i]] = diskOwner{vm: vm, path: d.Path, writable: !d.ReadOnly}
		}
	}
	return nil
}
