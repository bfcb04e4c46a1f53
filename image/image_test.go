package image

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/hyperroot/hyperroot/board"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

func TestFlavour(t *testing.T) {
	for in, want := range map[string]string{
		"linux-image-cloud-amd64":          "cloud-amd64",
		"linux-image-6.1.0-56-cloud-amd64": "cloud-amd64",
		"linux-image-amd64":                "amd64",
		"linux-image-6.1.0-56-amd64":       "amd64",
		"linux-image-6.12.9-1-rt-amd64":    "rt-amd64",
	} {
		if got := flavour(in); got != want {
			t.Errorf("flavour(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteOverlay(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "ov", "etc", "x"), 0o755)
	os.WriteFile(filepath.Join(dir, "ov", "etc", "x", "a.txt"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(dir, "cfg.yaml"), []byte("vms: []\n"), 0o600)
	var buf bytes.Buffer
	if err := WriteOverlay(&buf, filepath.Join(dir, "ov")+":/", filepath.Join(dir, "cfg.yaml")+":etc/hyperroot/config.yaml"); err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(buf.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range recs {
		var data []byte
		if r.ReaderAt != nil {
			data, _ = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		}
		got[r.Name] = string(data)
	}
	for name, want := range map[string]string{"etc/x/a.txt": "hello", "etc/hyperroot/config.yaml": "vms: []\n", "etc/hyperroot": "", "etc": ""} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("record %s = %q (present %v), want %q; archive has %v", name, v, ok, want, got)
		}
	}
	if _, ok := got["."]; ok {
		t.Error("archive replaces the root directory")
	}
	if err := WriteOverlay(io.Discard, "/no/such:etc"); err == nil {
		t.Error("missing overlay source accepted")
	}
	if err := WriteOverlay(io.Discard, "no-colon"); err == nil {
		t.Error("entry without image path accepted")
	}
}

// makeDeb builds a tiny Debian package holding files (path -> content).
func makeDeb(t *testing.T, files map[string]string) string {
	t.Helper()
	testenv.NeedTool(t, "dpkg-deb", "dpkg")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte("Package: linux-image-test\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: test\n"), 0o644)
	for p, c := range files {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(c), 0o644)
	}
	deb := filepath.Join(t.TempDir(), "linux-image-test_1.0_amd64.deb")
	if out, err := exec.Command("dpkg-deb", "--build", "-Zgzip", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

func TestExtract(t *testing.T) {
	deb := makeDeb(t, map[string]string{
		"boot/vmlinuz-9.9.9-test":                   strings.Repeat("k", 4096),
		"lib/modules/9.9.9-test/kernel/x.ko":        "module",
		"lib/modules/9.9.9-test/modules.builtin":    "",
		"lib/modules/9.9.9-test/modules.order":      "",
		"usr/share/doc/linux-image-test/README.txt": "doc",
	})
	dir := filepath.Join(t.TempDir(), "k")
	e, err := Extract(context.Background(), &Package{Name: "linux-image-test", Version: "1.0", Deb: deb}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if e.Release != "9.9.9-test" || e.Vmlinuz != filepath.Join(dir, "boot/vmlinuz-9.9.9-test") {
		t.Errorf("got %+v", e)
	}
	if _, err := os.Stat(filepath.Join(e.ModulesDir(), "kernel/x.ko")); err != nil {
		t.Error(err)
	}
}

func TestExtractCorrupt(t *testing.T) {
	deb := makeDeb(t, map[string]string{"boot/vmlinuz-9.9.9-test": strings.Repeat("k", 65536)})
	data, _ := os.ReadFile(deb)
	if err := os.WriteFile(deb, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "k")
	_, err := Extract(context.Background(), &Package{Deb: deb}, dir)
	if err == nil || !strings.Contains(err.Error(), "corrupt or truncated") || !strings.Contains(err.Error(), "build again") {
		t.Fatalf("truncated package: err = %v", err)
	}
	if _, err := os.Stat(deb); !os.IsNotExist(err) {
		t.Error("the corrupt package was left in the cache")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Error("a half-unpacked tree was left behind")
	}
}

func TestExtractNotAKernel(t *testing.T) {
	deb := makeDeb(t, map[string]string{"usr/bin/hello": "x"})
	_, err := Extract(context.Background(), &Package{Deb: deb}, filepath.Join(t.TempDir(), "k"))
	if err == nil || !strings.Contains(err.Error(), "want one boot/vmlinuz-*") {
		t.Fatalf("err = %v", err)
	}
}

func TestFetchUnknownPackage(t *testing.T) {
	testenv.NeedTool(t, "apt-cache", "apt")
	_, err := FetchKernel(context.Background(), board.Kernel{Package: "linux-image-no-such-flavour"}, t.TempDir(), t.Logf)
	if err == nil || !strings.Contains(err.Error(), "apt does not know kernel package linux-image-no-such-flavour") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewestCachedFallback(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"linux-image-6.1.0-55-cloud-amd64_6.1.190-1_amd64.deb", "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	p := newestCached(dir, "linux-image-cloud-amd64")
	if p == nil || p.Name != "linux-image-6.1.0-55-cloud-amd64" || p.Version != "6.1.190-1" {
		t.Fatalf("newestCached = %+v", p)
	}
	if p := newestCached(dir, "linux-image-rt-amd64"); p != nil {
		t.Fatalf("found %+v for another flavour", p)
	}
}

// The appliance's policy compiles, and a broken one is refused with
// checkpolicy's own words (the image build stops there, not at boot).
func TestCompilePolicy(t *testing.T) {
	if _, err := exec.LookPath("checkpolicy"); err != nil {
		t.Fatal("checkpolicy not installed (./build.sh deps installs it)")
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "policy")
	if err := CompilePolicy(context.Background(), "../"+PolicySource, dst); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() < 1000 {
		t.Fatalf("compiled policy: %v %v", fi, err)
	}
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("class file\nsid kernel\nallow nothing;\n"), 0o644)
	err := CompilePolicy(context.Background(), bad, filepath.Join(dir, "bad"))
	if err == nil || !strings.Contains(err.Error(), "bad.conf") {
		t.Fatalf("broken policy: %v", err)
	}
}
