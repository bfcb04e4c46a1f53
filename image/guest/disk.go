package main

// Disk actions: what the end-to-end tests ask of the guest's virtio-blk
// disks. The first disk is /dev/vda; the filesystem actions expect an
// ext4 filesystem on it (made by the test on the host with mkfs.ext4, so
// the guest needs no mkfs). File contents are ChaCha8 streams seeded from
// hyperroot.seed=<n> and the file name, so that the test can compute the
// same bytes on the host.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/datadisk"
)

const (
	mnt      = "/mnt"
	fileSize = 1 << 20
	nFiles   = 3
)

// diskActions maps action names to their functions.
var diskActions = map[string]func(seed uint64) error{
	"disk-write":           diskWrite,
	"disk-verify":          diskVerify,
	"disk-fsync-then-hang": diskFsyncThenHang,
	"disk-rw-parallel":     diskParallel,
	"disk-ro":              diskRO,
	"disk-iops":            diskIOPS,
	"disk-bench":           diskBenchAction, // diskbench.go
	"disk-raw-write":       diskRawWrite,
	"disk-raw-read":        diskRawRead,
	"disk-churn":           diskChurn, // churn.go
	// The same on the first namespace of the first NVMe controller: a
	// device passed through to the VM (VFIO).
	"nvme-raw-write": func(seed uint64) error { return rawPattern("/dev/nvme0n1", seed, true) },
	"nvme-raw-read":  func(seed uint64) error { return rawPattern("/dev/nvme0n1", seed, false) },
	"nvme-fs-write":  nvmeFS,
}

// nvmeFS formats the first namespace of the first NVMe controller (a GPT
// and an ext4 filesystem, both named guestdata, made as the appliance makes
// its data disk), mounts it with the guest's kernel, writes a file of
// seed's content, unmounts, mounts it again read-only and reads the file
// back: "guest: fs <partition> sha256 <sum>".
func nvmeFS(seed uint64) error {
	const dev, dir = "/dev/nvme0n1", "/mnt/nvme"
	if err := waitDev(dev); err != nil {
		return err
	}
	part, err := datadisk.FormatAs(dev, "guestdata")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(part, dir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", part, err)
	}
	if err := os.WriteFile(dir+"/pattern", content(seed, "fs", rawSize), 0o644); err != nil {
		return err
	}
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", part, err)
	}
	if err := unix.Mount(part, dir, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount %s again: %w", part, err)
	}
	b, err := os.ReadFile(dir + "/pattern")
	if uerr := unix.Unmount(dir, 0); err == nil && uerr != nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	fmt.Printf("guest: fs %s sha256 %s\n", part, sum(b))
	nvmeInterrupts()
	return nil
}

// content is the deterministic content of a test file.
func content(seed uint64, name string, n int) []byte {
	key := sha256.Sum256([]byte(fmt.Sprintf("hyperroot %d %s", seed, name)))
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// waitDev waits for a disk's device node: virtio_blk's probe creates it,
// normally before its module load returns. The nvme driver probes on a
// workqueue of its own, a controller reset and a namespace scan later,
// which a nested emulated machine takes far longer for: a minute.
func waitDev(dev string) error {
	wait := 10 * time.Second
	if strings.HasPrefix(dev, "/dev/nvme") {
		wait = time.Minute
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(dev); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
	}
}

func mount(readOnly bool) error {
	if err := waitDev("/dev/vda"); err != nil {
		return err
	}
	os.MkdirAll(mnt, 0o755)
	var flags uintptr
	if readOnly {
		flags = unix.MS_RDONLY
	}
	if err := unix.Mount("/dev/vda", mnt, "ext4", flags, ""); err != nil {
		return fmt.Errorf("mount /dev/vda: %w", err)
	}
	return nil
}

func unmount() error {
	if err := unix.Unmount(mnt, 0); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	unix.Sync()
	return nil
}

// writeFile writes a file and makes it durable: the data, its inode and
// its directory entry (fsync of the file, then of the directory).
func writeFile(name string, data []byte) error {
	f, err := os.OpenFile(filepath.Join(mnt, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(mnt)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// diskWrite writes nFiles files of fileSize bytes on vda's filesystem and
// prints their checksums.
func diskWrite(seed uint64) error {
	if err := mount(false); err != nil {
		return err
	}
	for i := range nFiles {
		name := fmt.Sprintf("file%d", i)
		data := content(seed, name, fileSize)
		if err := writeFile(name, data); err != nil {
			return err
		}
		fmt.Printf("guest: file %s sha256 %s\n", name, sum(data))
	}
	return unmount()
}

// diskVerify mounts vda's filesystem read-only and prints the checksum of
// every regular file on it.
func diskVerify(uint64) error {
	if err := mount(true); err != nil {
		return err
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(mnt, e.Name()))
		if err != nil {
			return err
		}
		fmt.Printf("guest: file %s sha256 %s\n", e.Name(), sum(b))
	}
	return unmount()
}

// diskFsyncThenHang writes one file durably, says so, and hangs: the test
// then cuts the power.
func diskFsyncThenHang(seed uint64) error {
	if err := mount(false); err != nil {
		return err
	}
	data := content(seed, "synced", fileSize)
	if err := writeFile("synced", data); err != nil {
		return err
	}
	fmt.Printf("guest: synced %s\n", sum(data))
	select {}
}

// rawSize is how much of vda disk-raw-write writes, from its start.
const rawSize = 1 << 20

// diskRawWrite writes rawSize bytes of content at the start of vda itself
// (no filesystem: the disk may be a new, empty file), durably, and prints
// their checksum.
func diskRawWrite(seed uint64) error { return rawPattern("/dev/vda", seed, true) }

// diskRawRead prints the checksum of the first rawSize bytes of vda.
func diskRawRead(seed uint64) error { return rawPattern("/dev/vda", seed, false) }

// rawPattern writes the seed's content at the start of the disk dev (and
// makes it durable) or reads what is there, and prints the checksum of
// those rawSize bytes.
func rawPattern(dev string, seed uint64, write bool) error {
	f, _, err := openDirectDev(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := alignedBuf(rawSize)
	if err != nil {
		return err
	}
	if write {
		copy(buf, content(seed, "raw", rawSize))
		if _, err := f.WriteAt(buf, 0); err != nil {
			return err
		}
		err = unix.Fdatasync(int(f.Fd()))
	} else {
		_, err = f.ReadAt(buf, 0)
	}
	if err != nil {
		return err
	}
	fmt.Printf("guest: raw sha256 %s\n", sum(buf))
	if strings.HasPrefix(dev, "/dev/nvme") {
		nvmeInterrupts()
	}
	return nil
}

// nvmeInterrupts prints the nvme driver's lines of /proc/interrupts, spaces
// collapsed ("guest: interrupts 24: 57 IO-APIC 24-fasteoi nvme0q0,
// nvme0q1"), which say how the device interrupted: MSI-X, or INTx through
// the IOAPIC.
func nvmeInterrupts() {
	b, _ := os.ReadFile("/proc/interrupts")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "nvme") {
			fmt.Printf("guest: interrupts %s\n", strings.Join(strings.Fields(l), " "))
		}
	}
}

// alignedBuf returns page-aligned memory, as O_DIRECT needs.
func alignedBuf(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func devSize(f *os.File) (int64, error) {
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	return int64(n), err
}

// openDirect waits for /dev/vda and opens it read-write with O_DIRECT, so
// that every read and write reaches the VMM; it returns its size too.
func openDirect() (*os.File, int64, error) { return openDirectDev("/dev/vda") }

// openDirectDev is openDirect for the disk dev.
func openDirectDev(dev string) (*os.File, int64, error) {
	if err := waitDev(dev); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil, 0, err
	}
	size, err := devSize(f)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return f, size, nil
}

// diskParallel has workers write and read vda concurrently with O_DIRECT
// (so that every read is served by the device, not the page cache), each
// in its own region, checking every byte read against what it wrote; then
// each worker checks a neighbour's region, so that writes made through
// one queue are read through another.
func diskParallel(seed uint64) error {
	const workers, block, maxBlocks, rounds = 4, 4096, 16, 300
	f, size, err := openDirect()
	if err != nil {
		return err
	}
	defer f.Close()
	region := size / workers / block * block
	if region < maxBlocks*block {
		return fmt.Errorf("disk of %d bytes too small", size)
	}
	shadows := make([][]byte, workers)
	var total atomic.Int64
	run := func(work func(w int) error) error {
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[w] = work(w)
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	// check reads region w in chunks and compares it with its shadow.
	check := func(w int, buf []byte) error {
		base := int64(w) * region
		for off := int64(0); off < region; off += int64(len(buf)) {
			n := min(int64(len(buf)), region-off)
			if _, err := f.ReadAt(buf[:n], base+off); err != nil {
				return fmt.Errorf("read region %d at %d: %w", w, off, err)
			}
			if i := firstDiff(buf[:n], shadows[w][off:off+n]); i >= 0 {
				return fmt.Errorf("region %d: byte %d differs from what was written", w, off+int64(i))
			}
			total.Add(n)
		}
		return nil
	}
	err = run(func(w int) error {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		buf, err := alignedBuf(maxBlocks * block)
		if err != nil {
			return err
		}
		defer unix.Munmap(buf)
		base := int64(w) * region
		shadow := make([]byte, region)
		shadows[w] = shadow
		// Fill the region, so that every byte is known.
		for off := int64(0); off < region; off += int64(len(buf)) {
			n := min(int64(len(buf)), region-off)
			fillRandom(rng, shadow[off:off+n])
			copy(buf, shadow[off:off+n])
			if _, err := f.WriteAt(buf[:n], base+off); err != nil {
				return fmt.Errorf("fill region %d at %d: %w", w, off, err)
			}
			total.Add(n)
		}
		// Random writes and reads, each read checked.
		for range rounds {
			n := int64(1+rng.IntN(maxBlocks)) * block
			off := rng.Int64N((region-n)/block+1) * block
			if rng.IntN(2) == 0 {
				fillRandom(rng, shadow[off:off+n])
				copy(buf, shadow[off:off+n])
				if _, err := f.WriteAt(buf[:n], base+off); err != nil {
					return fmt.Errorf("write region %d at %d: %w", w, off, err)
				}
			} else {
				if _, err := f.ReadAt(buf[:n], base+off); err != nil {
					return fmt.Errorf("read region %d at %d: %w", w, off, err)
				}
				if i := firstDiff(buf[:n], shadow[off:off+n]); i >= 0 {
					return fmt.Errorf("region %d: byte %d differs from what was written", w, off+int64(i))
				}
			}
			total.Add(n)
		}
		return check(w, buf)
	})
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	err = run(func(w int) error {
		buf, err := alignedBuf(maxBlocks * block)
		if err != nil {
			return err
		}
		defer unix.Munmap(buf)
		return check((w+1)%workers, buf)
	})
	if err != nil {
		return err
	}
	fmt.Printf("guest: parallel ok bytes=%d workers=%d\n", total.Load(), workers)
	return nil
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// diskRO tries to change a read-only vda, as a write to the device and as
// a read-write mount, and prints what happened and the checksum of its
// first MiB.
func diskRO(uint64) error {
	if err := waitDev("/dev/vda"); err != nil {
		return err
	}
	ro, _ := os.ReadFile("/sys/block/vda/ro")
	write := "ok"
	if f, err := os.OpenFile("/dev/vda", os.O_WRONLY, 0); err != nil {
		write = errName(err)
	} else {
		if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
			write = errName(err)
		} else if err := f.Sync(); err != nil {
			write = errName(err)
		}
		f.Close()
	}
	os.MkdirAll(mnt, 0o755)
	mountRW := "ok"
	if err := unix.Mount("/dev/vda", mnt, "ext4", 0, ""); err != nil {
		mountRW = errName(err)
	} else {
		unix.Unmount(mnt, 0)
	}
	f, err := os.Open("/dev/vda")
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1<<20)
	if _, err := f.ReadAt(b, 0); err != nil {
		return err
	}
	fmt.Printf("guest: ro sysfs=%s write=%s mount-rw=%s first-mib-sha256 %s\n", strings.TrimSpace(string(ro)), write, mountRW, sum(b))
	return nil
}

func errName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return err.Error()
}

// diskIOPS measures each disk in turn: 4 KiB random O_DIRECT reads from
// hyperroot.iodepth= goroutines (default four), two seconds to drain any
// burst allowance, then ten seconds counted.
func diskIOPS(seed uint64) error {
	const warmup, measure = 2 * time.Second, 10 * time.Second
	workers := max(1, min(cmdlineInt("iodepth", 4), 256))
	if err := waitDev("/dev/vda"); err != nil {
		return err
	}
	devs, _ := filepath.Glob("/dev/vd[a-z]")
	sort.Strings(devs)
	for _, dev := range devs {
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			return err
		}
		size, err := devSize(f)
		if err != nil {
			f.Close()
			return err
		}
		var done atomic.Int64
		var stop atomic.Bool
		errs := make(chan error, workers)
		for w := range workers {
			go func() {
				rng := rand.New(rand.NewPCG(seed, uint64(w)))
				buf, err := alignedBuf(4096)
				if err != nil {
					errs <- err
					return
				}
				defer unix.Munmap(buf)
				for !stop.Load() {
					if _, err := f.ReadAt(buf, rng.Int64N(size/4096)*4096); err != nil {
						errs <- err
						return
					}
					done.Add(1)
				}
				errs <- nil
			}()
		}
		time.Sleep(warmup)
		start, n0 := time.Now(), done.Load()
		time.Sleep(measure)
		n, elapsed := done.Load()-n0, time.Since(start)
		stop.Store(true)
		var werr error
		for range workers {
			werr = errors.Join(werr, <-errs)
		}
		f.Close()
		if werr != nil {
			return fmt.Errorf("%s: %w", dev, werr)
		}
		serial, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "serial"))
		fmt.Printf("guest: iops %s serial=%s %d\n", filepath.Base(dev), strings.TrimSpace(string(serial)), int64(float64(n)/elapsed.Seconds()+0.5))
	}
	return nil
}
