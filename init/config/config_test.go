package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
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
    stop_timeout: 2m
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
	if web.StopGrace() != 2*time.Minute || db.StopGrace() != DefaultStopTimeout {
		t.Errorf("stop timeouts %s, %s", web.StopGrace(), db.StopGrace())
	}
	if db.CPUs != 1 || db.Memory != 256<<20 || db.Restart != RestartOnFailure || db.Cmdline != "console=ttyS0" {
		t.Errorf("db defaults = %+v", db)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown top key", "vm: []\n", `c.yaml:1:1: unknown key "vm" (known: api, data, host, hugepages, jail, networks, pci, vms)`},
		{"jail ids below 65536", "jail: {ids: {from: 1000, to: 2000}}\n", "c.yaml:1:13: ids: from 1000 to 2000: want 65536 <= from"},
		{"jail ids reversed", "jail: {ids: {from: 300000, to: 200000}}\n", "ids: from 300000 to 200000"},
		{"jail ids too high", "jail: {ids: {from: 300000, to: 4294967295}}\n", "ids: from 300000 to 4294967295"},
		{"jail ids leave none for the switch", "jail: {ids: {from: 65536, to: 2147483647}}\n", "leaves no id for the switch's jail"},
		{"jail unknown key", "jail: {uids: {from: 300000, to: 400000}}\n", `unknown key "uids" (known: ids)`},
		{"jail too few ids", "jail: {ids: {from: 300000, to: 300000}}\nvms:\n  - {name: a, kernel: /k}\n  - {name: b, kernel: /k}\n",
			"jail: ids 300000-300000 hold fewer ids than the 2 VMs"},
		{"unknown vm key", "vms:\n  - name: a\n    kernel: /k\n    cpu: 2\n", `c.yaml:4:5: vm a: unknown key "cpu"`},
		{"bad cpus", "vms:\n  - {name: a, kernel: /k, cpus: 0}\n", "c.yaml:2:33: vm a: cpus 0: want 1 to 1024"},
		{"cpus not a number", "vms:\n  - {name: a, kernel: /k, cpus: two}\n", `c.yaml:2:33: vm a: want a whole number, found "two"`},
		{"bad memory", "vms:\n  - {name: a, kernel: /k, memory: 12Q}\n", `c.yaml:2:35: vm a: memory: size "12Q"`},
		{"tiny memory", "vms:\n  - {name: a, kernel: /k, memory: 1M}\n", "memory 1M: want at least 16M"},
		{"no kernel", "vms:\n  - {name: a}\n", "c.yaml:2:5: vm a: kernel is required"},
		{"no name", "vms:\n  - {kernel: /k}\n", "name is required"},
		{"relative path", "vms:\n  - {name: a, kernel: vmlinuz}\n", `path "vmlinuz": want an absolute path`},
		{"short stop timeout", "vms:\n  - {name: a, kernel: /k, stop_timeout: 500ms}\n", "c.yaml:2:41: vm a: stop_timeout 500ms: want 1s to 1h0m0s"},
		{"bad stop timeout", "vms:\n  - {name: a, kernel: /k, stop_timeout: 30}\n", `stop_timeout "30": want a duration such as 1s`},
		{"bad restart", "vms:\n  - {name: a, kernel: /k, restart: sometimes}\n", `restart "sometimes"`},
		{"bad name", "vms:\n  - {name: Web_1, kernel: /k}\n", `name "Web_1"`},
		{"reserved name switch", "vms:\n  - {name: switch, kernel: /k}\n", `name "switch" is reserved`},
		{"reserved name run", "vms:\n  - {name: run, kernel: /k}\n", `name "run" is reserved`},
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
	f.Add([]byte("vms:\n  - {name: a, kernel: /k, disks: [{path: /d.img, size: 1G, readonly: true, id: x, limits: {iops: 5, bandwidth: 1M}}]}\n"))
	f.Add([]byte("networks:\n  - {name: lan, subnet: 10.0.0.0/24, vlan: 7, dhcp: {from: 10.0.0.10, to: 10.0.0.20}, uplink: eth0}\nhost: {network: lan, address: dhcp}\nvms:\n  - {name: a, kernel: /k, nics: [{network: lan, mac: \"52:54:00:00:00:01\", limits: {rx: 1G, tx: 10M}}]}\n"))
	f.Add([]byte("api: {listen: \":8443\", tokens: [{name: ci, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil {
			for _, vm := range c.VMs {
				if vm.CPUs < 1 || (vm.Kernel == "") != vm.BootDisk || vm.Memory < 16<<20 {
					t.Fatalf("invalid VM accepted: %+v", vm)
				}
				for _, d := range vm.Disks {
					if !strings.HasPrefix(d.Path, "/") || len(d.ID) == 0 || len(d.ID) > 20 || d.Size%512 != 0 {
						t.Fatalf("invalid disk accepted: %+v", d)
					}
				}
			}
		}
	})
}

func TestParseDisks(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []Disk
	}{
		{"full", `
vms:
  - name: web
    kernel: /k
    disks:
      - { path: /data/web.img, size: 1G, readonly: false, id: web-root, limits: { iops: 2000, bandwidth: 50M } }
      - path: /dev/vdb
        readonly: true
        direct: true
        io: pool
      - { path: /c.img, io: auto, poll: 50us }
      - { path: vms/./web.img, size: 64M, poll: off }
      - { path: vms/db.img, image: { url: "https://images.example/debian-12.raw", sha256: ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789 } }
`, []Disk{
			{Path: "/data/web.img", Size: 1 << 30, ID: "web-root", Limits: DiskLimits{IOPS: 2000, Bandwidth: 50 << 20}, Format: "raw"},
			{Path: "/dev/vdb", ReadOnly: true, ID: "web-1", Direct: true, IO: "pool", Format: "raw"},
			{Path: "/c.img", ID: "web-2", Format: "raw", Poll: 50 * time.Microsecond},
			{Path: "/var/lib/hyperroot/vms/web.img", Size: 64 << 20, ID: "web-3", Format: "raw", Poll: -1}, // relative: on the data disk
			{Path: "/var/lib/hyperroot/vms/db.img", ID: "web-4", Image: &Image{URL: "https://images.example/debian-12.raw", SHA256: "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"}, Format: "raw"},
		}},
		{"qcow2", `
vms:
  - name: q
    kernel: /k
    disks:
      - { path: web.qcow2, base: images/debian-12.qcow2 }
      - { path: /d/thin.img, format: qcow2, size: 10G }
      - { path: /d/raw.qcow2, format: raw }
`, []Disk{
			{Path: "/var/lib/hyperroot/web.qcow2", Base: "/var/lib/hyperroot/images/debian-12.qcow2", ID: "q-0", Format: "qcow2"},
			{Path: "/d/thin.img", Size: 10 << 30, ID: "q-1", Format: "qcow2"},
			{Path: "/d/raw.qcow2", ID: "q-2", Format: "raw"},
		}},
		{"default id keeps the index", `
vms:
  - name: a-very-long-vm-name-of-thirty
    kernel: /k
    disks: [{path: /a.img}]
`, []Disk{{Path: "/a.img", ID: "a-very-long-vm-nam-0", Format: "raw"}}},
		{"no disks", "vms:\n  - {name: a, kernel: /k}\n", nil},
		{"shared read-only", `
vms:
  - {name: a, kernel: /k, disks: [{path: /base.img, readonly: true}]}
  - {name: b, kernel: /k, disks: [{path: /base.img, readonly: true}]}
`, []Disk{{Path: "/base.img", ReadOnly: true, ID: "a-0", Format: "raw"}}},
	} {
		c, err := Parse("c.yaml", []byte(tc.yaml))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		got := c.VMs[0].Disks
		if len(got) != len(tc.want) {
			t.Errorf("%s: disks = %+v, want %+v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], tc.want[i]) {
				t.Errorf("%s: disk %d = %+v, want %+v", tc.name, i, got[i], tc.want[i])
			}
		}
	}
}

// TestBootDisk: boot: disk, its entry form, and a VM with disks but no
// kernel boot the first disk; the contradictions are errors.
func TestBootDisk(t *testing.T) {
	for _, tc := range []struct {
		yaml, entry string
		boot        bool
	}{
		{"vms:\n  - {name: a, boot: disk, disks: [{path: /d.qcow2}]}\n", "", true},
		{"vms:\n  - {name: a, boot: {entry: 'Debian GNU/Linux'}, disks: [{path: /d.img}]}\n", "Debian GNU/Linux", true},
		{"vms:\n  - {name: a, boot: {from: disk, entry: '1'}, disks: [{path: /d.img}]}\n", "1", true},
		{"vms:\n  - {name: a, disks: [{path: /d.img}]}\n", "", true},
		{"vms:\n  - {name: a, kernel: /k, disks: [{path: /d.img}]}\n", "", false},
	} {
		c, err := Parse("c.yaml", []byte(tc.yaml))
		if err != nil {
			t.Errorf("%s: %v", tc.yaml, err)
			continue
		}
		if vm := c.VMs[0]; vm.BootDisk != tc.boot || vm.BootEntry != tc.entry {
			t.Errorf("%s: boot disk %v entry %q", tc.yaml, vm.BootDisk, vm.BootEntry)
		}
	}
	for _, tc := range []struct{ yaml, want string }{
		{"vms:\n  - {name: a}\n", "vm a: kernel is required (or a disk to boot from)"},
		{"vms:\n  - {name: a, kernel: /k, boot: disk, disks: [{path: /d}]}\n", "vm a: give kernel or boot: disk, not both"},
		{"vms:\n  - {name: a, boot: cdrom, disks: [{path: /d}]}\n", `boot "cdrom": want disk`},
		{"vms:\n  - {name: a, boot: {from: net}, disks: [{path: /d}]}\n", `from "net": want disk`},
		{"vms:\n  - {name: a, boot: {entry: ''}, disks: [{path: /d}]}\n", `entry "": want a title, id or index`},
		{"vms:\n  - {name: a, boot: disk, initrd: /i, disks: [{path: /d}]}\n", "vm a: initrd comes from the disk with boot: disk"},
	} {
		if _, err := Parse("c.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestParseDiskErrors(t *testing.T) {
	vm := func(disks string) string { return "vms:\n  - name: a\n    kernel: /k\n    disks:\n" + disks }
	for _, tc := range []struct{ name, yaml, want string }{
		{"not a list", "vms:\n  - {name: a, kernel: /k, disks: {path: /a}}\n", "c.yaml:2:34: vm a: want a list, found a mapping"},
		{"no path", vm("      - {size: 1G}\n"), "c.yaml:5:9: vm a: disk: path is required"},
		{"escaping relative path", vm("      - {path: a/../../etc/shadow}\n"), `c.yaml:5:16: vm a: path "a/../../etc/shadow": a relative path names a file in /var/lib/hyperroot, and must stay inside it`},
		{"parent", vm("      - {path: ..}\n"), `path "..": a relative path`},
		{"data dir itself", vm("      - {path: ./}\n"), `path "./": a relative path`},
		{"unknown key", vm("      - {path: /a, sise: 1G}\n"), `c.yaml:5:20: vm a: unknown key "sise" (known: base, direct, format, id, image, io, limits, path, poll, readonly, size)`},
		{"poll too long", vm("      - {path: /a, poll: 1s}\n"), `c.yaml:5:26: vm a: poll 1s: want 1µs to 10ms`},
		{"poll not a duration", vm("      - {path: /a, poll: on}\n"), `poll "on": want a duration such as 1µs`},
		{"bad format", vm("      - {path: /a, format: vmdk}\n"), `format "vmdk": want raw or qcow2`},
		{"base of raw", vm("      - {path: /a, format: raw, base: /b.qcow2}\n"), "disk /a: base needs format qcow2"},
		{"base and image", vm("      - {path: /a.qcow2, base: /b.qcow2, image: {url: http://x/a, sha256: " + strings.Repeat("a", 64) + "}}\n"), "give base or image, not both"},
		{"read-only clone", vm("      - {path: /a.qcow2, base: /b.qcow2, readonly: true}\n"), "a clone of base is made to be written"},
		{"direct qcow2", vm("      - {path: /a.qcow2, direct: true}\n"), "direct is not supported for qcow2"},
		{"base written by a vm", "vms:\n  - {name: a, kernel: /k, disks: [{path: /b.qcow2}]}\n  - {name: b, kernel: /k, disks: [{path: /c.qcow2, base: /b.qcow2}]}\n",
			"disk /c.qcow2: its base /b.qcow2 is a writable disk of vm a"},
		{"image without digest", vm("      - {path: a.img, image: {url: http://x/a.raw}}\n"), "c.yaml:5:30: vm a: image: want url and sha256"},
		{"image bad url", vm("      - {path: a.img, image: {url: file:///a.raw, sha256: " + strings.Repeat("a", 64) + "}}\n"), `url "file:///a.raw": want an http:// or https:// URL`},
		{"image bad digest", vm("      - {path: a.img, image: {url: http://x/a, sha256: abc}}\n"), `sha256 "abc": want the image's SHA-256 as 64 hex digits`},
		{"bad io", vm("      - {path: /a, io: aio}\n"), `c.yaml:5:24: vm a: io "aio": want auto, io_uring or pool`},
		{"bad size", vm("      - {path: /a, size: big}\n"), `c.yaml:5:26: vm a: size: size "big"`},
		{"zero size", vm("      - {path: /a, size: 0}\n"), "c.yaml:5:26: vm a: size 0: want a non-zero multiple of 512 bytes"},
		{"odd size", vm("      - {path: /a, size: 1000}\n"), "size 1000: want a non-zero multiple of 512"},
		{"bad readonly", vm("      - {path: /a, readonly: yes}\n"), `c.yaml:5:30: vm a: want true or false, found "yes"`},
		{"long id", vm("      - {path: /a, id: abcdefghijklmnopqrstu}\n"), `c.yaml:5:24: vm a: id "abcdefghijklmnopqrstu"`},
		{"id with comma", vm("      - {path: /a, id: 'a,b'}\n"), `id "a,b"`},
		{"unknown limit", vm("      - {path: /a, limits: {ops: 5}}\n"), `c.yaml:5:29: vm a: unknown key "ops" (known: bandwidth, iops)`},
		{"zero iops", vm("      - {path: /a, limits: {iops: 0}}\n"), "c.yaml:5:35: vm a: iops 0: want a positive number"},
		{"iops not a number", vm("      - {path: /a, limits: {iops: fast}}\n"), `want a whole number, found "fast"`},
		{"bad bandwidth", vm("      - {path: /a, limits: {bandwidth: 1.5G}}\n"), `bandwidth: size "1.5G"`},
		{"tiny bandwidth", vm("      - {path: /a, limits: {bandwidth: 100}}\n"), "bandwidth 100: want at least 4K"},
		{"limits not a mapping", vm("      - {path: /a, limits: 5}\n"), `c.yaml:5:28: vm a: want a mapping (key: value), found "5"`},
		{"twice in a vm", vm("      - {path: /a}\n      - {path: /a}\n"), "c.yaml:6:9: vm a: disk /a: listed twice"},
		{"shared writable", "vms:\n  - {name: a, kernel: /k, disks: [{path: /d}]}\n  - {name: b, kernel: /k, disks: [{path: /d, readonly: true}]}\n",
			"disk /d: used by vms a, b and writable in one of them"},
		{"shared writable, another spelling", "vms:\n  - {name: a, kernel: /k, disks: [{path: /x/d}]}\n  - {name: b, kernel: /k, disks: [{path: /x//y/../d, readonly: true}]}\n",
			"disk /x/d: used by vms a, b and writable in one of them"},
		{"too many", vm(strings.Repeat("      - {path: /a}\n", 1) + func() string {
			var b strings.Builder
			for i := range MaxDisks {
				fmt.Fprintf(&b, "      - {path: /d%d}\n", i)
			}
			return b.String()
		}()), "disks: 17 disks, want at most 16"},
	} {
		_, err := Parse("c.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestJailIDs: every VM gets an id of its own in the range, the same
// whatever the order of the file or the VMs added around it.
func TestJailIDs(t *testing.T) {
	parse := func(y string) *Config {
		t.Helper()
		c, err := Parse("c.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ids := func(c *Config) map[string]int {
		m := map[string]int{}
		for _, vm := range c.VMs {
			m[vm.Name] = vm.ID
		}
		return m
	}
	a := ids(parse("vms:\n  - {name: web, kernel: /k}\n  - {name: db, kernel: /k}\n"))
	b := ids(parse("vms:\n  - {name: db, kernel: /k}\n  - {name: cache, kernel: /k}\n  - {name: web, kernel: /k}\n"))
	for _, name := range []string{"web", "db"} {
		if a[name] != b[name] {
			t.Errorf("vm %s: id %d, then %d once the file changed around it", name, a[name], b[name])
		}
		if a[name] < DefaultJailIDs.From || a[name] > DefaultJailIDs.To {
			t.Errorf("vm %s: id %d outside the default range %s", name, a[name], DefaultJailIDs)
		}
	}
	// A range as small as the fleet: every id taken, none twice.
	y := "jail: {ids: {from: 300000, to: 300009}}\nvms:\n"
	for i := range 10 {
		y += fmt.Sprintf("  - {name: vm%d, kernel: /k}\n", i)
	}
	seen := map[int]string{}
	for name, id := range ids(parse(y)) {
		if id < 300000 || id > 300009 {
			t.Errorf("vm %s: id %d outside 300000-300009", name, id)
		}
		if other, ok := seen[id]; ok {
			t.Errorf("vms %s and %s share id %d", name, other, id)
		}
		seen[id] = name
	}
	// The switch's id is outside the range, whichever end it must take.
	for _, r := range []IDRange{DefaultJailIDs, {From: 65536, To: 70000}, {From: 300000, To: maxID}} {
		if id := r.SwitchID(); id >= r.From && id <= r.To || id < 65536 || id > maxID {
			t.Errorf("range %s: switch id %d", r, id)
		}
	}
	if id := DefaultJailIDs.SwitchID(); id != 199999 {
		t.Errorf("default switch id %d, want 199999", id)
	}
	d := Default()
	if d.VMs[0].ID == 0 || d.VMs[0].ID == d.VMs[1].ID {
		t.Errorf("default VMs' ids %d and %d, want two distinct ones", d.VMs[0].ID, d.VMs[1].ID)
	}
}
