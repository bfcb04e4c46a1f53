// Package board describes the hardware targets hyperroot is built for: which
// Debian kernel, which modules to load at boot, which kernel command line and
// console. Each board is a folder holding a board.yaml; the image builder
// resolves it (kernel version, module dependencies) and stores the resolved
// form in the image, where PID 1 reads it back.
package board

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"go.yaml.in/yaml/v3"
)

// Kernel names the Debian kernel package of a board.
type Kernel struct {
	// Package is a Debian package name, usually a metapackage such as
	// linux-image-cloud-amd64 that the builder resolves to the current ABI.
	Package string `yaml:"package"`
	// Version optionally pins a preferred package version.
	Version string `yaml:"version,omitempty"`
}

// Board is one board.yaml. After the image builder resolved it, the Resolved
// part is filled in and the whole is written into the image as
// /etc/hyperroot/board.yaml.
type Board struct {
	Name        string              `yaml:"name"`
	Description string              `yaml:"description,omitempty"`
	Kernel      Kernel              `yaml:"kernel"`
	Cmdline     string              `yaml:"cmdline"`
	Console     string              `yaml:"console"`
	Hostname    string              `yaml:"hostname,omitempty"`
	Modules     []string            `yaml:"modules,omitempty"`
	CPUModules  map[string][]string `yaml:"cpu_modules,omitempty"`
	Resolved    *Resolved           `yaml:"resolved,omitempty"`
}

// Resolved records what a build actually used, so the console banner and
// out/ can say it.
type Resolved struct {
	KernelPackage string `yaml:"kernel_package"` // e.g. linux-image-6.1.0-56-cloud-amd64
	KernelVersion string `yaml:"kernel_version"` // Debian version, e.g. 6.1.192-2
	KernelRelease string `yaml:"kernel_release"` // uname -r, e.g. 6.1.0-56-cloud-amd64
	Version       string `yaml:"hyperroot_version"`
	// Modules is every module file in the image (relative to
	// /lib/modules/<release>), dependencies included.
	Modules []string `yaml:"modules"`
}

// ImagePath is where the resolved board lives inside the appliance image.
const ImagePath = "/etc/hyperroot/board.yaml"

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	moduleRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	debRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
)

// ErrUnknown is returned by Find for a board that has no folder.
var ErrUnknown = errors.New("unknown board")

// Find loads the board called name from the boards directory dir
// (the repository's board/ folder).
func Find(dir, name string) (*Board, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("board %q: %w (names are lower-case letters, digits and dashes)", name, ErrUnknown)
	}
	p := filepath.Join(dir, name, "board.yaml")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("board %q: %w: no %s (known boards: %v)", name, ErrUnknown, p, List(dir))
	}
	if err != nil {
		return nil, err
	}
	b, err := Parse(p, data)
	if err != nil {
		return nil, err
	}
	if b.Name != name {
		return nil, fmt.Errorf("%s: name %q does not match its folder %q", p, b.Name, name)
	}
	return b, nil
}

// List returns the names of the boards under dir.
func List(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "*", "board.yaml"))
	var names []string
	for _, p := range m {
		names = append(names, filepath.Base(filepath.Dir(p)))
	}
	sort.Strings(names)
	return names
}

// Parse decodes and validates a board file. Unknown keys are errors, so a
// typo cannot silently drop a module from the image.
func Parse(file string, data []byte) (*Board, error) {
	var b Board
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if err := b.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &b, nil
}

func (b *Board) validate() error {
	switch {
	case !nameRE.MatchString(b.Name):
		return fmt.Errorf("name %q: want lower-case letters, digits and dashes", b.Name)
	case !debRE.MatchString(b.Kernel.Package):
		return fmt.Errorf("kernel.package %q is not a Debian package name", b.Kernel.Package)
	case b.Console == "":
		return errors.New("console is required (e.g. ttyS0)")
	}
	all := append([]string(nil), b.Modules...)
	for vendor, mods := range b.CPUModules {
		if vendor != "AuthenticAMD" && vendor != "GenuineIntel" {
			return fmt.Errorf("cpu_modules: unknown CPU vendor %q (AuthenticAMD or GenuineIntel)", vendor)
		}
		all = append(all, mods...)
	}
	for _, m := range all {
		if !moduleRE.MatchString(m) {
			return fmt.Errorf("module %q: not a module name", m)
		}
	}
	return nil
}

// ModulesFor returns the modules to load, in order, on a CPU whose
// /proc/cpuinfo vendor_id is vendor.
func (b *Board) ModulesFor(vendor string) []string {
	return append(append([]string(nil), b.Modules...), b.CPUModules[vendor]...)
}

// AllModules returns every module the board may load, on any CPU, in a
// stable order: what the image must carry.
func (b *Board) AllModules() []string {
	mods := append([]string(nil), b.Modules...)
	vendors := make([]string, 0, len(b.CPUModules))
	for v := range b.CPUModules {
		vendors = append(vendors, v)
	}
	sort.Strings(vendors)
	for _, v := range vendors {
		mods = append(mods, b.CPUModules[v]...)
	}
	return mods
}

// Marshal encodes b as YAML, the format Parse reads.
func (b *Board) Marshal() ([]byte, error) {
	return yaml.Marshal(b)
}
