package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hyperroot/hyperroot/board"
)

// Package is a Debian binary package in the build cache.
type Package struct {
	Name    string // e.g. linux-image-6.1.0-56-cloud-amd64
	Version string // e.g. 6.1.192-2
	Deb     string // path of the .deb in the cache
}

// Logf is how the builder reports progress.
type Logf func(format string, args ...any)

// FetchKernel resolves the board's kernel package (a metapackage such as
// linux-image-cloud-amd64 becomes the linux-image-<abi>-... it depends on) and
// makes sure its .deb is in cacheDir, downloading it with apt-get when it is
// not there or does not match the archive's SHA256. When apt knows nothing
// (no network, no apt-get update), the newest cached build of the package is
// used with a warning, so that offline rebuilds keep working.
func FetchKernel(ctx context.Context, k board.Kernel, cacheDir string, logf Logf) (*Package, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	name, err := resolveKernel(ctx, k, logf)
	if err != nil {
		if p := newestCached(cacheDir, k.Package); p != nil {
			logf("warning: %v; using cached %s %s", err, p.Name, p.Version)
			return p, nil
		}
		return nil, err
	}
	version, sum, err := archiveVersion(ctx, name)
	if err != nil {
		return nil, err
	}
	p := &Package{Name: name, Version: version, Deb: filepath.Join(cacheDir, debName(name, version))}
	if ok, err := fileSHA256Is(p.Deb, sum); err == nil && ok {
		logf("kernel package %s %s: cached", name, version)
		return p, nil
	} else if err == nil {
		logf("kernel package %s: cached file does not match the archive's SHA256, downloading again", p.Deb)
	}
	if err := download(ctx, name, version, p.Deb); err != nil {
		return nil, err
	}
	if ok, err := fileSHA256Is(p.Deb, sum); err != nil || !ok {
		os.Remove(p.Deb)
		return nil, fmt.Errorf("downloaded %s %s does not match the archive's SHA256 %s", name, version, sum)
	}
	logf("kernel package %s %s: downloaded", name, version)
	return p, nil
}

// resolveKernel turns the board's package (and preferred version) into the
// name of the real kernel image package.
func resolveKernel(ctx context.Context, k board.Kernel, logf Logf) (string, error) {
	if k.Version != "" {
		name, err := dependsOnImage(ctx, k.Package+"="+k.Version)
		if err == nil && name != "" {
			return name, nil
		}
		logf("warning: %s version %s is not in the apt archive any more (Debian keeps only the newest build); using the current one", k.Package, k.Version)
	}
	name, err := dependsOnImage(ctx, k.Package)
	if err != nil {
		return "", err
	}
	if name == "" {
		// Not a metapackage: the board names the image package itself.
		return k.Package, nil
	}
	return name, nil
}

// dependsOnImage returns the linux-image-* package that spec depends on, or
// "" when it depends on none.
func dependsOnImage(ctx context.Context, spec string) (string, error) {
	out, err := run(ctx, "apt-cache", "depends", spec)
	if err != nil {
		return "", fmt.Errorf("apt does not know kernel package %s (%v): run `apt-get update` (./build.sh deps does it) or fix board.yaml", spec, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", nil
}

// archiveVersion returns the candidate version of name and its SHA256.
func archiveVersion(ctx context.Context, name string) (version, sum string, err error) {
	out, err := run(ctx, "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %v", name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok && version == "" {
			version = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "SHA256: "); ok && sum == "" {
			sum = strings.TrimSpace(v)
		}
	}
	if version == "" || sum == "" {
		return "", "", fmt.Errorf("apt-cache show %s: no Version/SHA256 in its record", name)
	}
	return version, sum, nil
}

// download fetches name=version with apt-get into a temporary directory
// and renames it to dst, so an interrupted download leaves nothing behind.
func download(ctx context.Context, name, version, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", name+"="+version)
	cmd.Dir = tmp
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get download %s=%s failed: %v: %s (is the Debian mirror reachable? `apt-get update` first)",
			name, version, err, lastLine(stderr.String()))
	}
	m, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(m) != 1 {
		return fmt.Errorf("apt-get download %s=%s produced %d .deb files", name, version, len(m))
	}
	return os.Rename(m[0], dst)
}

func debName(name, version string) string {
	return fmt.Sprintf("%s_%s_amd64.deb", name, strings.ReplaceAll(version, ":", "%3a"))
}

// newestCached finds the most recently fetched cached kernel .deb that can
// stand for pkg: pkg itself, or any linux-image package of the same flavour
// (the suffix after the ABI, e.g. "cloud-amd64").
func newestCached(cacheDir, pkg string) *Package {
	m, _ := filepath.Glob(filepath.Join(cacheDir, "linux-image-*"+flavour(pkg)+"_*.deb"))
	sort.Slice(m, func(i, j int) bool { return modTime(m[i]) > modTime(m[j]) })
	for _, p := range m {
		base := strings.TrimSuffix(filepath.Base(p), "_amd64.deb")
		if name, version, ok := strings.Cut(base, "_"); ok && flavour(name) == flavour(pkg) {
			return &Package{Name: name, Version: strings.ReplaceAll(version, "%3a", ":"), Deb: p}
		}
	}
	return nil
}

var abiRE = regexp.MustCompile(`^[0-9][0-9.]*-[0-9]+-`)

// flavour is what stays of a kernel package name without "linux-image-"
// and the ABI: "cloud-amd64" for linux-image-6.1.0-56-cloud-amd64 and for
// linux-image-cloud-amd64.
func flavour(pkg string) string {
	return abiRE.ReplaceAllString(strings.TrimPrefix(pkg, "linux-image-"), "")
}

func modTime(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.ModTime().UnixNano()
}

func fileSHA256Is(path, want string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == want, nil
}

// Extracted is a kernel package unpacked into a directory.
type Extracted struct {
	Root    string // the unpacked tree
	Release string // uname -r of the kernel, e.g. 6.1.0-56-cloud-amd64
	Vmlinuz string // path of the bzImage
}

// ModulesDir is /lib/modules/<release> inside the unpacked tree.
func (e *Extracted) ModulesDir() string {
	return filepath.Join(e.Root, "lib", "modules", e.Release)
}

// Extract unpacks p into dir (replacing what is there) with dpkg-deb. A
// truncated or corrupt .deb is removed from the cache, so that the next
// build downloads it again.
func Extract(ctx context.Context, p *Package, dir string) (*Extracted, error) {
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", p.Deb, tmp).CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		os.Remove(p.Deb)
		return nil, fmt.Errorf("kernel package %s is corrupt or truncated (%s); it was removed from the cache, build again to download it anew",
			p.Deb, lastLine(string(out)))
	}
	m, _ := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(m) != 1 {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("kernel package %s: want one boot/vmlinuz-*, found %d", p.Deb, len(m))
	}
	release := strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	e := &Extracted{Root: dir, Release: release, Vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+release)}
	if _, err := os.Stat(e.ModulesDir()); err != nil {
		return nil, fmt.Errorf("kernel package %s has no modules for %s: %w", p.Deb, release, err)
	}
	return e, nil
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s not found: this build needs Debian's apt tools", name)
		}
		return nil, fmt.Errorf("%s: %s", err, lastLine(stderr.String()))
	}
	return out, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
