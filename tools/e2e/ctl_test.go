package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apiclient "github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/internal/metricstest"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestCtl: `hyperroot ctl` drives a VM's lifecycle through the management
// API's unix socket in the appliance (PID 1 serves it): the appliance runs
// `hyperroot ctl shell` as its hyperroot.run job and the test types its
// commands on the console ("@run ..."). A hostile name is refused with the
// API's message and changes nothing.
func TestCtl(t *testing.T) {
	parallel(t)
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		cfg := writeConfig(t, guestVM("managed", 1, "128M", "wait", "always"))
		m := start(t, qemu.Options{Config: cfg, Oneshot: true, Stdin: pr, Append: "hyperroot.run=/bin/hyperroot,ctl,shell"})
		expect(t, m, `hyperroot: run started pid=\d+ /bin/hyperroot ctl shell$`)
		seen(t, m, `^managed\| guest: action wait$`)
		fmt.Fprintln(pw, "@run vm list")
		expect(t, m, `^run\| NAME +STATE +PID +CPUS +MEMORY +RESTART$`)
		expect(t, m, `^run\| managed +running +[1-9]\d* +1 +128M always$`)
		// ctl escapes the name: the path stays one segment and the
		// server sees, and refuses, the name as typed.
		fmt.Fprintln(pw, "@run vm get ../../etc")
		expect(t, m, `^run\| ctl: vm get \.\./\.\./etc: vm name "\.\./\.\./etc": want 1-32 lower-case letters, digits and dashes \(HTTP 400\)$`)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| vm managed stopped pid 0$`)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| ctl: vm stop managed: vm managed is not running: conflict \(HTTP 409\)$`)
		fmt.Fprintln(pw, "@run vm start managed")
		expect(t, m, `^run\| vm managed running pid [1-9]\d*$`)
		nth(t, m, `^managed\| guest: action wait$`, 2)
		fmt.Fprintln(pw, "@run host")
		expect(t, m, `^run\| hyperroot \S+ kernel \S+ cpus \d+ memory \d+ kvm ok `)
		fmt.Fprintln(pw, "@run vm stop managed")
		expect(t, m, `^run\| vm managed stopped pid 0$`)
		fmt.Fprintln(pw, "@run exit")
		expect(t, m, `hyperroot: run exited code=0`)
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
	})
}

// remoteAPI is the appliance's API as a client on the host reaches it: the
// hyperroot binary built for the host runs `hyperroot ctl` against a host
// port QEMU's user network forwards to the listener, with a token whose
// hash the configuration holds and the certificate the console printed.
type remoteAPI struct {
	bin, token, pin string
	port            int
}

func newRemoteAPI(t *testing.T) *remoteAPI {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hyperroot")
	buildInto(t, bin, "../../init")
	return &remoteAPI{bin: bin, port: freePort(t), token: fmt.Sprintf("e2e-%d", time.Now().UnixNano())}
}

// config is the configuration's api: section.
func (r *remoteAPI) config() string {
	return fmt.Sprintf("api:\n  listen: \":8443\"\n  tokens:\n    - {name: e2e, sha256: %x}\n", sha256.Sum256([]byte(r.token)))
}

// options adds the port forward, and a DHCP address on the appliance's
// NIC (ip=dhcp), to o.
func (r *remoteAPI) options(o qemu.Options) qemu.Options {
	o.Forward = map[int]int{r.port: 8443}
	o.Append = strings.TrimSpace(o.Append + " ip=dhcp")
	return o
}

// connect waits for the listener (and takes its certificate's
// fingerprint) and for the address QEMU's DHCP gives.
func (r *remoteAPI) connect(t testing.TB, m *qemu.Machine) {
	t.Helper()
	l := expect(t, m, `hyperroot: api: https://:8443 certificate sha256:[0-9a-f]{64} \((made now, )?kept in /var/lib/hyperroot/api\) tokens e2e$`)
	r.pin = regexp.MustCompile(`sha256:[0-9a-f]{64}`).FindString(l)
	seen(t, m, `hyperroot: host address 10\.0\.2\.15/24 `)
}

// ctl runs hyperroot ctl with token tok.
func (r *remoteAPI) ctl(tok string, args ...string) (string, error) {
	cmd := exec.Command(r.bin, append([]string{"ctl"}, args...)...)
	cmd.Env = r.env(tok)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("hyperroot ctl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), err
}

// env is hyperroot ctl's environment for the appliance, with token tok.
func (r *remoteAPI) env(tok string) []string {
	return append(os.Environ(), "HYPERROOT_URL=https://127.0.0.1:"+strconv.Itoa(r.port), "HYPERROOT_FINGERPRINT="+r.pin, "HYPERROOT_TOKEN="+tok)
}

// must runs hyperroot ctl with the right token and fails the test if it
// fails.
func (r *remoteAPI) must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := r.ctl(r.token, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCtlRemote: `hyperroot ctl` on the host drives a VM in the appliance
// through the API's network listener: it sees the VM, halves its CPU
// limit live (the appliance's clock measures the spinner's use before and
// after), stops and starts it; it follows another VM's console and types
// a line on it, which the guest echoes, and 100 readers that never read
// do not hold that console up; it creates a VM, applies a
// configuration that drops another, and deletes the one it created. A wrong token changes nothing, and the
// console says who did what.
func TestCtlRemote(t *testing.T) {
	parallel(t)
	api := newRemoteAPI(t)
	cfg := configFile(t, api.config()+"vms:\n"+loadVM("web", "spin", 1, "128M", "", spinOnCue)+
		loadVM("talk", "echo", 1, "128M", ""))
	testbed(t, func(t testing.TB) {
		pr, pw := io.Pipe()
		defer pw.Close()
		m := start(t, api.options(qemu.Options{Config: cfg, Stdin: pr}))
		api.connect(t, m)
		if _, err := api.ctl("not-"+api.token, "vm", "stop", "web"); err == nil || !strings.Contains(err.Error(), "(HTTP 401)") {
			t.Fatalf("stop with a wrong token: %v", err)
		}
		expect(t, m, `hyperroot: api: refused POST /v1/vms/web/stop from 10\.0\.2\.2:\d+: no valid token \(HTTP 401\)$`)
		if out := api.must(t, "vm", "list"); !regexp.MustCompile(`(?m)^web +running +[1-9]\d* +1 +128M never$`).MatchString(out) ||
			!regexp.MustCompile(`(?m)^talk +running `).MatchString(out) {
			t.Fatalf("vm list after a refused stop:\n%s", out)
		}
		if out := api.must(t, "-o", "json", "host"); !strings.Contains(out, `"kvm":"`) || !strings.Contains(out, `"cpus":`) {
			t.Errorf("host -o json: %s", out)
		}

		// A console followed from the host: its tail, then what a
		// line typed through the API makes the guest say.
		expect(t, m, `^talk\| guest: action echo$`)
		follow := exec.Command(api.bin, "ctl", "vm", "console", "talk", "200")
		follow.Env = api.env(api.token)
		stream, err := follow.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		defer follow.Process.Kill()
		lines := make(chan string, 1000)
		go func() {
			sc := bufio.NewScanner(stream)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		until := func(want string) {
			t.Helper()
			for l := range lines {
				if l == want {
					return
				}
			}
			t.Fatalf("the console stream ended before %q", want)
		}
		until("guest: action echo") // from the tail
		if out := api.must(t, "vm", "send", "talk", "hello\x1b[31m from the host"); out != "sent 1 line(s) to talk\n" {
			t.Errorf("send: %q", out)
		}
		until("guest: echo hello\uFFFD[31m from the host") // live, made printable
		follow.Process.Kill()
		follow.Wait()

		// 100 readers that never read do not hold the console up: the
		// guest's 300 echoes reach the appliance's console, each reader
		// keeps what its queue holds and loses the rest.
		client, err := apiclient.NewClient("https://127.0.0.1:"+strconv.Itoa(api.port), api.token, api.pin)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for range 100 {
			s, err := client.Follow(ctx, "/v1/vms/talk/console?tail=0")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
		}
		for batch := range 3 {
			var b strings.Builder
			for i := range 100 {
				fmt.Fprintf(&b, "stalled %d\n", batch*100+i)
			}
			if err := client.Do(ctx, "POST", "/v1/vms/talk/console", []byte(b.String()), nil); err != nil {
				t.Fatal(err)
			}
			// A batch at a time: the guest's tty holds 4 KiB of input.
			expect(t, m, fmt.Sprintf(`^talk\| guest: echo stalled %d$`, batch*100+99))
		}
		last, err := client.Follow(ctx, "/v1/vms/talk/console?tail=1")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(last)
		if !sc.Scan() || sc.Text() != "guest: echo stalled 299" {
			t.Errorf("a new reader's tail: %q", sc.Text())
		}
		last.Close()
		cancel()

		// The CPU limit, live: the kernel's accounting before and after.
		// The spinner starts now, not at boot: it would take a core
		// from the appliance's other VM and from the neighbour test.
		startSpinner(t, m, pw, "web")
		free := cpuRates(t, m, pw, "web")[0]
		pct := int(50 * min(1, free/0.8))
		t.Logf("no limit: %.3f CPU", free)
		if out := api.must(t, "vm", "qos", "web", fmt.Sprintf(`{"cpu": {"max": "%d%%"}}`, pct)); !strings.HasPrefix(out, fmt.Sprintf("qos web set: cpu.weight=100 cpu.max=%d/100000 ", pct*1000)) {
			t.Fatalf("qos set: %s", out)
		}
		expect(t, m, `hyperroot: api: e2e: PUT /v1/vms/web/qos from 10\.0\.2\.2:\d+: HTTP 200$`)
		got, want := cpuRates(t, m, pw, "web")[0], float64(pct)/100
		t.Logf("cpu.max %d%% set by ctl: %.3f CPU", pct, got)
		if got < want-0.05 || got > want+0.05 {
			t.Errorf("the spinning VM used %.3f CPU under cpu.max %d%%, want %.2f ± 0.05", got, pct, want)
		}
		text := api.must(t, "metrics")
		fams, err := metricstest.Parse(strings.NewReader(text))
		if err != nil {
			t.Fatalf("parse /metrics: %v", err)
		}
		if cpu, mem := fams.Value("hyperroot_vm_cpu_seconds_total", "vm=web"), fams.Value("hyperroot_vm_memory_stat_bytes", "vm=web", "kind=shmem"); cpu < 5 || mem <= 0 {
			t.Errorf("the spinner's CPU time %v s (it spun over 20 s), its guest RAM %v bytes", cpu, mem)
		}
		// Guest RAM takes 2 MiB pages: PID 1 lets shmem have them where
		// asked, and the VMM asks for its memfd (vmm/memory).
		if thp := fams.Value("hyperroot_vm_memory_stat_bytes", "vm=web", "kind=shmem_thp"); thp < 2<<20 {
			t.Errorf("the spinner's guest RAM in huge pages: %v bytes, want some", thp)
		}
		if _, err := api.ctl(api.token, "vm", "qos", "web", `{"cpu": {"max": "lots"}}`); err == nil || !strings.Contains(err.Error(), `max "lots": want a percentage`) || !strings.Contains(err.Error(), "(HTTP 400)") {
			t.Errorf("a bad qos: %v", err)
		}

		if out := api.must(t, "vm", "stop", "web"); out != "vm web stopped pid 0\n" {
			t.Errorf("stop: %q", out)
		}
		expect(t, m, `hyperroot: api: e2e: POST /v1/vms/web/stop from 10\.0\.2\.2:\d+: HTTP 200$`)
		if out := api.must(t, "vm", "start", "web"); !regexp.MustCompile(`^vm web running pid [1-9]\d*\n$`).MatchString(out) {
			t.Errorf("start: %q", out)
		}
		nth(t, m, `^web\| guest: spin waiting$`, 2) // and idle from here on

		// The configuration, live: a VM created, the configuration in
		// force read back, one dropped by applying a file without it,
		// the created one deleted.
		dir := t.TempDir()
		extra := filepath.Join(dir, "extra.yaml")
		write(t, extra, "{name: extra, cpus: 1, memory: 128M, kernel: /guest/vmlinuz, initrd: /guest/initramfs.cpio, cmdline: console=ttyS0 panic=-1 quiet hyperroot.guest=echo, restart: never}\n")
		if out := api.must(t, "vm", "create", "-f", extra); !regexp.MustCompile(`^vm extra running pid [1-9]\d*\n$`).MatchString(out) {
			t.Errorf("create: %q", out)
		}
		expect(t, m, `^extra\| guest: action echo$`)
		if out := api.must(t, "config", "get"); !strings.Contains(out, "name: extra") || !strings.Contains(out, "name: talk") {
			t.Errorf("config get after create:\n%s", out)
		}
		next := filepath.Join(dir, "next.yaml")
		write(t, next, api.config()+"vms:\n"+loadVM("web", "spin", 1, "128M", "", spinOnCue)+loadVM("extra", "echo", 1, "128M", ""))
		if out := api.must(t, "config", "apply", "-f", next); out != "config applied: stopped talk unchanged web,extra\n" {
			t.Errorf("config apply: %q", out)
		}
		expect(t, m, `hyperroot: vm talk removed$`)
		bad := filepath.Join(dir, "bad.yaml")
		write(t, bad, "vms:\n  - {name: web, cpus: lots}\n")
		if _, err := api.ctl(api.token, "config", "apply", "-f", bad); err == nil || !strings.Contains(err.Error(), `config:2:23: vm web: want a whole number, found "lots"`) || !strings.Contains(err.Error(), "(HTTP 400)") {
			t.Errorf("a bad config: %v", err)
		}
		if out := api.must(t, "vm", "delete", "extra"); out != "vm extra deleted\n" {
			t.Errorf("delete: %q", out)
		}
		if out := api.must(t, "vm", "list"); strings.Contains(out, "extra") || strings.Contains(out, "talk") || !strings.Contains(out, "web ") {
			t.Errorf("vm list after the changes:\n%s", out)
		}
		powerButton(t, m)
	})
}

// freePort is a TCP port on the host's loopback that nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
