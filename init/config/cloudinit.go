package config

import (
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// CloudInit is a VM's first-boot configuration for cloud-init in its
// guest: the supervisor writes it to a NoCloud seed (an ISO 9660 volume
// labelled cidata) that the VM gets as one more read-only disk, after its
// own. A stock distribution image reads it at its first boot, as on any
// cloud.
type CloudInit struct {
	// Hostname is the guest's host name; default the VM's name.
	Hostname string
	// UserData is the user-data file as given: a #cloud-config document,
	// a script (#!), or anything else cloud-init takes. Default an empty
	// #cloud-config.
	UserData string
	// SSHAuthorizedKeys are the public keys cloud-init gives the image's
	// default user (meta-data public-keys).
	SSHAuthorizedKeys []string
	// Network is the network-config file (cloud-init's network
	// configuration, version 1 or 2) re-encoded from the configuration;
	// "" leaves cloud-init's default, DHCP on the first NIC.
	Network string
}

// MaxUserData bounds a VM's cloud-init user-data: the seed is built in
// the appliance's memory.
const MaxUserData = 1 << 20

// hostnameRE is a host name as RFC 1123 has it: dot-separated labels of
// letters, digits and inner dashes, each 1-63 long.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// sshKeyRE is an OpenSSH public key line: its type, its base64 body, an
// optional comment.
var sshKeyRE = regexp.MustCompile(`^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f]*)?$`)

func (d *decoder) cloudInit(n *yaml.Node) *CloudInit {
	ci := &CloudInit{}
	d.mapping(n, map[string]func(*yaml.Node){
		"hostname": func(v *yaml.Node) {
			ci.Hostname = d.str(v)
			if len(ci.Hostname) > 253 || !hostnameRE.MatchString(ci.Hostname) {
				d.errf(v, "hostname %q: want a host name (letters, digits, dashes; labels of at most 63 separated by dots)", ci.Hostname)
			}
		},
		"user_data": func(v *yaml.Node) {
			ci.UserData = d.str(v)
			switch {
			case len(ci.UserData) > MaxUserData:
				d.errf(v, "user_data: %d bytes, want at most %d", len(ci.UserData), MaxUserData)
			case strings.HasPrefix(ci.UserData, "#cloud-config"):
				// cloud-init would ignore a broken document at the
				// guest's boot, where nobody sees why: say so now.
				var doc any
				if err := yaml.Unmarshal([]byte(ci.UserData), &doc); err != nil {
					d.errf(v, "user_data: its #cloud-config is not YAML: %v", err)
				} else if _, ok := doc.(map[string]any); doc != nil && !ok {
					d.errf(v, "user_data: its #cloud-config is not a mapping of modules' keys")
				}
			}
		},
		"ssh_authorized_keys": func(v *yaml.Node) {
			d.sequence(v, func(k *yaml.Node) {
				key := strings.TrimSpace(d.str(k))
				if k.Kind == yaml.ScalarNode && !sshKeyRE.MatchString(key) {
					d.errf(k, "ssh key %.40q: want one OpenSSH public key line (type, base64, comment)", key)
				}
				ci.SSHAuthorizedKeys = append(ci.SSHAuthorizedKeys, key)
			})
		},
		"network": func(v *yaml.Node) {
			if v.Kind != yaml.MappingNode {
				d.errf(v, "network: want cloud-init's network configuration (a mapping with version: 1 or 2), found %s", kind(v))
				return
			}
			version := ""
			for i := 0; i+1 < len(v.Content); i += 2 {
				if v.Content[i].Value == "version" {
					version = v.Content[i+1].Value
				}
			}
			if version != "1" && version != "2" {
				d.errf(v, "network: want version: 1 or 2 (cloud-init's network configuration formats)")
				return
			}
			out, err := yaml.Marshal(v)
			if err != nil {
				d.errf(v, "network: %v", err)
				return
			}
			ci.Network = string(out)
		},
	})
	return ci
}
