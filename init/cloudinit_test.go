package main

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/testenv"
)

// TestSeed writes a VM's NoCloud seed and reads it back as the guest's
// kernel and cloud-init would: an ISO 9660 volume labelled cidata (blkid,
// from util-linux, is how cloud-init's ds-identify finds it) with
// meta-data, user-data and network-config under their own names.
func TestSeed(t *testing.T) {
	c, err := config.Parse("c.yaml", []byte(`vms:
  - name: web
    disks: [{path: web.qcow2, base: base.qcow2}]
    cloud_init:
      ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDq1 alice@example]
      user_data: |
        #cloud-config
        runcmd: [[touch, /x]]
      network: {version: 2, ethernets: {eth0: {dhcp4: true}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	vm := c.VMs[0]
	dir := t.TempDir()
	f, err := writeSeed(dir, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("x")); err == nil {
		t.Error("the seed's descriptor is writable: want it read-only")
	}
	st, _ := f.Stat()
	fsys, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimRight(fsys.Label(), "\x00 "); l != "cidata" {
		t.Errorf("volume label %q, want cidata", l)
	}
	read := func(name string) string {
		r, err := fsys.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return string(b)
	}
	var meta map[string]any
	if err := yaml.Unmarshal([]byte(read("meta-data")), &meta); err != nil {
		t.Fatal(err)
	}
	if meta["instance-id"] != "hyperroot-web" || meta["local-hostname"] != "web" {
		t.Errorf("meta-data %v", meta)
	}
	if keys, _ := meta["public-keys"].([]any); len(keys) != 1 || keys[0] != vm.CloudInit.SSHAuthorizedKeys[0] {
		t.Errorf("public-keys %v", meta["public-keys"])
	}
	if ud := read("user-data"); ud != vm.CloudInit.UserData {
		t.Errorf("user-data %q", ud)
	}
	if nc := read("network-config"); !strings.Contains(nc, "dhcp4: true") {
		t.Errorf("network-config %q", nc)
	}
	testenv.NeedTool(t, "blkid", "util-linux")
	out, err := exec.Command("blkid", "-p", "-o", "export", f.Name()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "LABEL=cidata") || !strings.Contains(string(out), "TYPE=iso9660") {
		t.Errorf("blkid: %v\n%s", err, out)
	}

	// Again, after a change: the new seed replaces the old, whole; no
	// scratch files are left.
	vm.CloudInit.UserData = ""
	vm.CloudInit.Network = ""
	g, err := writeSeed(dir, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	st, _ = g.Stat()
	fsys, err = iso9660.Read(file.New(g, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if ud := read("user-data"); !strings.HasPrefix(ud, "#cloud-config") {
		t.Errorf("default user-data %q", ud)
	}
	if _, err := fsys.OpenFile("/network-config", os.O_RDONLY); err == nil {
		t.Error("network-config without network in the configuration: want none (cloud-init's default)")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "web.iso" {
		t.Errorf("seed directory holds %v, want web.iso alone", ents)
	}
}
