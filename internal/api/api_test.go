package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hyperroot/hyperroot/net/pcap"
)

// fakeBackend holds VMs by name; Start and Stop flip their state.
type fakeBackend struct {
	mu      sync.Mutex
	vms     map[string]*VM
	ops     []string
	console chan string
	dropped atomic.Uint64

	captures, captureClosed atomic.Int32
}

func (b *fakeBackend) Ports() []Port { return nil }

func (b *fakeBackend) Leases() ([]Lease, error) { return nil, nil }

// Capture streams frames of 60 bytes, one every millisecond, from a real
// pcap.Writer, for port a.0 only.
func (b *fakeBackend) Capture(port string) (Capture, error) {
	if port != "a.0" {
		return nil, fmt.Errorf("no port %s: %w", port, ErrNotFound)
	}
	pr, pw, err := os.Pipe() // buffered: New writes the header before a reader exists
	if err != nil {
		return nil, err
	}
	w, err := pcap.New(pw, 0)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				w.Close()
				pw.Close()
				return
			case <-time.After(time.Millisecond):
				w.WriteFrame(bytes.Repeat([]byte{byte(i)}, 60), time.Now())
			}
		}
	}()
	r, err := pcap.NewReader(pr)
	if err != nil {
		return nil, err
	}
	b.captures.Add(1)
	return &fakeCapture{Reader: r, close: func() {
		b.captureClosed.Add(1)
		pr.Close()
		close(done)
	}}, nil
}

type fakeCapture struct {
	*pcap.Reader
	once  sync.Once
	close func()
}

func (c *fakeCapture) Close() error { c.once.Do(c.close); return nil }

func (c *fakeCapture) Buffered() int { return 0 }

func (b *fakeBackend) Networks() ([]Network, error) {
	return []Network{{Name: "lan", Subnet: "10.20.0.0/24", Gateway: "10.20.0.1", MTU: 1500, Ports: []string{"a.0"}, Leases: 1}}, nil
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

// Console streams the lines sent to the fake's console channel, after
// "past 1" .. "past <tail>".
func (b *fakeBackend) Console(name string, tail int) (*Stream, error) {
	if _, err := b.VM(name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.console == nil {
		b.console = make(chan string, 16)
	}
	s := &Stream{Lines: b.console, Dropped: func() uint64 { return b.dropped.Load() }, Close: func() {}}
	for i := range tail {
		s.Past = append(s.Past, fmt.Sprintf("past %d", i+1))
	}
	return s, nil
}

func (b *fakeBackend) Send(name string, lines []string) error {
	vm, err := b.VM(name)
	if err != nil {
		return err
	}
	if vm.State != StateRunning {
		return fmt.Errorf("vm %s is not running: %w", name, ErrConflict)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops = append(b.ops, "send "+name+" "+strings.Join(lines, "|"))
	return nil
}

// CreateVM takes "{name: <n>}" only.
func (b *fakeBackend) CreateVM(text string) (VM, error) {
	name, ok := strings.CutPrefix(text, "{name: ")
	name, ok2 := strings.CutSuffix(name, "}")
	if !ok || !ok2 {
		return VM{}, fmt.Errorf("vm: not what the fake takes: %w", ErrInvalid)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.vms[name]; ok {
		return VM{}, fmt.Errorf("vm %s exists already: %w", name, ErrConflict)
	}
	b.ops = append(b.ops, "create "+name)
	b.vms[name] = &VM{Name: name, State: StateRunning}
	return *b.vms[name], nil
}

func (b *fakeBackend) DeleteVM(name string) error {
	if _, err := b.VM(name); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops = append(b.ops, "delete "+name)
	delete(b.vms, name)
	return nil
}

func (b *fakeBackend) Config() string { return "vms: []\n" }

// PutConfig accepts "vms: []" only.
func (b *fakeBackend) PutConfig(text string) (ConfigResult, error) {
	if text != "vms: []\n" {
		return ConfigResult{}, fmt.Errorf("config:1:1: not what the fake takes: %w", ErrInvalid)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops = append(b.ops, "config")
	return ConfigResult{Stopped: []string{"a"}}, nil
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
	var nets []Network
	if err := c.Do(ctx, "GET", "/v1/networks", nil, &nets); err != nil || len(nets) != 1 || nets[0].Ports[0] != "a.0" || nets[0].Leases != 1 {
		t.Errorf("networks: %+v, %v", nets, err)
	}
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

// TestConsole: a reader gets the tail it asked for, then lines as they
// come, and is told where it lost some; lines typed reach the backend.
func TestConsole(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}, "b": {Name: "b", State: StateStopped}}}
	c := serve(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body, err := c.Follow(ctx, "/v1/vms/a/console?tail=2")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	want := func(line string) {
		t.Helper()
		if !sc.Scan() || sc.Text() != line {
			t.Fatalf("read %q (%v), want %q", sc.Text(), sc.Err(), line)
		}
	}
	want("past 1")
	want("past 2")
	b.console <- "live 1"
	want("live 1")
	b.dropped.Store(3)
	b.console <- "live 2"
	want("[hyperroot: 3 lines not shown: this reader did not keep up]")
	want("live 2")
	var sent Sent
	if err := c.Do(ctx, "POST", "/v1/vms/a/console", []byte("one\ntwo\n"), &sent); err != nil || sent.Lines != 2 {
		t.Errorf("send: %+v, %v", sent, err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/b/console", []byte("x"), &sent); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 409)") {
		t.Errorf("send to a stopped VM: %v", err)
	}
	if _, err := c.Follow(ctx, "/v1/vms/a/console?tail=5000"); err == nil || !strings.Contains(err.Error(), "want 0 to 1000 lines (HTTP 400)") {
		t.Errorf("tail 5000: %v", err)
	}
	if _, err := c.Follow(ctx, "/v1/vms/zz/console"); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 404)") {
		t.Errorf("console of an unknown VM: %v", err)
	}
	if !slices.Equal(b.ops, []string{"send a one|two"}) {
		t.Errorf("ops %v", b.ops)
	}
}

func TestCreateDelete(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	c := serve(t, b)
	ctx := context.Background()
	var vm VM
	if err := c.Do(ctx, "POST", "/v1/vms", []byte("{name: b}"), &vm); err != nil || vm.Name != "b" || vm.State != StateRunning {
		t.Fatalf("create: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms", []byte("{name: b}"), &vm); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 409)") {
		t.Errorf("create twice: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms", []byte("[1, 2]"), &vm); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 400)") {
		t.Errorf("create of a list: %v", err)
	}
	var d Deleted
	if err := c.Do(ctx, "DELETE", "/v1/vms/b", nil, &d); err != nil || d.Deleted != "b" {
		t.Errorf("delete: %+v, %v", d, err)
	}
	if err := c.Do(ctx, "DELETE", "/v1/vms/b", nil, &d); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 404)") {
		t.Errorf("delete twice: %v", err)
	}
	if !slices.Equal(b.ops, []string{"create b", "delete b"}) {
		t.Errorf("ops %v", b.ops)
	}
}

func TestConfig(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{"a": {Name: "a", State: StateRunning}}}
	c := serve(t, b)
	ctx := context.Background()
	if text, err := c.Get(ctx, "/v1/config"); err != nil || string(text) != "vms: []\n" {
		t.Errorf("get: %q, %v", text, err)
	}
	var r ConfigResult
	if err := c.Do(ctx, "PUT", "/v1/config", []byte("vms: []\n"), &r); err != nil || r.String() != "stopped a" {
		t.Errorf("put: %+v, %v", r, err)
	}
	if err := c.Do(ctx, "PUT", "/v1/config", []byte("vms: [\n"), &r); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 400)") {
		t.Errorf("put of a bad config: %v", err)
	}
	if err := c.Do(ctx, "PUT", "/v1/config", []byte(strings.Repeat("#", maxConfig+1)), &r); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 413)") {
		t.Errorf("put of 1 MiB and more: %v", err)
	}
	if got := (ConfigResult{Started: []string{"x", "y"}, Failed: map[string]string{"y": "no kernel"}}).String(); got != "started x,y failed y (no kernel)" {
		t.Errorf("String: %q", got)
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
		{"PUT", "/v1/vms", "", 405, "only GET or POST"},
		{"PUT", "/v1/vms/a", "", 405, "only GET or DELETE"},
		{"DELETE", "/v1/vms/..%2fa", "", 400, `vm name "../a"`},
		{"PATCH", "/v1/config", "", 405, "only GET or PUT"},
		{"POST", "/v1/vms/a/explode", "", 404, "no resource POST /v1/vms/a/explode"},
		{"GET", "/v2/things", "", 404, "no resource GET /v2/things"},
		{"POST", "/v1/vms/a/stop", strings.Repeat("x", maxBody+1), 413, "request body over"},
		{"PUT", "/v1/vms/a/qos", strings.Repeat("x", maxBody+1), 413, "request body over"},
		{"PUT", "/v1/vms/..%2fa/qos", `{"cpu": {}}`, 400, `vm name "../a"`},
		{"POST", "/v1/vms/a/qos", `{"cpu": {}}`, 405, "only GET or PUT"},
		{"PUT", "/v1/vms/a/console", "x", 405, "only GET or POST"},
		{"POST", "/v1/vms/a/console", "", 400, "want the lines to type"},
		{"POST", "/v1/vms/a/console", strings.Repeat("x", maxBody+1), 413, "request body over"},
		{"GET", "/v1/vms/a/console?tail=-1", "", 400, "want 0 to 1000"},
		{"GET", "/v1/vms/..%2f/console", "", 400, `vm name "../"`},
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
	for _, s := range []string{"GET /v1/vms", "POST /v1/vms/a/start", "GET /v1/vms/%2e%2e", "POST /v1/vms//stop", "PUT /v1/vms/a/qos", "GET /v1/vms/a/console?tail=3", "POST /v1/vms/a/console"} {
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, line, body string) {
		method, path, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(path, "/") {
			return
		}
		// Cancelled: a console stream ends after its past lines.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		req, err := http.NewRequestWithContext(ctx, method, "http://x"+path, strings.NewReader(body))
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
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a console stream ends after its past lines
			req, _ := http.NewRequestWithContext(ctx, strings.ToUpper(method), "http://x"+strings.ReplaceAll(path, "{name}", "a"), strings.NewReader("x"))
			Handler(b).ServeHTTP(rec, req)
			_, documented := ops[method]
			served := rec.code != http.StatusNotFound && rec.code != http.StatusMethodNotAllowed
			if documented != served {
				t.Errorf("%s %s: documented %v, served %v (%d %s)", method, path, documented, served, rec.code, rec.body.String())
			}
		}
	}
}

// TestCapture: a port's capture is a pcap stream of as many frames as
// asked, or for as long; bad requests are refused before the switch is
// asked; every capture the backend started is closed, however it ends.
func TestCapture(t *testing.T) {
	b := &fakeBackend{vms: map[string]*VM{}}
	c := serve(t, b)
	ctx := context.Background()
	body, err := c.Get(ctx, "/v1/ports/a.0/capture?count=5")
	if err != nil {
		t.Fatal(err)
	}
	r, err := pcap.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		rec, err := r.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("record %d: %v", n, err)
			}
			break
		}
		if len(rec) != 16+60 {
			t.Errorf("record %d: %d bytes", n, len(rec))
		}
		n++
	}
	if n != 5 {
		t.Errorf("%d records, want 5", n)
	}
	start := time.Now()
	if body, err = c.Get(ctx, "/v1/ports/a.0/capture?seconds=1"); err != nil || len(body) < 24+76 {
		t.Errorf("a second's capture: %d bytes, %v", len(body), err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("a second's capture ended after %v", d)
	}
	// A client that goes away ends the capture.
	cctx, cancel := context.WithCancel(ctx)
	rc, err := c.Follow(cctx, "/v1/ports/a.0/capture")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(rc, make([]byte, 24+76))
	cancel()
	rc.Close()
	for _, tc := range []struct{ path, want string }{
		{"/v1/ports/b.0/capture", "(HTTP 404)"},
		{"/v1/ports/a.x/capture", "(HTTP 400)"},
		{"/v1/ports/a.01/capture", "(HTTP 400)"},
		{"/v1/ports/..%2Fa.0/capture", "(HTTP 400)"},
		{"/v1/ports/uplink:a%2Fb/capture", "(HTTP 400)"},
		{"/v1/ports/a.0/capture?count=-1", "(HTTP 400)"},
		{"/v1/ports/a.0/capture?seconds=x", "(HTTP 400)"},
		{"/v1/ports/a.0/capture?count=99999999999", "(HTTP 400)"},
	} {
		if _, err := c.Get(ctx, tc.path); err == nil || !strings.HasSuffix(err.Error(), tc.want) {
			t.Errorf("GET %s: %v, want %s", tc.path, err, tc.want)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.captureClosed.Load() != b.captures.Load() || b.captures.Load() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d captures started, %d closed; want 3 and 3", b.captures.Load(), b.captureClosed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
