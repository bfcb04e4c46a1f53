package config

import (
	"encoding/hex"
	"net/url"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DataDir is where the appliance's data disk is mounted, and where disk
// paths that are not absolute live.
const DataDir = "/var/lib/hyperroot"

// Data names the appliance's data disk. Without it, a disk whose ext4
// filesystem is labelled hyperroot-data is used if there is one.
type Data struct {
	// Device is the block device (a whole disk, or the partition holding
	// the filesystem).
	Device string
	// FormatIfEmpty: an empty Device is partitioned and formatted at boot.
	// A device that holds anything is never formatted.
	FormatIfEmpty bool
}

// data decodes the data: mapping.
func (d *decoder) data(n *yaml.Node) *Data {
	v := &Data{}
	d.mapping(n, map[string]func(*yaml.Node){
		"device": func(n *yaml.Node) {
			v.Device = d.path(n)
			if v.Device != "" && !strings.HasPrefix(v.Device, "/dev/") {
				d.errf(n, "device %q: want a block device under /dev", v.Device)
			}
		},
		"format": func(n *yaml.Node) {
			switch s := d.str(n); s {
			case "if-empty":
				v.FormatIfEmpty = true
			case "never":
			default:
				d.errf(n, "format %q: want if-empty or never", s)
			}
		},
	})
	if n.Kind == yaml.MappingNode && v.Device == "" {
		d.errf(n, "data: device is required (without data:, a disk labelled hyperroot-data is found by itself)")
	}
	return v
}

// diskPath decodes a VM disk's path: absolute, or relative to DataDir,
// where it must stay.
func (d *decoder) diskPath(n *yaml.Node) string {
	p := d.str(n)
	if p == "" || strings.HasPrefix(p, "/") {
		return p
	}
	c := filepath.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") || c == "." {
		d.errf(n, "path %q: a relative path names a file in %s, and must stay inside it", p, DataDir)
		return p
	}
	return filepath.Join(DataDir, c)
}

// image decodes a disk's image: mapping.
func (d *decoder) image(n *yaml.Node) *Image {
	im := &Image{}
	d.mapping(n, map[string]func(*yaml.Node){
		"url": func(v *yaml.Node) {
			im.URL = d.str(v)
			u, err := url.Parse(im.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				d.errf(v, "url %q: want an http:// or https:// URL", im.URL)
			}
		},
		"sha256": func(v *yaml.Node) {
			im.SHA256 = strings.ToLower(d.str(v))
			if b, err := hex.DecodeString(im.SHA256); err != nil || len(b) != 32 {
				d.errf(v, "sha256 %q: want the image's SHA-256 as 64 hex digits (sha256sum of it)", im.SHA256)
			}
		},
	})
	if n.Kind == yaml.MappingNode && (im.URL == "" || im.SHA256 == "") {
		d.errf(n, "image: want url and sha256")
	}
	return im
}
