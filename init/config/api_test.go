package config

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestParseAPI(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret"))
	c, err := Parse("c.yaml", []byte("api:\n  listen: \":8443\"\n  tokens:\n    - {name: ci, sha256: "+hex.EncodeToString(sum[:])+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.API == nil || c.API.Listen != ":8443" || len(c.API.Tokens) != 1 || c.API.Tokens[0].Name != "ci" || c.API.Tokens[0].SHA256 != sum {
		t.Errorf("api = %+v", c.API)
	}
	if c, err := Parse("c.yaml", []byte("vms: []\n")); err != nil || c.API != nil {
		t.Errorf("no api: %+v, %v", c, err)
	}
}

func TestParseAPIErrors(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, tc := range []struct{ name, yaml, want string }{
		{"no port", "api: {listen: 10.0.0.1, tokens: [{name: a, sha256: " + h + "}]}\n", `c.yaml:1:15: listen "10.0.0.1": want host:port`},
		{"bad port", "api: {listen: \":99999\", tokens: [{name: a, sha256: " + h + "}]}\n", `port "99999": want 1 to 65535`},
		{"host name", "api: {listen: \"example.com:443\", tokens: [{name: a, sha256: " + h + "}]}\n", `host "example.com": want an IP address`},
		{"no tokens", "api: {listen: \":8443\"}\n", `c.yaml:1:15: listen ":8443": no tokens`},
		{"short hash", "api: {listen: \":8443\", tokens: [{name: a, sha256: abcd}]}\n", `sha256 "abcd": want the token's SHA-256 as 64 hex digits`},
		{"plain token", "api: {listen: \":8443\", tokens: [{name: a, token: hunter2}]}\n", `unknown key "token" (known: name, sha256)`},
		{"no name", "api: {listen: \":8443\", tokens: [{sha256: " + h + "}]}\n", "token: want name and sha256"},
		{"name twice", "api: {listen: \":8443\", tokens: [{name: a, sha256: " + h + "}, {name: a, sha256: " + h + "}]}\n", `token name "a" given twice`},
		{"bad name", "api: {listen: \":8443\", tokens: [{name: A/b, sha256: " + h + "}]}\n", `name "A/b"`},
		{"unknown key", "api: {port: 8443}\n", `unknown key "port" (known: listen, tokens)`},
	} {
		_, err := Parse("c.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}
