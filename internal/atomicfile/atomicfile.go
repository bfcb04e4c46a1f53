// Package atomicfile writes files that are either wholly old or wholly new:
// the appliance keeps leases, certificates and configurations across
// power losses, and a half-written one must never be read back.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write writes data, with permissions mode, to path through a temporary file in the same
// directory, synced and then renamed over path; the directory is synced
// too, so that the rename itself survives a power loss.
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // nothing there after the rename
	// The temporary file is 0600 already: no fchmod then, which the
	// switch's seccomp filter does not allow (its lease files are 0600).
	if mode != 0o600 {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
