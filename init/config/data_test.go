package config

import (
	"strings"
	"testing"
)

func TestParseData(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want *Data
		err  string
	}{
		{"vms: []\n", nil, ""},
		{"data: {device: /dev/vda, format: if-empty}\n", &Data{Device: "/dev/vda", FormatIfEmpty: true}, ""},
		{"data: {device: /dev/nvme0n1p2}\n", &Data{Device: "/dev/nvme0n1p2"}, ""},
		{"data: {device: /dev/vda, format: never}\n", &Data{Device: "/dev/vda"}, ""},
		{"data: {format: if-empty}\n", nil, "c.yaml:1:7: data: device is required"},
		{"data: {device: /dev/vda, format: always}\n", nil, `c.yaml:1:34: format "always": want if-empty or never`},
		{"data: {device: /tmp/disk.img}\n", nil, `device "/tmp/disk.img": want a block device under /dev`},
		{"data: {device: vda}\n", nil, `path "vda": want an absolute path`},
		{"data: {device: /dev/vda, label: x}\n", nil, `unknown key "label" (known: device, format)`},
		{"data: /dev/vda\n", nil, "want a mapping"},
		{"data: {device: /dev/vda1}\nvms:\n  - {name: a, kernel: /k, disks: [{path: /dev/vda}]}\n", nil, "data: device /dev/vda1 is also vm a's disk /dev/vda"},
		{"data: {device: /dev/vdb}\nvms:\n  - {name: a, kernel: /k, disks: [{path: /dev/vdb}]}\n", nil, "data: device /dev/vdb is also vm a's disk /dev/vdb"},
		{"data: {device: /dev/nvme0n1}\nvms:\n  - {name: a, kernel: /k, disks: [{path: /dev/nvme0n1p2}]}\n", nil, "is also vm a's disk /dev/nvme0n1p2"},
		{"data: {device: /dev/vdb}\nvms:\n  - {name: a, kernel: /k, disks: [{path: /dev/vdb1}, {path: /dev/vdc}, {path: /dev/vda}]}\n", nil, "is also vm a's disk /dev/vdb1"},
		{"data: {device: /dev/vd}\nvms:\n  - {name: a, kernel: /k, disks: [{path: /dev/vda}]}\n", &Data{Device: "/dev/vd"}, ""},
	} {
		c, err := Parse("c.yaml", []byte(tc.yaml))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.yaml, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.yaml, err)
			continue
		}
		if (c.Data == nil) != (tc.want == nil) || (c.Data != nil && *c.Data != *tc.want) {
			t.Errorf("%q: %+v, want %+v", tc.yaml, c.Data, tc.want)
		}
	}
}
