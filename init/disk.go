package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
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

// machineDisk is the disk of a --disk flag as the machine takes it.
func machineDisk(d vmmcli.Disk, f *os.File) machine.Disk {
	return machine.Disk{File: f, ReadOnly: d.ReadOnly, ID: d.ID, IOPS: d.IOPS, Bandwidth: d.Bandwidth,
		Direct: d.Direct, IO: machine.IOBackend(d.IO)}
}

// openDisk opens configured disk d for a VM, the supervisor's side. A
// missing file is created sparse when d has a size; an existing file is
// grown to d's size but never shrunk, since that would destroy the
// user's data. The file is locked (flock, exclusive for a writable disk,
// shared for a read-only one) so that two VMMs never write one image; the
// lock lives as long as any process holds the descriptor.
func openDisk(d config.Disk) (*os.File, error) {
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(d.Path, flags, 0)
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
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
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
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return errors.New("is a directory")
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

// openDisks opens every disk of vm, or none: on error the ones opened are
// closed and the error names the disk.
func openDisks(vm config.VM) ([]*os.File, error) {
	var files []*os.File
	for _, d := range vm.Disks {
		f, err := openDisk(d)
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		files = append(files, f)
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
