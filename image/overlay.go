package image

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// WriteOverlay writes a newc cpio archive holding the given files and
// directory trees, each a "host-path:image-path" pair (image paths are
// relative to the image's root; "dir:/" adds dir's contents at the root). Appended to a built initramfs, the kernel
// unpacks it over the first archive, which is how a configuration or
// an overlay directory is added to an image without rebuilding it.
func WriteOverlay(w io.Writer, pairs ...string) error {
	rw := cpio.Newc.Writer(w)
	rec := cpio.NewRecorder()
	var records []cpio.Record
	for _, p := range pairs {
		host, dst, ok := strings.Cut(p, ":")
		dst = strings.TrimPrefix(path.Clean("/"+dst), "/")
		if !ok || host == "" {
			return fmt.Errorf("overlay entry %q: want host-path:image-path", p)
		}
		if _, err := os.Stat(host); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
		err := filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			r, err := rec.GetRecord(p)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(host, p)
			if err != nil {
				return err
			}
			r.Name = path.Join(dst, filepath.ToSlash(rel))
			if r.Name != "." { // the image's root itself exists already
				records = append(records, r)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("overlay %s: %w", host, err)
		}
	}
	// Parent directories first (the kernel does not create them), never the
	// root itself, each once.
	written := map[string]bool{}
	for _, r := range records {
		var parents []string
		for d := path.Dir(r.Name); d != "." && !written[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			written[parents[i]] = true
			if err := rw.WriteRecord(cpio.Directory(parents[i], 0o755)); err != nil {
				return err
			}
		}
		if written[r.Name] {
			continue
		}
		written[r.Name] = true
		if err := rw.WriteRecord(r); err != nil {
			return err
		}
	}
	return cpio.WriteTrailer(rw)
}
