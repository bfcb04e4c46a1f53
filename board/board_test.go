package board

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindQemu(t *testing.T) {
	b, err := Find(".", "qemu")
	if err != nil {
		t.Fatal(err)
	}
	if b.Console != "ttyS0" || !strings.Contains(b.Cmdline, "console=ttyS0") {
		t.Errorf("console %q cmdline %q", b.Console, b.Cmdline)
	}
	mods := b.ModulesFor("AuthenticAMD")
	if mods[len(mods)-1] != "kvm_amd" {
		t.Errorf("AMD modules end with %q, want kvm_amd", mods[len(mods)-1])
	}
	for _, m := range b.ModulesFor("GenuineIntel") {
		if m == "kvm_amd" {
			t.Error("kvm_amd offered to an Intel CPU")
		}
	}
	all := b.AllModules()
	if len(all) != len(b.Modules)+2 {
		t.Errorf("AllModules = %v", all)
	}
}

func TestFindUnknown(t *testing.T) {
	for _, name := range []string{"nope", "../qemu", "Qemu", ""} {
		_, err := Find(".", name)
		if !errors.Is(err, ErrUnknown) {
			t.Errorf("Find(%q) = %v, want ErrUnknown", name, err)
		}
	}
	_, err := Find(".", "nope")
	if !strings.Contains(err.Error(), "known boards: [qemu]") {
		t.Errorf("error does not list the known boards: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	good := "name: x\nkernel: {package: linux-image-amd64}\nconsole: ttyS0\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", good + "modulez: [kvm]\n", "field modulez not found"},
		{"bad type", good + "modules: 3\n", "cannot unmarshal"},
		{"bad package", "name: x\nkernel: {package: 'Linux Image'}\nconsole: ttyS0\n", "not a Debian package name"},
		{"no console", "name: x\nkernel: {package: linux-image-amd64}\n", "console is required"},
		{"bad module", good + "modules: ['kvm;rm']\n", "not a module name"},
		{"bad vendor", good + "cpu_modules: {Cyrix: [kvm]}\n", "unknown CPU vendor"},
	} {
		_, err := Parse("b.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "b.yaml:") {
			t.Errorf("%s: err = %v, want b.yaml: ... %s", tc.name, err, tc.want)
		}
	}
	if _, err := Parse("b.yaml", []byte(good)); err != nil {
		t.Errorf("good board: %v", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b, err := Find(".", "qemu")
	if err != nil {
		t.Fatal(err)
	}
	b.Resolved = &Resolved{KernelPackage: "linux-image-6.1.0-56-cloud-amd64", KernelVersion: "6.1.192-2",
		KernelRelease: "6.1.0-56-cloud-amd64", Modules: []string{"kernel/a.ko"}}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "board.yaml")
	os.WriteFile(p, data, 0o644)
	c, err := Parse(p, data)
	if err != nil {
		t.Fatal(err)
	}
	if c.Resolved.KernelRelease != b.Resolved.KernelRelease || len(c.Modules) != len(b.Modules) {
		t.Errorf("round trip lost data: %+v", c)
	}
}
