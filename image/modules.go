package image

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/u-root/u-root/pkg/kmodule"
)

// ResolveModules returns the module files (relative to the kernel's
// /lib/modules/<release>) needed to load names, dependencies included, in a
// stable order. It runs depmod on the unpacked kernel first, because
// Debian's .deb ships no modules.dep, then lets u-root's kmodule walk the
// dependencies exactly as PID 1 will at boot. Names built into the kernel
// need no file; a name that is neither a module nor built in is an error.
func ResolveModules(ctx context.Context, e *Extracted, names []string) ([]string, error) {
	if out, err := exec.CommandContext(ctx, "depmod", "-b", e.Root, e.Release).CombinedOutput(); err != nil {
		if _, lerr := exec.LookPath("depmod"); lerr != nil {
			return nil, fmt.Errorf("depmod not found: apt-get install kmod (./build.sh deps does it)")
		}
		return nil, fmt.Errorf("depmod %s: %v: %s", e.Release, err, lastLine(string(out)))
	}
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	prober, err := kmodule.NewProber(kmodule.ProbeOpts{
		RootDir:        e.Root,
		KVer:           e.Release,
		IgnoreProcMods: true,
		DryRunCB: func(path string) {
			mu.Lock()
			defer mu.Unlock()
			if rel, err := filepath.Rel(e.ModulesDir(), path); err == nil {
				seen[rel] = true
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("read modules.dep of %s: %w", e.Release, err)
	}
	for _, n := range names {
		if err := prober.Probe(n, ""); err != nil {
			return nil, fmt.Errorf("module %s: not in kernel %s (neither a module nor built in): %w", n, e.Release, err)
		}
	}
	files := make([]string, 0, len(seen))
	for f := range seen {
		files = append(files, f)
	}
	sort.Strings(files)
	return files, nil
}

// writeModulesDep writes a modules.dep that lists only files (the modules
// the image carries) to path, copying their dependency lines from the full
// one that depmod wrote.
func writeModulesDep(e *Extracted, files []string, path string) error {
	keep := map[string]bool{}
	for _, f := range files {
		keep[f] = true
	}
	in, err := os.Open(filepath.Join(e.ModulesDir(), "modules.dep"))
	if err != nil {
		return err
	}
	defer in.Close()
	var b strings.Builder
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		mod, _, _ := strings.Cut(sc.Text(), ":")
		if keep[mod] {
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
