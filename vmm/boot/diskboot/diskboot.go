// Package diskboot finds the kernel, initrd and command line a Linux
// distribution's disk image would boot, so that the VMM can load them
// directly, without firmware or a boot loader in the guest.
//
// It looks at each partition of a GPT or MBR disk (or at the whole disk
// when it has no partition table), as ext4 or FAT (an EFI system
// partition), for the configurations boot loaders read: Boot Loader
// Specification entries (/loader/entries/*.conf, on the ESP or in /boot),
// GRUB's grub.cfg as Debian and Ubuntu write it, and extlinux.conf. The
// first configuration found with a usable entry wins; the entry is the
// configuration's default unless the caller names one (by title, id or
// index). Paths in an entry are read from the filesystem the
// configuration is on, which is where those distributions put them.
//
// The disk is the guest's and hostile: partitions and filesystems are read
// through go-diskfs, every file read is bounded, and a kernel must be a
// bzImage.
package diskboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"github.com/diskfs/go-diskfs/partition/part"
)

// Limits on what a disk can make the VMM read into memory.
const (
	MaxKernel = 128 << 20
	MaxInitrd = 1 << 30
	maxConfig = 1 << 20
	maxBLS    = 256 // entries read from one loader/entries directory
)

// Boot is what to load.
type Boot struct {
	Kernel  []byte
	Initrd  []byte // the initrds concatenated, as Linux accepts them
	Cmdline string
	// Where it came from, for the console: "partition 1 (ext4)
	// /boot/grub/grub.cfg: Debian GNU/Linux".
	Source string
}

var (
	errNoEntry = errors.New("no entry with a kernel")
	errNoExt4  = errors.New("no ext4 superblock")
)

// configs are where boot loader configurations are looked for, in order.
var configs = []string{
	"/loader/entries", "/boot/loader/entries", // BLS: a directory of entries
	"/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg", "/EFI/debian/grub.cfg", "/EFI/ubuntu/grub.cfg",
	"/boot/extlinux/extlinux.conf", "/extlinux/extlinux.conf", "/extlinux.conf",
}

// Find reads the disk d of size bytes and returns what its default boot
// entry (or the one entry names) loads.
func Find(d io.ReaderAt, size int64, entryName string) (b *Boot, err error) {
	defer recoverAs(&err)
	st := &storage{r: d, size: size}
	type volume struct {
		name        string
		start, size int64
		partType    string // what the partition table says it holds, if that is no filesystem
	}
	var vols []volume
	if t, err := partition.Read(st, 512, 512); err == nil {
		for _, p := range t.GetPartitions() {
			if p == nil || p.GetSize() <= 0 || p.GetStart() < 0 || p.GetStart() >= size {
				continue
			}
			vols = append(vols, volume{fmt.Sprintf("partition %d", p.GetIndex()), p.GetStart(), min(p.GetSize(), size-p.GetStart()), partType(p)})
		}
	}
	if len(vols) == 0 {
		vols = append(vols, volume{"the whole disk", 0, size, ""})
	}
	var looked, unsupported, empty []string
	readable := false
	for _, v := range vols {
		fs, kind, err := openFS(st, v.start, v.size)
		if fs == nil {
			switch {
			case err != nil:
				looked = append(looked, fmt.Sprintf("%s (%s, not read: %v)", v.name, kind, err))
			case kind != "":
				// A format Find does not read: say which.
				what := fmt.Sprintf("%s (%s, unsupported)", v.name, kind)
				looked = append(looked, what)
				unsupported = append(unsupported, what)
			case v.partType != "":
				looked = append(looked, v.name+" ("+v.partType+")")
			default:
				looked = append(looked, v.name+" (no ext4 or FAT filesystem)")
			}
			continue
		}
		readable = true
		looked = append(looked, v.name+" ("+kind+")")
		for _, c := range configs {
			entries, def, err := readConfig(fs, c)
			if err != nil {
				continue
			}
			where := fmt.Sprintf("%s (%s) %s", v.name, kind, c)
			e, err := choose(entries, def, entryName)
			if errors.Is(err, errNoEntry) {
				empty = append(empty, where)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			b, err := load(fs, e)
			if err != nil {
				return nil, fmt.Errorf("%s: entry %q: %w", where, e.title, err)
			}
			b.Source = where + ": " + e.title
			return b, nil
		}
	}
	if !readable && len(unsupported) > 0 {
		return nil, fmt.Errorf("unsupported filesystem: %s; the kernel and its boot loader configuration are read from ext4 or FAT only (keep /boot on one, or give the VM a kernel)",
			strings.Join(unsupported, ", "))
	}
	found := ""
	if len(empty) > 0 {
		// A configuration without a kernel (a chain loader's, a
		// menu of tools): say where, before the whole search.
		found = " " + strings.Join(empty, ", ") + " names no kernel;"
	}
	return nil, fmt.Errorf("no bootable entry:%s looked for %s on %s", found, strings.Join(configs, ", "), strings.Join(looked, ", "))
}

// partType names what a partition's type says it holds when that is not
// a filesystem to look in, for the error that lists what was looked at.
func partType(p part.Partition) string {
	switch p := p.(type) {
	case *gpt.Partition:
		switch strings.ToUpper(string(p.Type)) {
		case string(gpt.BIOSBoot):
			return "BIOS boot partition"
		case string(gpt.LinuxSwap):
			return "swap partition"
		case string(gpt.LinuxLVM):
			return "LVM partition"
		}
	case *mbr.Partition:
		switch p.Type {
		case mbr.LinuxSwap:
			return "swap partition"
		case mbr.ExtendedCHS, mbr.ExtendedLBA, mbr.LinuxExtended:
			return "extended partition (its logical partitions are not read)"
		case mbr.LinuxLVM:
			return "LVM partition"
		}
	}
	return ""
}

// signatures identify what a volume holds when it is not ext4 or FAT, so
// that an error can name it: the magic bytes at an offset.
var signatures = []struct {
	off   int64
	magic string
	name  string
}{
	{0, "XFSB", "xfs"},
	{0x10040, "_BHRfS_M", "btrfs"},
	{0, "LUKS\xba\xbe", "LUKS encrypted volume"},
	{512, "LABELONE", "LVM physical volume"},
	{4096 - 10, "SWAPSPACE2", "swap"},
	{0, "hsqs", "squashfs"},
	{0x8001, "CD001", "ISO 9660"},
	{3, "NTFS    ", "NTFS"},
	{3, "EXFAT   ", "exFAT"},
	{0x400, "\x10\x20\xf5\xf2", "f2fs"},
}

// identify names the filesystem or volume format a volume starts with,
// among signatures, or "".
func identify(st *storage, start, size int64) string {
	var buf [16]byte
	for _, s := range signatures {
		if s.off+int64(len(s.magic)) > size {
			continue
		}
		if n, _ := st.ReadAt(buf[:len(s.magic)], start+s.off); n == len(s.magic) && string(buf[:n]) == s.magic {
			return s.name
		}
	}
	return ""
}

// openFS opens the ext4 or FAT filesystem of a volume, if it holds one.
// Otherwise it names what the volume holds if it can tell (an ext4 it
// could not read, with err, or a format it does not read at all).
func openFS(st *storage, start, size int64) (iofs.FS, string, error) {
	if fs, err := readExt4(st, start, size); err == nil {
		return fs, "ext4", nil
	} else if !errors.Is(err, errNoExt4) {
		return nil, "ext4", err
	}
	if fs, err := readFAT(st, start, size); err == nil {
		return fs, "vfat", nil
	}
	return nil, identify(st, start, size), nil
}

// go-diskfs may panic on a filesystem it cannot make sense of: that is a
// volume without a usable filesystem, not the VMM's end. It also sizes
// its first buffers from the superblock or boot sector without asking
// whether the volume could hold them, so those fields are checked first:
// a crafted one would otherwise make the VMM allocate terabytes.
func readExt4(st *storage, start, size int64) (fs iofs.FS, err error) {
	defer recoverAs(&err)
	if err := checkExt4(st, start, size); err != nil {
		return nil, err
	}
	return ext4.Read(st, size, start, 512)
}

func readFAT(st *storage, start, size int64) (fs iofs.FS, err error) {
	defer recoverAs(&err)
	if err := checkFAT(st, start, size); err != nil {
		return nil, err
	}
	return fat32.Read(st, size, start, 512)
}

// maxTable bounds the group descriptor table or FAT a filesystem may
// make the VMM read: 64 MiB is a FAT32 volume of 2 TiB, an ext4 of 1 PiB.
const maxTable = 64 << 20

// checkExt4 checks an ext4 superblock's geometry against the volume.
func checkExt4(st *storage, start, size int64) error {
	var sb [1024]byte
	if _, err := st.ReadAt(sb[:], start+1024); err != nil {
		// A volume too small to hold a superblock holds no ext4.
		return fmt.Errorf("%w: %v", errNoExt4, err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xef53 {
		return errNoExt4
	}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 {
		return fmt.Errorf("ext4 block size 2^%d KiB", logBlock)
	}
	blockSize := uint64(1024) << logBlock
	blocks := uint64(le.Uint32(sb[0x4:]))
	const incompat64bit = 0x80
	descSize := uint64(32)
	if le.Uint32(sb[0x60:])&incompat64bit != 0 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
		descSize = uint64(le.Uint16(sb[0xfe:]))
	}
	perGroup := uint64(le.Uint32(sb[0x20:]))
	switch {
	case blocks == 0 || blocks > uint64(size)/blockSize:
		return fmt.Errorf("ext4 of %d blocks of %d bytes does not fit its %d-byte volume", blocks, blockSize, size)
	case perGroup < 8 || perGroup > 8*blockSize:
		return fmt.Errorf("ext4 with %d blocks per group", perGroup)
	case descSize < 32 || descSize > 1024:
		return fmt.Errorf("ext4 group descriptors of %d bytes", descSize)
	case (blocks+perGroup-1)/perGroup*descSize > maxTable:
		return fmt.Errorf("ext4 group descriptor table over %d bytes", maxTable)
	}
	return nil
}

// checkFAT checks a FAT boot sector's geometry against the volume.
func checkFAT(st *storage, start, size int64) error {
	var bs [512]byte
	if _, err := st.ReadAt(bs[:], start); err != nil {
		return err
	}
	le := binary.LittleEndian
	perSector := uint64(le.Uint16(bs[11:]))
	perFAT := uint64(le.Uint32(bs[36:])) // FAT32's sectors per FAT
	switch {
	case bs[510] != 0x55 || bs[511] != 0xaa:
		return errors.New("no FAT boot sector")
	case perSector < 512 || perSector > 4096 || perSector&(perSector-1) != 0:
		return fmt.Errorf("FAT with %d-byte sectors", perSector)
	case perFAT == 0 || perFAT*perSector > uint64(size) || perFAT*perSector > maxTable:
		return fmt.Errorf("FAT of %d sectors on a %d-byte volume", perFAT, size)
	}
	return nil
}

func recoverAs(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("unreadable filesystem: %v", r)
	}
}

// readConfig reads the configuration at p: a BLS entries directory or a
// loader's file.
func readConfig(fs iofs.FS, p string) (entries []entry, def int, err error) {
	defer recoverAs(&err)
	if strings.HasSuffix(p, "/entries") {
		ents, err := iofs.ReadDir(fs, strings.TrimPrefix(p, "/"))
		if err != nil {
			return nil, 0, err
		}
		for i, d := range ents {
			if i >= maxBLS {
				break
			}
			name := d.Name()
			if d.IsDir() || !strings.HasSuffix(name, ".conf") {
				continue
			}
			text, err := readFile(fs, path.Join(p, name), maxConfig)
			if err != nil {
				continue
			}
			entries = append(entries, blsEntry(strings.TrimSuffix(name, ".conf"), string(text)))
		}
		blsOrder(entries)
		// systemd-boot's loader.conf, beside the entries, may name the
		// default with a glob pattern.
		def := 0
		if text, err := readFile(fs, path.Join(path.Dir(p), "loader.conf"), maxConfig); err == nil {
			def = blsDefault(entries, string(text))
		}
		return entries, def, nil
	}
	text, err := readFile(fs, p, maxConfig)
	if err != nil {
		return nil, 0, err
	}
	if strings.HasSuffix(p, "grub.cfg") {
		// grub-set-default keeps the default entry beside grub.cfg.
		var env map[string]string
		if t, err := readFile(fs, path.Join(path.Dir(p), "grubenv"), maxConfig); err == nil {
			env = grubEnv(string(t))
		}
		entries, def = grubCfg(string(text), env)
	} else {
		entries, def = extlinuxConf(path.Dir(p), string(text))
	}
	return entries, def, nil
}

// load reads an entry's kernel and initrds.
func load(fs iofs.FS, e entry) (b *Boot, err error) {
	defer recoverAs(&err)
	kernel, err := readFile(fs, e.kernel, MaxKernel)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", e.kernel, err)
	}
	if len(kernel) < 0x206 || string(kernel[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("kernel %s is not a bzImage (no HdrS header at 0x202)", e.kernel)
	}
	var initrd bytes.Buffer
	for _, p := range e.initrds {
		data, err := readFile(fs, p, MaxInitrd-int64(initrd.Len()))
		if err != nil {
			return nil, fmt.Errorf("initrd %s: %w", p, err)
		}
		initrd.Write(data)
	}
	return &Boot{Kernel: kernel, Initrd: initrd.Bytes(), Cmdline: e.cmdline}, nil
}

// readFile reads a whole file of at most limit bytes; p may start with /.
func readFile(fs iofs.FS, p string, limit int64) ([]byte, error) {
	f, err := fs.Open(strings.TrimPrefix(path.Clean("/"+p), "/"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Not io.ReadAll: a filesystem reader that returns nothing and no
	// error (go-diskfs does for extents it cannot map) would loop
	// forever.
	var data []byte
	buf := make([]byte, 1<<20)
	for stalls := 0; ; {
		n, err := f.Read(buf)
		data = append(data, buf[:n]...)
		if int64(len(data)) > limit {
			return nil, fmt.Errorf("larger than %d bytes", limit)
		}
		switch {
		case err == io.EOF:
			return data, nil
		case err != nil:
			return nil, err
		case n == 0:
			if stalls++; stalls > 3 {
				return nil, fmt.Errorf("unreadable: the filesystem gives no data at byte %d", len(data))
			}
		}
	}
}

// storage is a read-only go-diskfs backend over an io.ReaderAt: a raw
// file or a qcow2 image, as the VMM has its disks.
type storage struct {
	r    io.ReaderAt
	size int64
	pos  int64
}

var errReadOnly = errors.New("diskboot: the disk is read only here")

func (s *storage) Stat() (iofs.FileInfo, error) { return info{s.size}, nil }
func (s *storage) Close() error                 { return nil }
func (s *storage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > s.size-off {
		n = int(s.size - off)
	}
	got, err := s.r.ReadAt(p[:n], off)
	if err == nil && got < len(p) {
		err = io.EOF
	}
	return got, err
}
func (s *storage) Read(p []byte) (int, error) {
	n, err := s.ReadAt(p, s.pos)
	s.pos += int64(n)
	return n, err
}
func (s *storage) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.size
	}
	if off < 0 {
		return 0, errors.New("diskboot: seek before the start")
	}
	s.pos = off
	return off, nil
}
func (s *storage) Sys() (*os.File, error)                  { return nil, errReadOnly }
func (s *storage) Writable() (backend.WritableFile, error) { return nil, errReadOnly }
func (s *storage) Path() string                            { return "" }

type info struct{ size int64 }

func (i info) Name() string        { return "disk" }
func (i info) Size() int64         { return i.size }
func (i info) Mode() iofs.FileMode { return 0o400 }
func (i info) ModTime() time.Time  { return time.Time{} }
func (i info) IsDir() bool         { return false }
func (i info) Sys() any            { return nil }

var _ backend.Storage = (*storage)(nil)
