// Package disktest makes disk images for tests: partitioned disks laid out
// as distributions' images are (a GPT disk with a BIOS boot partition and
// an ext4 root, an EFI system partition, an MBR disk), with filesystems
// filled from directories, so that the code that boots or reads such
// images meets the real formats: go-diskfs writes the partition tables,
// Debian's mkfs.ext4, mkfs.vfat and mcopy the filesystems.
package disktest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// A Part is one partition of a disk Write makes.
type Part struct {
	Type  PartType
	Size  int64  // bytes, a multiple of 1 MiB; 0: to the end of the disk
	FS    string // "ext4", "vfat" or "" (left empty)
	Tree  string // directory whose contents fill the filesystem
	Label string // the filesystem's label, if any
	UUID  string // the ext4 filesystem's UUID; mkfs's random one if ""
}

// PartType is what a partition table says a partition holds.
type PartType int

const (
	Linux PartType = iota
	BIOSBoot
	ESP
	Swap
)

// Table is a partition table format.
type Table int

const (
	GPT Table = iota
	MBR
)

// GPTExt4 writes a GPT disk image of size bytes at path: a 1 MiB BIOS
// boot partition 1, then partition 2 to the end with an ext4 filesystem
// (4 KiB blocks) holding a copy of tree.
func GPTExt4(t testing.TB, path string, size int64, tree string) {
	t.Helper()
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	if err := WriteGPTExt4(path, size, Part{Tree: tree}); err != nil {
		t.Fatal(err)
	}
}

// WriteGPTExt4 is GPTExt4 outside a test, with root's tree, label and
// UUID for the ext4 filesystem (its type, size and filesystem are the
// layout's).
func WriteGPTExt4(path string, size int64, root Part) error {
	root.Type, root.Size, root.FS = Linux, 0, "ext4"
	return Write(path, size, GPT, []Part{{Type: BIOSBoot, Size: 1 << 20}, root})
}

// Write writes a disk image of size bytes at path: a partition table of
// the given format and parts, in order from 1 MiB on, each filesystem
// made and filled.
func Write(path string, size int64, table Table, parts []Part) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	const mib = 1 << 20
	type span struct{ start, size int64 }
	var spans []span
	end := size - 34*512 // GPT's backup header and entries
	for at, i := int64(mib), 0; i < len(parts); i++ {
		n := parts[i].Size
		if n == 0 {
			n = end - at
		}
		if n <= 0 || at+n > end || n%mib != 0 && parts[i].Size != 0 {
			return fmt.Errorf("disktest: partition %d of %d bytes does not fit at %d on a %d-byte disk", i+1, n, at, size)
		}
		spans = append(spans, span{at, n})
		at += n
	}
	w, err := file.New(f, false).Writable()
	if err != nil {
		return err
	}
	switch table {
	case GPT:
		types := map[PartType]gpt.Type{Linux: gpt.LinuxFilesystem, BIOSBoot: gpt.BIOSBoot, ESP: gpt.EFISystemPartition, Swap: gpt.LinuxSwap}
		t := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true}
		for i, s := range spans {
			t.Partitions = append(t.Partitions, &gpt.Partition{Index: i + 1, Start: uint64(s.start / 512),
				End: uint64((s.start+s.size)/512 - 1), Type: types[parts[i].Type], Name: fmt.Sprintf("part%d", i+1)})
		}
		err = t.Write(w, size)
	case MBR:
		types := map[PartType]mbr.Type{Linux: mbr.Linux, BIOSBoot: mbr.Empty, ESP: mbr.EFISystem, Swap: mbr.LinuxSwap}
		t := &mbr.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512}
		for i, s := range spans {
			t.Partitions = append(t.Partitions, &mbr.Partition{Index: i + 1, Type: types[parts[i].Type],
				Start: uint32(s.start / 512), Size: uint32(s.size / 512)})
		}
		err = t.Write(w, size)
	}
	if err != nil {
		return err
	}
	for i, p := range parts {
		if err := makeFS(path, spans[i].start, spans[i].size, p); err != nil {
			return fmt.Errorf("disktest: partition %d: %w", i+1, err)
		}
	}
	return nil
}

// makeFS makes p's filesystem in the span of the image at path.
func makeFS(path string, start, size int64, p Part) error {
	var cmds [][]string
	switch p.FS {
	case "":
		return nil
	case "ext4":
		// 4 KiB blocks, as distributions' images have (go-diskfs
		// misreads files of 1 KiB-block filesystems).
		args := []string{"mkfs.ext4", "-q", "-F", "-b", "4096", "-E", fmt.Sprintf("offset=%d", start)}
		if p.Tree != "" {
			args = append(args, "-d", p.Tree)
		}
		if p.Label != "" {
			args = append(args, "-L", p.Label)
		}
		if p.UUID != "" {
			args = append(args, "-U", p.UUID)
		}
		cmds = append(cmds, append(args, path, fmt.Sprintf("%dk", size/1024)))
	case "vfat":
		args := []string{"mkfs.vfat", "-F", "32", "--offset", fmt.Sprint(start / 512)}
		if p.Label != "" {
			args = append(args, "-n", p.Label)
		}
		cmds = append(cmds, append(args, path, fmt.Sprint(size/1024)))
		if p.Tree != "" {
			ents, err := os.ReadDir(p.Tree)
			if err != nil {
				return err
			}
			cp := []string{"mcopy", "-s", "-i", fmt.Sprintf("%s@@%d", path, start)}
			for _, e := range ents {
				cp = append(cp, filepath.Join(p.Tree, e.Name()))
			}
			if len(ents) > 0 {
				cmds = append(cmds, append(cp, "::/"))
			}
		}
	default:
		return fmt.Errorf("no filesystem %q here", p.FS)
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", c[0], err, out)
		}
	}
	return nil
}
