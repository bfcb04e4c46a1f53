// Package kvmtests finds the tests that need /dev/kvm, so that a machine
// without one can run them somewhere that has it (inside the appliance,
// under QEMU) instead of skipping them.
//
// A test needs KVM when its body calls testenv.NeedKVM, directly or through
// helpers of its own package (found by name: a helper called the same as one
// that needs KVM counts as needing it too, which errs on the side of running
// a test in the appliance).
package kvmtests

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// marker is the call that makes a test a KVM test.
const marker = "NeedKVM"

// Package is one package directory with tests that need KVM.
type Package struct {
	Dir        string   // relative to the root, slash-separated, e.g. "vmm/kvm"
	Tests      []string // test function names, sorted
	Benchmarks []string // benchmark function names, sorted
}

// RunRegexp is a -test.run value that selects exactly the package's KVM tests.
func (p Package) RunRegexp() string { return anchored(p.Tests) }

// BenchRegexp is a -test.bench value for its KVM benchmarks ("" if none).
func (p Package) BenchRegexp() string {
	if len(p.Benchmarks) == 0 {
		return ""
	}
	return anchored(p.Benchmarks)
}

func anchored(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexp.QuoteMeta(n)
	}
	return "^(" + strings.Join(q, "|") + ")$"
}

// Find walks the module rooted at root and returns every package with tests
// or benchmarks that need KVM, sorted by directory. Directories named
// testdata, out or starting with "." are not packages of the module.
func Find(root string) ([]Package, error) {
	byDir := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if path != root && (n == "testdata" || n == "out" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, "_test.go") {
			byDir[filepath.Dir(path)] = append(byDir[filepath.Dir(path)], path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var pkgs []Package
	for dir, files := range byDir {
		p, err := scan(files)
		if err != nil {
			return nil, err
		}
		if len(p.Tests)+len(p.Benchmarks) == 0 {
			continue
		}
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			return nil, err
		}
		p.Dir = filepath.ToSlash(rel)
		pkgs = append(pkgs, p)
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Dir < pkgs[j].Dir })
	return pkgs, nil
}

// scan reads one package's test files. Files without the marker anywhere
// in the package are skipped cheaply.
func scan(files []string) (Package, error) {
	var p Package
	srcs := map[string][]byte{}
	marked := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return p, err
		}
		srcs[f] = b
		marked = marked || bytes.Contains(b, []byte(marker))
	}
	if !marked {
		return p, nil
	}
	fset := token.NewFileSet()
	calls := map[string]map[string]bool{} // function name -> names it calls
	var funcs []string
	for f, src := range srcs {
		af, err := parser.ParseFile(fset, f, src, parser.SkipObjectResolution)
		if err != nil {
			return p, err
		}
		for _, decl := range af.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			name := fd.Name.Name
			if calls[name] == nil {
				calls[name] = map[string]bool{}
				funcs = append(funcs, name)
			}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				ce, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				switch fn := ce.Fun.(type) {
				case *ast.Ident:
					calls[name][fn.Name] = true
				case *ast.SelectorExpr:
					calls[name][fn.Sel.Name] = true
				}
				return true
			})
		}
	}
	// Fixpoint: a function needs KVM if it calls the marker or a function
	// that needs KVM.
	needs := map[string]bool{marker: true}
	for changed := true; changed; {
		changed = false
		for _, fn := range funcs {
			if needs[fn] {
				continue
			}
			for callee := range calls[fn] {
				if needs[callee] {
					needs[fn], changed = true, true
					break
				}
			}
		}
	}
	for _, fn := range funcs {
		switch {
		case !needs[fn] || fn == marker:
		case isTestFunc(fn, "Test"):
			p.Tests = append(p.Tests, fn)
		case isTestFunc(fn, "Benchmark"):
			p.Benchmarks = append(p.Benchmarks, fn)
		}
	}
	sort.Strings(p.Tests)
	sort.Strings(p.Benchmarks)
	return p, nil
}

// isTestFunc reports whether name is a Test or Benchmark function name as
// the go tool recognises it (the prefix, then nothing or a non-lower-case
// rune).
func isTestFunc(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	return rest == "" || !(rest[0] >= 'a' && rest[0] <= 'z')
}

// Mode says what a staged run does with the packages' KVM functions.
type Mode int

const (
	Tests      Mode = iota // run the tests, -test.v, strict
	Benchmarks             // run only the benchmarks, with -benchmem
)

// ApplianceDir is where Stage's files go inside the appliance, and Command
// the hyperroot.run= value that runs them.
const (
	ApplianceDir = "/kvmtests"
	Command      = ApplianceDir + "/kvmtest,run," + ApplianceDir + "/manifest"
)

// Stage prepares an overlay (a directory copied over the appliance's root)
// that runs pkgs' KVM tests or benchmarks: the tools/kvmtest driver, each
// package's test binary and the manifest. goBin builds them for the
// appliance's CPU model (GOAMD64=v1, no cgo). It returns the packages
// staged (those with something to run in that mode) and, as
// "host-path:image-path" pairs for the overlay archive (image.WriteOverlay,
// qemu.Options.Files), their testdata directories, which the archive reads
// where they are rather than from a copy.
func Stage(goBin, root, overlay string, pkgs []Package, mode Mode) (staged []Package, files []string, err error) {
	base := filepath.Join(overlay, filepath.FromSlash(strings.TrimPrefix(ApplianceDir, "/")))
	build := func(args ...string) error {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOAMD64=v1", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := build("build", "-o", filepath.Join(base, "kvmtest"), "./tools/kvmtest"); err != nil {
		return nil, nil, err
	}
	var manifest strings.Builder
	for _, p := range pkgs {
		// HYPERROOT_IMAGE: tests that need a Linux kernel take the test
		// guest's, which the image carries in /guest.
		args := "HYPERROOT_IMAGE=/guest -test.count=1 -test.timeout=20m"
		switch {
		case mode == Tests && len(p.Tests) > 0:
			args += " -test.v -test.run " + p.RunRegexp()
		case mode == Benchmarks && len(p.Benchmarks) > 0:
			args += " -test.run ^$ -test.benchmem -test.bench " + p.BenchRegexp()
		default:
			continue
		}
		dir := filepath.Join(base, filepath.FromSlash(p.Dir))
		if err := build("test", "-c", "-o", filepath.Join(dir, "pkg.test"), "./"+p.Dir); err != nil {
			return nil, nil, err
		}
		testdata := filepath.Join(root, filepath.FromSlash(p.Dir), "testdata")
		if fi, err := os.Stat(testdata); err == nil && fi.IsDir() {
			files = append(files, testdata+":"+path.Join(ApplianceDir, p.Dir, "testdata"))
		}
		fmt.Fprintf(&manifest, "%s %s\n", p.Dir, args)
		staged = append(staged, p)
	}
	if len(staged) == 0 {
		return nil, nil, fmt.Errorf("no package has KVM %s", map[Mode]string{Tests: "tests", Benchmarks: "benchmarks"}[mode])
	}
	return staged, files, os.WriteFile(filepath.Join(base, "manifest"), []byte(manifest.String()), 0o644)
}
