package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

// fakeBackend holds VMs by name; Start and Stop flip their state.
type fakeBackend struct {
	mu  sync.Mutex
	vms map[string]*VM
	ops []string
}

func (b *fakeBackend) Host() Host { return Host{Version: "test", CPUs: 2} }

func (b *fakeBackend) VMs() []VM {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []VM
	for _, n := range []string{"a", "b"} {
		if vm, ok := b.vms[n]; ok {
			out = append(out, *vm)
		}
	}
	return out
}

func (b *fakeBackend) VM(name string) (VM, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	vm, ok := b.vms[name]
	if !ok {
		return VM{}, fmt.Errorf("no vm %q: %w", name, ErrNotFound)
	}
	return *vm, nil
}

func (b *fakeBackend) set(name, from, to string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops = append(b.ops, to+" "+name)
	vm, ok := b.vms[name]
	if !ok {
		return fmt.Errorf("no vm %q: %w", name, ErrNotFound)
	}
	if vm.State != from {
		return fmt.Errorf("vm %s is %s: %w", name, vm.State, ErrConflict)
	}
	vm.State = to
	return nil
}

func (b *fakeBackend) Start(name string) error { return b.set(name, StateStopped, StateRunning) }
func (b *fakeBackend) Stop(name string) error  { return b.set(name, StateRunning, StateStopped) }
func (b *fakeBackend) Restart(name string) error {
	return b.set(name, StateRunning, StateRunning)
}

// QoS accepts a qos with a cpu key only; the fake's record says what it
// was given.
func (b *fakeBackend) QoS(name, qos string) (string, error) {
	if _, err := b.VM(name); err != nil {
		return "", err
	}
	if qos == "" {
		return "qos " + name + " none", nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !strings.HasPrefix(qos, `{"cpu"`) {
		return "", fmt.Errorf("qos %q: unknown key: %w", qos, ErrInvalid)
	}
	b.ops = append(b.ops, "qos "+name)
	return "qos " + name + " set " + qos, nil
}

// serve serves b's API on a unix socket and returns a client of it.
func serve(t *testing.T, b Backend) *Client {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(b)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewUnixClient(sock)
}

func TestLifecycle(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning, CPUs: 1}, "b": {Name: "b", State: StateStopped}}}
	c := serve(t, b)
	ctx := context.Background()
	var vms []VM
	if err := c.Do(ctx, "GET", "/v1/vms", nil, &vms); err != nil || len(vms) != 2 || vms[0].Name != "a" || vms[1].State != StateStopped {
		t.Fatalf("list: %+v, %v", vms, err)
	}
	var vm VM
	if err := c.Do(ctx, "POST", "/v1/vms/a/stop", nil, &vm); err != nil || vm.State != StateStopped {
		t.Fatalf("stop a: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/a/stop", nil, &vm); err == nil || err.Error() != "vm a is stopped: conflict (HTTP 409)" {
		t.Errorf("stop of a stopped VM: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/a/start", nil, &vm); err != nil || vm.State != StateRunning {
		t.Fatalf("start a: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "GET", "/v1/vms/nope", nil, &vm); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 404)") {
		t.Errorf("unknown VM: %v", err)
	}
	var h Host
	if err := c.Do(ctx, "GET", "/v1/host", nil, &h); err != nil || h.Version != "test" {
		t.Errorf("host: %+v, %v", h, err)
	}
}

func TestQoS(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	c := serve(t, b)
	ctx := context.Background()
	var q QoS
	if err := c.Do(ctx, "GET", "/v1/vms/a/qos", nil, &q); err != nil || q.QoS != "qos a none" {
		t.Errorf("get: %+v, %v", q, err)
	}
	if err := c.Do(ctx, "PUT", "/v1/vms/a/qos", []byte(`{"cpu": {"max": "50%"}}`), &q); err != nil || q.QoS != `qos a set {"cpu": {"max": "50%"}}` {
		t.Errorf("put: %+v, %v", q, err)
	}
	if err := c.Do(ctx, "PUT", "/v1/vms/a/qos", []byte(`{"cpux": 1}`), &q); err == nil || !strings.HasSuffix(err.Error(), "unknown key: invalid (HTTP 400)") {
		t.Errorf("put of a bad qos: %v", err)
	}
	if err := c.Do(ctx, "PUT", "/v1/vms/a/qos", nil, &q); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 400)") {
		t.Errorf("put of nothing: %v", err)
	}
	if err := c.Do(ctx, "PUT", "/v1/vms/b/qos", []byte(`{"cpu": {}}`), &q); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 404)") {
		t.Errorf("put on an unknown VM: %v", err)
	}
	if len(b.ops) != 1 {
		t.Errorf("ops %v, want one qos", b.ops)
	}
}

// TestHostileRequests: names that are paths, unknown resources and
// methods, oversized bodies: each a 4xx with a message, and no operation
// reaches the backend.
func TestHostileRequests(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	h := Handler(b)
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/vms/..%2f..%2fetc/stop", "", 400, `vm name "../../etc"`},
		{"POST", "/v1/vms/A/stop", "", 400, `vm name "A"`},
		{"POST", "/v1/vms/" + strings.Repeat("a", 33) + "/stop", "", 400, "want 1-32"},
		{"POST", "/v1/vms/a%00/stop", "", 400, `vm name "a\x00"`},
		{"DELETE", "/v1/vms/a/stop", "", 405, "only POST"},
		{"GET", "/v1/vms/a/stop", "", 405, "only POST"},
		{"POST", "/v1/vms", "", 405, "only GET"},
		{"POST", "/v1/vms/a/explode", "", 404, "no resource POST /v1/vms/a/explode"},
		{"GET", "/v2/things", "", 404, "no resource GET /v2/things"},
		{"POST", "/v1/vms/a/stop", strings.Repeat("x", maxBody+1), 413, "request body over"},
		{"PUT", "/v1/vms/a/qos", strings.Repeat("x", maxBody+1), 413, "request body over"},
		{"PUT", "/v1/vms/..%2fa/qos", `{"cpu": {}}`, 400, `vm name "../a"`},
		{"POST", "/v1/vms/a/qos", `{"cpu": {}}`, 405, "only GET or PUT"},
	} {
		rec := &recorder{header: http.Header{}}
		req, _ := http.NewRequest(tc.method, "http://x"+tc.path, strings.NewReader(tc.body))
		h.ServeHTTP(rec, req)
		var e Error
		if err := json.Unmarshal([]byte(rec.body.String()), &e); err != nil || rec.code != tc.code || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s: %d %s, want %d and an error with %q", tc.method, tc.path, rec.code, rec.body.String(), tc.code, tc.want)
		}
	}
	if len(b.ops) != 0 {
		t.Errorf("hostile requests reached the backend: %v", b.ops)
	}
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	header http.Header
	code   int
	body   strings.Builder
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(c int)   { r.code = c }
func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(p)
}

func FuzzHandler(f *testing.F) {
	for _, s := range []string{"GET /v1/vms", "POST /v1/vms/a/start", "GET /v1/vms/%2e%2e", "POST /v1/vms//stop", "PUT /v1/vms/a/qos"} {
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, line, body string) {
		method, path, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(path, "/") {
			return
		}
		req, err := http.NewRequest(method, "http://x"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
		rec := &recorder{header: http.Header{}}
		Handler(b).ServeHTTP(rec, req)
		if rec.code >= 500 {
			t.Errorf("%s %s: %d %s", method, path, rec.code, rec.body.String())
		}
		for _, op := range b.ops {
			if name := op[strings.IndexByte(op, ' ')+1:]; name != "a" && !strings.HasPrefix(rec.body.String(), "{\"error\"") {
				t.Errorf("%s %s: operation %q on a VM that does not exist succeeded", method, path, op)
			}
		}
	})
}

// TestOpenAPIMatchesHandler: every path and method docs/openapi.yaml
// describes is served, and a method it does not list is refused: the
// document cannot drift from the code unnoticed.
func TestOpenAPIMatchesHandler(t *testing.T) {
	data, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Paths) == 0 {
		t.Fatal("no paths in openapi.yaml")
	}
	for path, ops := range doc.Paths {
		for _, method := range []string{"get", "post", "put", "delete"} {
			b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
			rec := &recorder{header: http.Header{}}
			req, _ := http.NewRequest(strings.ToUpper(method), "http://x"+strings.ReplaceAll(path, "{name}", "a"), nil)
			Handler(b).ServeHTTP(rec, req)
			_, documented := ops[method]
			served := rec.code != http.StatusNotFound && rec.code != http.StatusMethodNotAllowed
			if documented != served {
				t.Errorf("%s %s: documented %v, served %v (%d %s)", method, path, documented, served, rec.code, rec.body.String())
			}
		}
	}
}
