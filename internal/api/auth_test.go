package api

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/hyperroot/hyperroot/internal/atomicfile"
)

// serveTLS serves b's API as the appliance's network listener does: TLS
// with a certificate made in a fresh directory, tokens required. It
// returns the address, the certificate's fingerprint and what the audit
// heard.
func serveTLS(t *testing.T, b Backend, tokens []Token) (string, string, func() []Request) {
	cert, made, replaced, err := LoadOrCreateCert(t.TempDir(), []string{"127.0.0.1"})
	if err != nil || !made || replaced != nil {
		t.Fatalf("cert: made %v, replaced %v, %v", made, replaced, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var heard []Request
	audit := func(r Request) {
		mu.Lock()
		heard = append(heard, r)
		mu.Unlock()
	}
	srv := &http.Server{Handler: RequireToken(tokens, Handler(b), audit),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return "https://" + l.Addr().String(), Fingerprint(cert.Certificate[0]), func() []Request {
		mu.Lock()
		defer mu.Unlock()
		return append([]Request(nil), heard...)
	}
}

// TestTokens: without a valid token every request is a 401 and nothing
// happens; with one the request is served and a change is audited under
// the token's name.
func TestTokens(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	tokens := []Token{{Name: "ci", SHA256: sha256.Sum256([]byte("right"))}, {Name: "ops", SHA256: sha256.Sum256([]byte("other"))}}
	url, pin, heard := serveTLS(t, b, tokens)
	ctx := context.Background()
	for _, tok := range []string{"", "wrong", "righ", "rightt"} {
		c, err := NewClient(url, tok, pin)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range [][2]string{{"POST", "/v1/vms/a/stop"}, {"GET", "/v1/vms"}, {"GET", "/nothing"}} {
			if err := c.Do(ctx, op[0], op[1], nil, nil); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 401)") {
				t.Errorf("token %q: %s %s: %v, want a 401", tok, op[0], op[1], err)
			}
		}
	}
	// A header of another scheme, or a bare token, is no bearer token.
	for _, h := range []string{"Basic cmlnaHQ=", "right", "Bearer", "Bearer  right"} {
		if who, ok := bearer(tokens, h); ok {
			t.Errorf("Authorization %q accepted as %s", h, who)
		}
	}
	if len(b.ops) != 0 {
		t.Fatalf("refused requests reached the backend: %v", b.ops)
	}
	c, err := NewClient(url, "other", pin)
	if err != nil {
		t.Fatal(err)
	}
	var vm VM
	if err := c.Do(ctx, "POST", "/v1/vms/a/stop", nil, &vm); err != nil || vm.State != StateStopped {
		t.Fatalf("stop with a token: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "GET", "/v1/vms/a", nil, &vm); err != nil {
		t.Fatal(err)
	}
	h := heard()
	if len(h) != 13 {
		t.Fatalf("audit heard %d requests, want 12 refused and 1 change: %+v", len(h), h)
	}
	if r := h[12]; r.Who != "ops" || r.Method != "POST" || r.Path != "/v1/vms/a/stop" || r.Code != 200 {
		t.Errorf("audit of the change: %+v", r)
	}
	if r := h[0]; r.Who != "" || r.Code != 401 || !strings.HasPrefix(r.Remote, "127.0.0.1:") {
		t.Errorf("audit of a refusal: %+v", r)
	}
}

// TestPinnedCertificate: a client pinned to another certificate refuses
// the server before sending anything; a bad pin is an error at once.
func TestPinnedCertificate(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	tokens := []Token{{Name: "ci", SHA256: sha256.Sum256([]byte("right"))}}
	url, _, heard := serveTLS(t, b, tokens)
	c, err := NewClient(url, "right", "sha256:"+strings.Repeat("00", 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), "POST", "/v1/vms/a/stop", nil, nil); err == nil || !strings.Contains(err.Error(), "not the pinned sha256:0000") {
		t.Errorf("wrong pin: %v", err)
	}
	// Without a pin the self-signed certificate is not trusted.
	c, _ = NewClient(url, "right", "")
	if err := c.Do(context.Background(), "GET", "/v1/vms", nil, nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("no pin: %v", err)
	}
	if len(b.ops) != 0 || len(heard()) != 0 {
		t.Errorf("a refused server got requests: %v %v", b.ops, heard())
	}
	for _, bad := range []string{"abcd", "sha256:xyz", "md5:" + strings.Repeat("00", 16)} {
		if _, err := NewClient(url, "right", bad); err == nil {
			t.Errorf("pin %q accepted", bad)
		}
	}
	if _, err := NewClient("http://127.0.0.1:1", "right", ""); err == nil {
		t.Error("a plain-HTTP address accepted")
	}
}

// TestCertKept: the certificate is made once and read back after; a
// damaged one is replaced, and said to be.
func TestCertKept(t *testing.T) {
	dir := t.TempDir()
	c1, made, _, err := LoadOrCreateCert(dir, []string{"hyperroot", "10.0.2.15"})
	if err != nil || !made {
		t.Fatalf("first: made %v, %v", made, err)
	}
	c2, made, replaced, err := LoadOrCreateCert(dir, nil)
	if err != nil || made || replaced != nil || Fingerprint(c1.Certificate[0]) != Fingerprint(c2.Certificate[0]) {
		t.Fatalf("second: made %v, replaced %v, %v", made, replaced, err)
	}
	if err := writeFile(dir+"/"+certFile, "garbage"); err != nil {
		t.Fatal(err)
	}
	c3, made, replaced, err := LoadOrCreateCert(dir, nil)
	if err != nil || !made || replaced == nil || Fingerprint(c3.Certificate[0]) == Fingerprint(c1.Certificate[0]) {
		t.Fatalf("damaged: made %v, replaced %v, %v", made, replaced, err)
	}
}

func writeFile(path, s string) error {
	return atomicfile.Write(path, []byte(s), 0o600)
}

// TestStatusPageOpen: the status page's files need no token and carry a
// policy that lets the browser run nothing else; the data they call for
// does need one.
func TestStatusPageOpen(t *testing.T) {
	h := StatusPage()
	for _, p := range []string{"/", "/status.js", "/status.css", "/favicon.ico"} {
		rec := &recorder{header: http.Header{}}
		req, _ := http.NewRequest("GET", "http://x"+p, nil)
		h.ServeHTTP(rec, req)
		if rec.code != 200 || rec.body.Len() == 0 || !strings.Contains(rec.header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: %d, %d bytes, CSP %q", p, rec.code, rec.body.Len(), rec.header.Get("Content-Security-Policy"))
		}
	}
	if !strings.Contains(string(must(statusFiles.ReadFile("status/index.html"))), `<script src="/status.js"`) {
		t.Error("the page does not load its script")
	}
	if js := string(must(statusFiles.ReadFile("status/status.js"))); strings.Contains(js, "innerHTML") {
		t.Error("status.js sets innerHTML: a guest's console line must stay text")
	}
	if len(StatusPaths()) != 4 {
		t.Errorf("paths %v", StatusPaths())
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
