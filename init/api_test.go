package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/api"
)

// TestAPIOverFleet: the API's lifecycle on the fleet, through a real unix
// socket that only its owner may use.
func TestAPIOverFleet(t *testing.T) {
	f, _, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop()
	waitFor(t, out, "t| ready networks=0 ports=0")
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	go listenAPI(sock, apiMux(apiBackend{f: f, kvm: "test"}, metricsHandler(f, nil, nil)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := api.NewUnixClient(sock)
	ctx := context.Background()
	var vms []api.VM
	if err := c.Do(ctx, "GET", "/v1/vms", nil, &vms); err != nil || len(vms) != 1 || vms[0].State != api.StateRunning || vms[0].PID == 0 || vms[0].Restart != "always" {
		t.Fatalf("list: %+v, %v", vms, err)
	}
	var vm api.VM
	if err := c.Do(ctx, "POST", "/v1/vms/t/stop", nil, &vm); err != nil || vm.State != api.StateStopped {
		t.Fatalf("stop: %+v, %v", vm, err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/t/stop", nil, &vm); err == nil || !strings.HasSuffix(err.Error(), "vm t is not running: conflict (HTTP 409)") {
		t.Errorf("stop again: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/vms/t/start", nil, &vm); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := c.Do(ctx, "GET", "/v1/vms/nope", nil, &vm); err == nil || !strings.HasSuffix(err.Error(), `no vm "nope" (have t): not found (HTTP 404)`) {
		t.Errorf("unknown VM: %v", err)
	}
	var h api.Host
	if err := c.Do(ctx, "GET", "/v1/host", nil, &h); err != nil || h.KVM != "test" || h.CPUs == 0 || h.Memory == 0 {
		t.Errorf("host: %+v, %v", h, err)
	}
}

// TestAPINetwork: the network listener over the fleet, as a client on
// another machine sees it: TLS with the certificate the console names,
// a token, and `hyperroot ctl`'s commands; a request without a valid token
// changes nothing and is reported.
func TestAPINetwork(t *testing.T) {
	f, c, out := fakeFleet(t, "serve", config.RestartAlways)
	defer f.Stop()
	waitFor(t, out, "t| ready networks=0 ports=0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := &config.API{Listen: addr, Tokens: []config.APIToken{{Name: "ci", SHA256: sha256.Sum256([]byte("s3cret"))}}}
	go listenAPINet(c, cfg, apiMux(apiBackend{f: f, kvm: "test"}, metricsHandler(f, nil, nil)), dir)
	re := regexp.MustCompile(`hyperroot: api: https://` + regexp.QuoteMeta(addr) + ` certificate (sha256:[0-9a-f]{64}) \(made now, kept in ` + regexp.QuoteMeta(dir) + `\) tokens ci$`)
	pin := ""
	for deadline := time.Now().Add(20 * time.Second); pin == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, line := range out.lines() {
			if m := re.FindStringSubmatch(line); m != nil {
				pin = m[1]
			}
		}
	}
	if pin == "" {
		t.Fatalf("no listener line in:\n%s", out.String())
	}
	if st, err := os.Stat(filepath.Join(dir, "api-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v", st, err)
	}
	// The status page needs no token; the data it calls for does.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for path, want := range map[string]int{"/": 200, "/status.js": 200, "/v1/vms": 401, "/metrics": 401, "/status.html": 401} {
		resp, err := insecure.Get("https://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without a token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	bad, err := api.NewClient("https://"+addr, "guess", pin)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := ctlRun(bad, []string{"vm", "stop", "t"}, &sb, false); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 401)") {
		t.Errorf("stop with a wrong token: %v", err)
	}
	good, err := api.NewClient("https://"+addr, "s3cret", pin)
	if err != nil {
		t.Fatal(err)
	}
	var vm api.VM
	if err := good.Do(context.Background(), "GET", "/v1/vms/t", nil, &vm); err != nil || vm.State != api.StateRunning {
		t.Fatalf("the refused stop stopped the VM, or get failed: %+v, %v", vm, err)
	}
	if err := ctlRun(good, []string{"vm", "stop", "t"}, &sb, false); err != nil || sb.String() != "vm t stopped pid 0\n" {
		t.Fatalf("stop: %q, %v", sb.String(), err)
	}
	sb.Reset()
	if err := ctlRun(good, []string{"vm", "list"}, &sb, true); err != nil || !strings.HasPrefix(sb.String(), `[{"name":"t","state":"stopped",`) {
		t.Errorf("list -o json: %q, %v", sb.String(), err)
	}
	err = ctlRun(good, []string{"vm", "qos", "t", `{"cpu":`, `{"max":`, `"0%"}}`}, &sb, false)
	if err == nil || !strings.Contains(err.Error(), `qos t:1:17: max 0%: want 1% to`) || !strings.HasSuffix(err.Error(), "invalid (HTTP 400)") {
		t.Errorf("a bad qos: %v", err)
	}
	c.Flush(5 * time.Second)
	got := out.String()
	for _, want := range []string{
		"api: refused POST /v1/vms/t/stop from 127.0.0.1:",
		": no valid token (HTTP 401)\n",
		"api: ci: POST /v1/vms/t/stop from 127.0.0.1:",
		"api: ci: PUT /v1/vms/t/qos from 127.0.0.1:",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no console line with %q in:\n%s", want, got)
		}
	}
}

// fleetAPI serves the API of a fleet of one fake VM, t (which echoes its
// input as "input <line>"), on a unix socket, and returns a client once the
// socket answers.
func fleetAPI(t *testing.T) *api.Client {
	t.Helper()
	f, _, out := fakeFleet(t, "serve", config.RestartAlways)
	t.Cleanup(func() { f.Stop() })
	waitFor(t, out, "t| ready networks=0 ports=0")
	sock := filepath.Join(t.TempDir(), "api.sock")
	go listenAPI(sock, apiMux(apiBackend{f: f, kvm: "test"}, metricsHandler(f, nil, nil)))
	c := api.NewUnixClient(sock)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := c.Get(context.Background(), "/v1/host"); err == nil {
			return c
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}

// TestAPIConsole: a VM's console through the API over the fleet: the tail,
// then live lines, as a reader on the unix socket sees them; a line typed
// through the API reaches the guest (the fake VMM echoes it).
func TestAPIConsole(t *testing.T) {
	c := fleetAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body, err := c.Follow(ctx, "/v1/vms/t/console?tail=1")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	if !sc.Scan() || sc.Text() != "ready networks=0 ports=0" {
		t.Fatalf("tail: %q", sc.Text())
	}
	var sent api.Sent
	if err := c.Do(ctx, "POST", "/v1/vms/t/console", []byte("hello\x1b[2J there\n"), &sent); err != nil || sent.Lines != 1 {
		t.Fatalf("send: %+v, %v", sent, err)
	}
	if !sc.Scan() || sc.Text() != "input hello\x1b[2J there" {
		t.Fatalf("live: %q %v", sc.Text(), sc.Err())
	}
	if got := printable(sc.Text()); got != "input hello\uFFFD[2J there" {
		t.Errorf("printable: %q", got)
	}
}

// TestCtlAttach: hyperroot ctl vm attach types its input on a VM's
// console and prints what comes back, control characters made printable.
func TestCtlAttach(t *testing.T) {
	c := fleetAPI(t)
	var got syncBuffer
	if err := ctlAttach(context.Background(), c, "t", strings.NewReader("one\ntwo\x07\n"), &got); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ready networks=0 ports=0\n", "input one\n", "input two\uFFFD\n"} {
		if !strings.Contains(got.String(), want) {
			t.Errorf("attach printed no %q in:\n%s", want, got.String())
		}
	}
	if err := ctlAttach(context.Background(), c, "nope", strings.NewReader(""), &got); err == nil || !strings.HasSuffix(err.Error(), "(HTTP 404)") {
		t.Errorf("attach to an unknown VM: %v", err)
	}
}

// TestListenPrivate: the API socket is root's alone (0600) even made under
// the loosest umask, replaces a stale socket file, leaves nothing else in
// its directory, and PID 1's umask is left as it was; and nothing in PID 1
// narrows its umask, which the VMMs it forks at that moment would inherit
// (one did: its jail's directories became 0600 and its reconnections to
// the switch were refused, docs/TESTING.md).
func TestListenPrivate(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "api.sock")
	for round := range 2 { // the second over the first's file
		l, err := listenPrivate(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("round %d: %v, %v; want a socket, 0600", round, fi, err)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		c.Close()
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("round %d: the directory holds %d entries, want the socket alone", round, len(ents))
		}
		l.Close()
	}
	if now := unix.Umask(0); now != 0 {
		t.Errorf("umask %04o after listening, want 0", now)
	}
	srcs, _ := filepath.Glob("*.go")
	for _, src := range srcs {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "Umask(") {
			t.Errorf("%s changes PID 1's umask, which every child forked meanwhile inherits", src)
		}
	}
}
