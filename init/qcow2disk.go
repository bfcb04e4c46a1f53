package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/safeopen"
	"github.com/hyperroot/hyperroot/internal/vmmcli"
	"github.com/hyperroot/hyperroot/vmm/block/qcow2"
)

// A qcow2 disk may read from a chain of backing files, which its header
// names. The supervisor follows the names and opens each file read-only,
// and the jailed VMM gets the chain as descriptors (--disk ...,backing=).
// Names are untrusted (the image may come from anywhere): a backing file
// must stay in the data directory (or beside a disk kept elsewhere), may
// not be one of the appliance's own files nor a symbolic link, and a
// chain is at most vmmcli.MaxBackingChain deep and never loops. Formats
// are never guessed from content: the header's backing format, else the
// name's .qcow2 extension, says which.

// link is one opened file of a backing chain.
type link struct {
	f     *os.File
	path  string
	qcow2 bool
}

func closeChain(chain []link) {
	for _, l := range chain {
		l.f.Close()
	}
}

// formatOf is the format of a file named without one: qcow2 by its
// extension, else raw.
func formatOf(path string) bool { return strings.HasSuffix(path, ".qcow2") }

// readHeader reads the qcow2 header of f.
func readHeader(f *os.File) (*qcow2.Header, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	first := make([]byte, min(st.Size(), 2<<20))
	if _, err := f.ReadAt(first, 0); err != nil {
		return nil, err
	}
	return qcow2.ParseHeader(first)
}

// backingChain opens the backing chain of qcow2 image f, whose path is
// path. within, when not empty, is the directory every backing file must
// lie in; others maps the disks of the other configured VMs (but bases
// configured as such) to their VM, none of which a chain may name.
func backingChain(f *os.File, path, within string, others map[string]string) (chain []link, err error) {
	defer func() {
		if err != nil {
			closeChain(chain)
			chain = nil
		}
	}()
	seen := map[[2]uint64]string{}
	id := func(f *os.File) ([2]uint64, error) {
		var st unix.Stat_t
		err := unix.Fstat(int(f.Fd()), &st)
		return [2]uint64{st.Dev, st.Ino}, err
	}
	k, err := id(f)
	if err != nil {
		return nil, err
	}
	seen[k] = path
	cur, curPath := f, path
	for {
		h, err := readHeader(cur)
		if err != nil {
			return chain, fmt.Errorf("%s: %w", curPath, err)
		}
		if h.BackingFile == "" {
			return chain, nil
		}
		if len(chain) == vmmcli.MaxBackingChain {
			return chain, fmt.Errorf("backing chain deeper than %d images", vmmcli.MaxBackingChain)
		}
		name := h.BackingFile
		if strings.Contains(name, "://") || strings.HasPrefix(name, "json:") {
			return chain, fmt.Errorf("%s: backing file %q is a protocol, not a file", curPath, name)
		}
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(curPath), p)
		}
		p = filepath.Clean(p)
		if within != "" && !strings.HasPrefix(p, within+"/") {
			return chain, fmt.Errorf("%s: backing file %q (%s) is outside %s", curPath, name, p, within)
		}
		if err := checkBackingPath(p); err != nil {
			return chain, fmt.Errorf("%s: backing file %s %w", curPath, p, err)
		}
		if vm, ok := others[p]; ok {
			// The data directory holds every VM's disks: an image
			// (a guest's, or one downloaded) must not read another's.
			return chain, fmt.Errorf("%s: backing file %s is vm %s's disk", curPath, p, vm)
		}
		var isQcow2 bool
		switch h.BackingFormat {
		case "":
			isQcow2 = formatOf(p)
		case "raw":
		case "qcow2":
			isQcow2 = true
		default:
			return chain, fmt.Errorf("%s: backing file %s has format %q (want raw or qcow2)", curPath, p, h.BackingFormat)
		}
		bf, err := safeopen.Open(p, os.O_RDONLY)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
				return chain, fmt.Errorf("%s: backing file %s is a symbolic link, or a path through one", curPath, p)
			}
			return chain, fmt.Errorf("%s: backing file %s: %w", curPath, p, unwrapPath(err))
		}
		chain = append(chain, link{bf, p, isQcow2})
		k, err := id(bf)
		if err != nil {
			return chain, err
		}
		if first, ok := seen[k]; ok {
			return chain, fmt.Errorf("backing chain loops: %s is %s again", p, first)
		}
		seen[k] = p
		if err := checkDiskFS(bf); err != nil {
			return chain, fmt.Errorf("backing file %s %w", p, err)
		}
		if err := lockDisk(bf, true); err != nil {
			return chain, fmt.Errorf("backing file %s %w", p, err)
		}
		if !isQcow2 {
			return chain, nil
		}
		cur, curPath = bf, p
	}
}

// checkBackingPath is checkDiskPath for a file read as a backing file:
// the downloaded images may be bases.
func checkBackingPath(p string) error {
	if p == imagesDir || strings.HasPrefix(p, imagesDir+"/") {
		return nil
	}
	return checkDiskPath(p)
}

// backingRoot is the directory a disk's backing files must lie in: the
// data directory for a disk on it, else the disk's own directory.
func backingRoot(path string) string {
	if strings.HasPrefix(path, config.DataDir+"/") {
		return config.DataDir
	}
	return filepath.Dir(path)
}

// openQcow2Disk opens (or makes) configured qcow2 disk d and its backing
// chain.
func openQcow2Disk(d config.Disk, others map[string]string) (*os.File, []link, error) {
	if err := checkDiskPath(d.Path); err != nil {
		return nil, nil, err
	}
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := safeopen.Open(d.Path, flags)
	created := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if f, err = createQcow2(d); err != nil {
			return nil, nil, err
		}
		created = true
	case errors.Is(err, unix.EISDIR):
		return nil, nil, errors.New("is a directory")
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return nil, nil, errors.New("is a symbolic link, or a path through one: name the file itself")
	case err != nil:
		return nil, nil, unwrapPath(err)
	default:
		if err := checkQcow2(f, d); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	chain, err := backingChain(f, d.Path, backingRoot(d.Path), others)
	if err != nil {
		f.Close()
		if created {
			// Not left behind for every later start to trip on.
			os.Remove(d.Path)
		}
		return nil, nil, err
	}
	return f, chain, nil
}

// checkQcow2 checks an existing qcow2 disk against its configuration and
// locks it.
func checkQcow2(f *os.File, d config.Disk) error {
	if err := checkDiskFS(f); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errors.New("is not a regular file (a qcow2 disk is an image file)")
	}
	if err := lockDisk(f, d.ReadOnly); err != nil {
		return err
	}
	h, err := readHeader(f)
	if err != nil {
		return err
	}
	if d.Size != 0 && uint64(d.Size) != h.Size {
		return fmt.Errorf("size %s differs from the image's %d bytes (resizing a qcow2 image is not supported)", d.Size, h.Size)
	}
	return nil
}

// createQcow2 makes a missing qcow2 disk: a thin clone of its base, or an
// empty image of its size.
func createQcow2(d config.Disk) (*os.File, error) {
	var size int64
	var o qcow2.CreateOptions
	switch {
	case d.ReadOnly:
		return nil, errors.New("does not exist (a read-only disk is never created)")
	case d.Base != "":
		d.Base = filepath.Clean(d.Base)
		if root := backingRoot(d.Path); !strings.HasPrefix(d.Base, root+"/") {
			return nil, fmt.Errorf("base %s is outside %s", d.Base, root)
		}
		if err := checkBackingPath(d.Base); err != nil {
			return nil, fmt.Errorf("base %s %w", d.Base, err)
		}
		b, err := safeopen.Open(d.Base, os.O_RDONLY)
		if err != nil {
			return nil, fmt.Errorf("base %s: %w", d.Base, unwrapPath(err))
		}
		defer b.Close()
		if err := checkDiskFS(b); err != nil {
			return nil, fmt.Errorf("base %s %w", d.Base, err)
		}
		if formatOf(d.Base) {
			h, err := readHeader(b)
			if err != nil {
				return nil, fmt.Errorf("base %s: %w", d.Base, err)
			}
			size, o.BackingFormat = int64(h.Size), "qcow2"
		} else {
			st, err := b.Stat()
			if err != nil {
				return nil, err
			}
			size, o.BackingFormat = (st.Size()+511)&^511, "raw"
		}
		if d.Size != 0 && int64(d.Size) < size {
			return nil, fmt.Errorf("size %s is smaller than its base's %d bytes", d.Size, size)
		}
		size = max(size, int64(d.Size))
		// Named relative to the clone, as qemu-img does: the data disk
		// may be mounted elsewhere and the chain still holds.
		rel, err := filepath.Rel(filepath.Dir(d.Path), d.Base)
		if err != nil {
			rel = d.Base
		}
		o.BackingFile = rel
	case d.Size == 0:
		return nil, errors.New("does not exist, and neither a base nor a size is configured to create it")
	default:
		size = int64(d.Size)
	}
	if strings.HasPrefix(d.Path, config.DataDir+"/") {
		if err := os.MkdirAll(filepath.Dir(d.Path), 0o700); err != nil {
			return nil, fmt.Errorf("create: %w", unwrapPath(err))
		}
	}
	f, err := safeopen.Open(d.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, fmt.Errorf("create: %w", unwrapPath(err))
	}
	if err := lockDisk(f, false); err != nil {
		f.Close()
		return nil, err
	}
	if err := qcow2.Create(f, size, o); err != nil {
		f.Close()
		os.Remove(d.Path)
		return nil, fmt.Errorf("create: %w", err)
	}
	return f, nil
}
