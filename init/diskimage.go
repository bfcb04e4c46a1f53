package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/fetch"
)

// A VM disk with an image: (config.Image) whose file does not exist yet is
// made from the image before the VM starts: the image is downloaded once
// into imagesDir, named by its digest so every disk made from it shares
// it, and copied to the disk's path. The copy is a reflink where the
// filesystem shares blocks between files, else a copy of the image's data
// that keeps its holes. Both steps write to a temporary name first: a
// power loss leaves a part of the download (the next boot resumes it) or
// an unused temporary copy, never a disk that looks made.

// imagesDir holds the downloaded images, on the data disk.
var imagesDir = filepath.Join(config.DataDir, "images")

// imageTimeout bounds one VM start's wait for its images (with retries):
// a start that runs out fails, and the next start resumes the download.
const imageTimeout = 30 * time.Minute

// imagesMu makes one download of an image at a time: two VMs starting
// from the same image share its download. It guards badImages, the
// images whose download did not match their digest.
var (
	imagesMu  sync.Mutex
	badImages = map[config.Image]error{}
)

// makeFromImages makes the missing disk files of vm that have an image.
// Images are kept on the data disk only (dataDisk: one is mounted): in
// RAM a large one would take the appliance's memory. A download gives up
// when quit is closed (the appliance stopping).
func makeFromImages(c *console, vm config.VM, dataDisk bool, quit <-chan struct{}) error {
	for _, d := range vm.Disks {
		if d.Image == nil {
			continue
		}
		if _, err := os.Lstat(d.Path); err == nil {
			continue // made before: the VM's own data now
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
		if !dataDisk {
			return fmt.Errorf("disk %s: image: needs a data disk to keep the image on (see data: in the README); none is mounted", d.Path)
		}
		if err := checkDiskPath(d.Path); err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
		img, err := fetchImage(c, vm.Name, *d.Image, quit)
		if err != nil {
			return fmt.Errorf("disk %s: image: %w", d.Path, err)
		}
		start := time.Now()
		how, err := copyImage(img, d.Path)
		if err != nil {
			return fmt.Errorf("disk %s: from image %s: %w", d.Path, img, err)
		}
		c.Printf("vm %s: disk %s made from image %s (%s, %s)", vm.Name, d.Path, d.Image.SHA256[:12], how, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// fetchImage returns the path of image in imagesDir, downloading it first
// if it is not there.
func fetchImage(c *console, vm string, im config.Image, quit <-chan struct{}) (string, error) {
	imagesMu.Lock()
	defer imagesMu.Unlock()
	path := filepath.Join(imagesDir, im.SHA256+".raw")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err, ok := badImages[im]; ok {
		// Its server gave other bytes than pinned: not again at each
		// restart of the VM, only when the appliance or the pin changes.
		return "", err
	}
	if err := os.MkdirAll(imagesDir, 0o700); err != nil {
		return "", err
	}
	// No bigger than the room there is: a wrong URL must not fill the
	// data disk the configuration and leases are kept on.
	var fsst unix.Statfs_t
	if err := unix.Statfs(imagesDir, &fsst); err != nil {
		return "", err
	}
	room := int64(fsst.Bavail) * fsst.Bsize
	c.Printf("vm %s: image %s: downloading %s", vm, im.SHA256[:12], im.URL)
	ctx, cancel := context.WithTimeout(context.Background(), imageTimeout)
	defer cancel()
	go func() {
		select {
		case <-quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	var shown time.Time
	var size int64
	err := fetch.Download(ctx, im.URL, path, fetch.Options{
		SHA256:   im.SHA256,
		MaxBytes: max(room, 1),
		Retry: func(n int, err error, wait time.Duration) {
			c.Printf("vm %s: image %s: attempt %d: %v; again in %s", vm, im.SHA256[:12], n, err, wait)
		},
	}, func(done, total int64) {
		// Every 5 s, and at each of the download's syncs: what a power
		// loss would keep.
		checkpoint := done/fetch.SyncEvery != size/fetch.SyncEvery
		size = done
		if time.Since(shown) < 5*time.Second && !checkpoint {
			return
		}
		shown = time.Now()
		if total > 0 {
			c.Printf("vm %s: image %s: %d%% (%d of %d MiB)", vm, im.SHA256[:12], done*100/total, done>>20, total>>20)
		} else {
			c.Printf("vm %s: image %s: %d MiB", vm, im.SHA256[:12], done>>20)
		}
	})
	if err != nil {
		if strings.Contains(err.Error(), "sha256 mismatch") {
			badImages[im] = err
		}
		return "", err
	}
	secs := time.Since(start).Seconds()
	c.Printf("vm %s: image %s: %d MiB in %.1f s, sha256 verified", vm, im.SHA256[:12], size>>20, secs)
	return path, nil
}

// copyImage copies the image file src to a new file at dst through a
// temporary file renamed into place, and says how.
func copyImage(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".from-image-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // nothing there once renamed
	how, err := cloneOrCopy(tmp, in)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	// Never over a file made meanwhile (by hand, or by another VM).
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		return "", fmt.Errorf("rename into place: %w", err)
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		d.Sync()
		d.Close()
	}
	return how, nil
}

// cloneOrCopy fills dst with src's contents: a reflink (FICLONE) where the
// filesystem has them, else each of src's data extents copied in the
// kernel (copy_file_range), its holes left holes.
func cloneOrCopy(dst, src *os.File) (string, error) {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return "reflink", nil
	}
	st, err := src.Stat()
	if err != nil {
		return "", err
	}
	size := st.Size()
	if err := dst.Truncate(size); err != nil {
		return "", err
	}
	var copied int64
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from here on
		}
		if err != nil {
			return "", err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return "", err
		}
		n, err := copyRange(dst, src, data, hole-data)
		copied += n
		if err != nil {
			return "", err
		}
		off = hole
	}
	return fmt.Sprintf("copied %d MiB of data", copied>>20), nil
}

// copyRange copies n bytes at off from src to the same offset in dst, in
// the kernel (copy_file_range), or through memory where the kernel will
// not (EXDEV between filesystems of different types, EINVAL, EOPNOTSUPP).
func copyRange(dst, src *os.File, off, n int64) (int64, error) {
	var copied int64
	for in, out := off, off; in < off+n; {
		k, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(off+n-in), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			rest := off + n - in
			m, err := io.Copy(io.NewOffsetWriter(dst, in), io.NewSectionReader(src, in, rest))
			copied += m
			if err == nil && m != rest {
				err = io.ErrUnexpectedEOF
			}
			return copied, err
		}
		if err != nil {
			return copied, err
		}
		if k == 0 {
			return copied, io.ErrUnexpectedEOF
		}
		copied += int64(k)
	}
	return copied, nil
}
