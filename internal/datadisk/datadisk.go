// Package datadisk finds, formats and mounts the appliance's data disk: an
// ext4 filesystem labelled hyperroot-data that holds what must outlive a
// boot of a RAM-only appliance (VM disks named by relative paths, the
// configuration last applied through the API, the API's certificate).
//
// Formatting is for an empty disk only. "Empty" is what wipefs and the
// partitioning tools look at: a disk whose first and last MiB read as
// zeros carries no partition table (MBR and GPT live there, the GPT's
// backup at the end), no filesystem superblock and no RAID or LVM label.
// Anything else is refused whole, so a wrong device name can never cost
// data. The partition table and filesystem are written from Go
// (go-diskfs): the appliance has no mkfs.
package datadisk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"
)

// Label is the ext4 volume label (and GPT partition name) of a data disk.
const Label = "hyperroot-data"

// The ext2/3/4 superblock: 1024 bytes at byte 1024 of the filesystem, its
// magic number at 0x38 and its volume name (16 bytes, NUL-padded) at 0x78.
const (
	superblockOffset = 1024
	superblockSize   = 1024
	magicOffset      = 0x38
	ext4Magic        = 0xEF53
	labelOffset      = 0x78
	labelSize        = 16
)

// ext4Label returns the volume label in sb, the superblock's bytes, and
// whether sb is an ext2/3/4 superblock at all. sb comes from any disk the
// appliance sees, so it is read with bounds and never trusted further.
func ext4Label(sb []byte) (string, bool) {
	if len(sb) < labelOffset+labelSize || binary.LittleEndian.Uint16(sb[magicOffset:]) != ext4Magic {
		return "", false
	}
	name := sb[labelOffset : labelOffset+labelSize]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name), true
}

// labelOf reads the ext4 label of the block device at path.
func labelOf(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		return "", false
	}
	return ext4Label(sb)
}

// Find looks through the block devices the kernel lists in sysBlock
// (/sys/class/block: whole disks and partitions) for the one with an ext4
// filesystem labelled Label, and returns its node in devDir (/dev). It
// returns "" when there is none, and an error when there are several:
// which one holds the appliance's state is then the config's to say.
func Find(sysBlock, devDir string) (string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", err
	}
	var found []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		dev := filepath.Join(devDir, name)
		if l, ok := labelOf(dev); ok && l == Label {
			found = append(found, dev)
		}
	}
	sort.Strings(found)
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("data disk: %d filesystems labelled %s (%s): name the one to use with data: {device: ...}", len(found), Label, strings.Join(found, ", "))
}

// Labelled reports whether dev holds the data filesystem itself (ext4
// labelled Label), as a whole disk or as a partition of it: it returns the
// device to mount, or "".
func Labelled(dev string) string {
	if l, ok := labelOf(dev); ok && l == Label {
		return dev
	}
	if p := partitionPath(dev, 1); p != dev {
		if l, ok := labelOf(p); ok && l == Label {
			return p
		}
	}
	return ""
}

// emptySpan is how much of each end of a disk must be zeros for Format.
const emptySpan = 1 << 20

// MinSize is the smallest disk Format accepts: a GPT, a journal and room
// for the appliance's state.
const MinSize = 64 << 20

// Empty reports whether the disk in f, size bytes long, holds nothing:
// its first and last emptySpan bytes all zeros.
func Empty(f io.ReaderAt, size int64) (bool, error) {
	buf := make([]byte, emptySpan)
	for _, off := range []int64{0, max(size-emptySpan, 0)} {
		n := min(int64(len(buf)), size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return false, err
		}
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

// ErrNotEmpty is Format's refusal of a disk that holds something.
var ErrNotEmpty = errors.New("holds data (its first or last MiB is not all zeros): not formatted; wipe it yourself if it is really to be the data disk")

// Format partitions the empty disk dev (GPT, one partition named Label
// over the whole disk) and makes an ext4 filesystem labelled Label on it.
// It returns the partition's device node, once the kernel has it. A disk
// that is not empty, is too small or is in use is left untouched.
func Format(dev string) (string, error) { return FormatAs(dev, Label) }

// FormatAs is Format with label instead of Label, for disks that are not
// the appliance's data disk (the test guest formats a passed-through NVMe
// controller with it).
func FormatAs(dev, label string) (string, error) {
	// O_EXCL on a block device: refused while it is mounted or held.
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return "", fmt.Errorf("data disk %s: %w", dev, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("data disk %s: size: %w", dev, err)
	}
	if err := format(f, size, label); err != nil {
		return "", fmt.Errorf("data disk %s: %w", dev, err)
	}
	// The kernel reads the new table (devtmpfs then makes the node).
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0); err != nil {
		return "", fmt.Errorf("data disk %s: re-read partition table: %w", dev, err)
	}
	part := partitionPath(dev, 1)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(part); err == nil {
			return part, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("data disk %s: partition %s did not appear after the table was written", dev, part)
		}
	}
}

// format writes the partition table and the filesystem, both named label,
// to the disk in f, size bytes long, if it is empty (ErrNotEmpty
// otherwise), and syncs them.
func format(f *os.File, size int64, label string) error {
	if size < MinSize {
		return fmt.Errorf("%d MiB, want at least %d MiB", size>>20, MinSize>>20)
	}
	if empty, err := Empty(f, size); err != nil {
		return err
	} else if !empty {
		return ErrNotEmpty
	}
	const sector = 512
	sectors := uint64(size / sector)
	// The first partition at 1 MiB, as partitioning tools align it; the
	// last 33 sectors are the backup GPT's.
	table := &gpt.Table{LogicalSectorSize: sector, PhysicalSectorSize: sector, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: sectors - 34, Type: gpt.LinuxFilesystem, Name: label}}}
	b := file.New(f, false)
	w, err := b.Writable()
	if err != nil {
		return err
	}
	if err := table.Write(w, size); err != nil {
		return fmt.Errorf("partition table: %w", err)
	}
	start, length := int64(2048*sector), int64(sectors-34-2048+1)*sector
	fs, err := ext4.Create(b, length, start, sector, &ext4.Params{
		VolumeName:      label,
		SectorsPerBlock: 8, // 4 KiB blocks
		Features:        features(),
	})
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	if err := fs.Close(); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	return f.Sync()
}

// features are the ext4 features of a new filesystem. Checksums on:
// Linux expects them of a new ext4, and the library reads its own
// filesystems back only with them. No resize inode: go-diskfs keeps its
// reserved blocks in the backup groups and gets it wrong when there are
// none (under two block groups, 128 MiB of 4 KiB blocks: it refuses) or
// when the last group holds a backup and is short (386 or 642 MiB: e2fsck
// finds the resize inode pointing past the end). Linux grows an ext4
// without one; nothing here grows the data disk.
func features() []ext4.FeatureOpt {
	return []ext4.FeatureOpt{ext4.WithFeatureMetadataChecksums(true), ext4.WithFeatureReservedGDTBlocksForExpansion(false)}
}

// partitionPath is the node of partition n of disk dev: vda1, but
// nvme0n1p1 after a name ending in a digit.
func partitionPath(dev string, n int) string {
	if dev == "" {
		return dev
	}
	if c := dev[len(dev)-1]; c >= '0' && c <= '9' {
		return fmt.Sprintf("%sp%d", dev, n)
	}
	return fmt.Sprintf("%s%d", dev, n)
}

// Mount mounts the data filesystem on dev at dir: no device nodes, no
// set-id programs, nothing executed from it.
func Mount(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, "ext4", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("data disk: mount %s on %s: %w", dev, dir, err)
	}
	return nil
}
