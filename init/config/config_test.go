package config

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`
vms:
  - name: web
    cpus: 2
    memory: 512M
    kernel: /guest/vmlinuz
    initrd: /guest/initramfs.cpio
    cmdline: console=ttyS0 quiet
    restart: always
  - name: db
    kernel: /guest/vmlinuz
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.VMs) != 2 {
		t.Fatalf("%d VMs", len(c.VMs))
	}
	web, db := c.VMs[0], c.VMs[1]
	if web.CPUs != 2 || web.Memory != 512<<20 || web.Restart != RestartAlways || web.Initrd != "/guest/initramfs.cpio" {
		t.Errorf("web = %+v", web)
	}
	if db.CPUs != 1 || db.Memory != 256<<20 || db.Restart != RestartOnFailure || db.Cmdline != "console=ttyS0" {
		t.Errorf("db defaults = %+v", db)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown top key", "vm: []\n", `c.yaml:1:1: unknown key "vm" (known: vms)`},
		{"unknown vm key", "vms:\n  - name: a\n    kernel: /k\n    cpu: 2\n", `c.yaml:4:5: unknown key "cpu"`},
		{"bad cpus", "vms:\n  - {name: a, kernel: /k, cpus: 0}\n", "c.yaml:2:33: cpus 0: want 1 to 1024"},
		{"cpus not a number", "vms:\n  - {name: a, kernel: /k, cpus: two}\n", `c.yaml:2:33: want a whole number, found "two"`},
		{"bad memory", "vms:\n  - {name: a, kernel: /k, memory: 12Q}\n", `c.yaml:2:35: memory: size "12Q"`},
		{"tiny memory", "vms:\n  - {name: a, kernel: /k, memory: 1M}\n", "memory 1M: want at least 16M"},
		{"no kernel", "vms:\n  - {name: a}\n", "c.yaml:2:5: vm a: kernel is required"},
		{"no name", "vms:\n  - {kernel: /k}\n", "name is required"},
		{"relative path", "vms:\n  - {name: a, kernel: vmlinuz}\n", `path "vmlinuz": want an absolute path`},
		{"bad restart", "vms:\n  - {name: a, kernel: /k, restart: sometimes}\n", `restart "sometimes"`},
		{"bad name", "vms:\n  - {name: Web_1, kernel: /k}\n", `name "Web_1"`},
		{"duplicate", "vms:\n  - {name: a, kernel: /k}\n  - {name: a, kernel: /k}\n", `duplicate VM name "a"`},
		{"twice", "vms: []\nvms: []\n", `key "vms" given twice`},
		{"not a list", "vms: {name: a}\n", "c.yaml:1:6: want a list"},
		{"syntax", "vms: [\n", "c.yaml: yaml:"},
	} {
		_, err := Parse("c.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"4096": 4096, "64K": 64 << 10, "512M": 512 << 20, "2G": 2 << 30, "2GiB": 2 << 30, "1T": 1 << 40, "5g": 5 << 30} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1G", "1.5G", "99999999999999999999", "20000000T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if s := Size(512 << 20).String(); s != "512M" {
		t.Errorf("String = %s", s)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("vms:\n  - {name: a, kernel: /k, cpus: 2, memory: 1G}\n"))
	f.Add([]byte("vms: [{name: a}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil {
			for _, vm := range c.VMs {
				if vm.CPUs < 1 || vm.Kernel == "" || vm.Memory < 16<<20 {
					t.Fatalf("invalid VM accepted: %+v", vm)
				}
			}
		}
	})
}
