package config

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestCloudInit(t *testing.T) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDq1 alice@example"
	c, err := Parse("c.yaml", []byte(`vms:
  - name: web
    disks: [{path: web.qcow2, base: debian-12.qcow2}]
    cloud_init:
      ssh_authorized_keys: ["`+key+`"]
      user_data: |
        #cloud-config
        runcmd: [[touch, /x]]
      network:
        version: 2
        ethernets: {eth0: {dhcp4: true}}
  - name: db
    disks: [{path: db.img, size: 1G}]
    cloud_init: {hostname: db.example.org}
  - name: plain
    disks: [{path: p.img, size: 1G}]
`))
	if err != nil {
		t.Fatal(err)
	}
	web, db := c.VMs[0].CloudInit, c.VMs[1].CloudInit
	if web == nil || db == nil || c.VMs[2].CloudInit != nil {
		t.Fatalf("cloud_init: %+v %+v %+v", web, db, c.VMs[2].CloudInit)
	}
	if web.Hostname != "web" || db.Hostname != "db.example.org" {
		t.Errorf("hostnames %q %q: want the VM's name by default", web.Hostname, db.Hostname)
	}
	if len(web.SSHAuthorizedKeys) != 1 || web.SSHAuthorizedKeys[0] != key {
		t.Errorf("keys %q", web.SSHAuthorizedKeys)
	}
	if !strings.HasPrefix(web.UserData, "#cloud-config\nruncmd:") {
		t.Errorf("user data %q: want it verbatim", web.UserData)
	}
	var net map[string]any
	if err := yaml.Unmarshal([]byte(web.Network), &net); err != nil || net["version"] != 2 || net["ethernets"] == nil {
		t.Errorf("network %q (%v): want the mapping re-encoded", web.Network, err)
	}
	if db.UserData != "" || db.Network != "" {
		t.Errorf("db: %+v", db)
	}
}

func TestCloudInitErrors(t *testing.T) {
	vm := func(ci string) string {
		return "vms:\n  - name: a\n    disks: [{path: a.img, size: 1G}]\n    cloud_init: " + ci + "\n"
	}
	many := "vms:\n  - name: a\n    cloud_init: {}\n    disks: [" + strings.Repeat("{path: d.img, size: 1G}, ", MaxDisks) + "]\n"
	for _, tc := range []struct{ yaml, want string }{
		{vm("{hostname: 'a b'}"), `hostname "a b": want a host name`},
		{vm("{hostname: -a}"), `hostname "-a": want a host name`},
		{vm("{hostname: " + strings.Repeat("a", 64) + "}"), `want a host name`},
		{vm("{ssh_authorized_keys: [hello]}"), `ssh key "hello": want one OpenSSH public key line`},
		{vm(`{ssh_authorized_keys: ["ssh-rsa AAAA\nssh-rsa BBBB"]}`), `want one OpenSSH public key line`},
		{vm("{ssh_authorized_keys: ssh-rsa}"), `want a list`},
		{vm("{user_data: \"#cloud-config\\n: [\"}"), `user_data: its #cloud-config is not YAML`},
		{vm("{user_data: \"#cloud-config\\n- a\\n\"}"), `user_data: its #cloud-config is not a mapping`},
		{vm("{network: {ethernets: {}}}"), `network: want version: 1 or 2`},
		{vm("{network: dhcp}"), `network: want cloud-init's network configuration`},
		{vm("{users: [a]}"), `unknown key "users"`},
		{vm("yes"), `want a mapping`},
		{strings.Replace(many, "d.img", "x.img", 1), "cloud_init: its seed disk would be disk 17, want at most 16 disks"},
	} {
		if _, err := Parse("c.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
