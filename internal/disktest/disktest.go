// Package disktest makes disk images for tests: a GPT disk laid out as a
// distribution's cloud image is, with an ext4 root filled from a
// directory, so that the code that boots or reads such images meets the
// real formats (go-diskfs writes the partition table, Debian's mkfs.ext4
// the filesystem).
package disktest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// GPTExt4 writes a GPT disk image of size bytes at path: a 1 MiB BIOS
// boot partition 1, then partition 2 to the end with an ext4 filesystem
// (4 KiB blocks) holding a copy of tree.
func GPTExt4(t testing.TB, path string, size int64, tree string) {
	t.Helper()
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	if err := WriteGPTExt4(path, size, tree, ""); err != nil {
		t.Fatal(err)
	}
}

// WriteGPTExt4 is GPTExt4 outside a test, with the filesystem's label
// (none if "").
func WriteGPTExt4(path string, size int64, tree, label string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	const mib = 2048 // sectors
	table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: []*gpt.Partition{
		{Index: 1, Start: mib, End: 2*mib - 1, Type: gpt.BIOSBoot, Name: "bios"},
		{Index: 2, Start: 2 * mib, End: uint64(size/512) - 34, Type: gpt.LinuxFilesystem, Name: "root"},
	}}
	w, err := file.New(f, false).Writable()
	if err != nil {
		return err
	}
	if err := table.Write(w, size); err != nil {
		return err
	}
	// 4 KiB blocks, as distributions' images have (go-diskfs misreads
	// files of 1 KiB-block filesystems).
	fsKiB := (size - 2<<20 - 34*512) / 1024
	args := []string{"-q", "-F", "-b", "4096", "-d", tree, "-E", fmt.Sprintf("offset=%d", 2<<20)}
	if label != "" {
		args = append(args, "-L", label)
	}
	out, err := exec.Command("mkfs.ext4", append(args, path, fmt.Sprintf("%dk", fsKiB))...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %v\n%s", err, out)
	}
	return nil
}
