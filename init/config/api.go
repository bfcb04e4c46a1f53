package config

import (
	"encoding/hex"
	"net"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// API is how the management API is served beyond the root-only unix
// socket, which is always there: on a TCP address, over TLS, to clients
// with a bearer token.
type API struct {
	// Listen is the TCP address ("host:port", host optional) of the
	// HTTPS listener; empty: no network listener.
	Listen string
	// Tokens are the bearer tokens a client may present. A token is kept
	// as its SHA-256 only, so a configuration served from the network
	// does not hand out the keys to every appliance it configures.
	Tokens []APIToken
}

// APIToken is one accepted bearer token.
type APIToken struct {
	// Name says whose token it is, in the console's audit lines.
	Name string
	// SHA256 is the SHA-256 of the token.
	SHA256 [32]byte
}

// api decodes the api: mapping.
func (d *decoder) api(n *yaml.Node) *API {
	a := &API{}
	var listen *yaml.Node
	d.mapping(n, map[string]func(*yaml.Node){
		"listen": func(v *yaml.Node) {
			listen, a.Listen = v, d.str(v)
			host, port, err := net.SplitHostPort(a.Listen)
			if err != nil {
				d.errf(v, "listen %q: want host:port or :port, such as :8443", a.Listen)
				return
			}
			if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
				d.errf(v, "listen %q: port %q: want 1 to 65535", a.Listen, port)
			}
			if host != "" && net.ParseIP(host) == nil {
				d.errf(v, "listen %q: host %q: want an IP address (or none, for all)", a.Listen, host)
			}
		},
		"tokens": func(v *yaml.Node) {
			seen := map[string]bool{}
			d.sequence(v, func(item *yaml.Node) {
				var t APIToken
				var hasHash bool
				d.mapping(item, map[string]func(*yaml.Node){
					"name": func(v *yaml.Node) {
						t.Name = d.name(v)
						if seen[t.Name] {
							d.errf(v, "token name %q given twice", t.Name)
						}
						seen[t.Name] = true
					},
					"sha256": func(v *yaml.Node) {
						s := d.str(v)
						b, err := hex.DecodeString(s)
						if err != nil || len(b) != len(t.SHA256) {
							d.errf(v, "sha256 %q: want the token's SHA-256 as 64 hex digits (sha256sum of the token)", s)
							return
						}
						copy(t.SHA256[:], b)
						hasHash = true
					},
				})
				if item.Kind == yaml.MappingNode && (t.Name == "" || !hasHash) {
					d.errf(item, "token: want name and sha256")
				}
				a.Tokens = append(a.Tokens, t)
			})
		},
	})
	// A listener without tokens would answer nobody (every request is
	// refused): that is a mistake to say, not a state to run in.
	if listen != nil && len(a.Tokens) == 0 {
		d.errf(listen, "listen %q: no tokens: every request would be refused (add tokens: [{name, sha256}])", a.Listen)
	}
	return a
}
