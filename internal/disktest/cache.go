package disktest

import (
	"os"
	"path/filepath"
)

// DebianDir is where tools/mkdebian keeps the Debian test image and where
// the tests look for it: outside any clone of the repository, as Go keeps
// its module cache, so that a clean clone (CI's) finds it made. It is
// $HYPERROOT_CACHE/debian, else hyperroot/debian in the user's cache
// directory ($XDG_CACHE_HOME or ~/.cache), as ./build.sh has it.
func DebianDir() string {
	if c := os.Getenv("HYPERROOT_CACHE"); c != "" {
		return filepath.Join(c, "debian")
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = os.TempDir()
	}
	return filepath.Join(c, "hyperroot", "debian")
}
