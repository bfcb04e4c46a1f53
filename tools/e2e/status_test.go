package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/hyperroot/hyperroot/internal/testenv"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestStatusPage: the status page, in Debian's headless Chromium on the
// host, through QEMU's port forward to the API's listener: the page loads
// without a token, asks for one, then lists the running VMs with their
// switch ports, follows a VM's console, and its stop button stops the VM
// (which the API's audit line on the console confirms). Screenshots
// before and after the stop are kept in out/test-artefacts (or
// $HYPERROOT_ARTEFACTS).
func TestStatusPage(t *testing.T) {
	parallel(t)
	chromium := testenv.NeedTool(t, "chromium", "chromium")
	api := newRemoteAPI(t)
	cfg := configFile(t, api.config()+"networks:\n"+lanNet+"vms:\n"+
		netVM("web", "wait", []string{"{network: lan}"})+
		loadVM("db", "echo", 1, "128M", ""))
	artefacts := os.Getenv("HYPERROOT_ARTEFACTS")
	if artefacts == "" {
		artefacts = "../../out/test-artefacts"
	}
	if err := os.MkdirAll(artefacts, 0o755); err != nil {
		t.Fatal(err)
	}
	testbed(t, func(t testing.TB) {
		m := start(t, api.options(qemu.Options{Config: cfg}))
		api.connect(t, m)
		expect(t, m, `^web\| guest: action wait$`)

		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(chromium),
			chromedp.NoSandbox,                               // the tests run as root
			chromedp.Flag("ignore-certificate-errors", true), // the appliance's own certificate
			chromedp.UserDataDir(t.TempDir()),
			chromedp.WindowSize(1500, 1000))
		ctx, cancel := context.WithTimeout(context.Background(), waitCap)
		defer cancel()
		ctx, cancel = chromedp.NewExecAllocator(ctx, opts...)
		defer cancel()
		ctx, cancel = chromedp.NewContext(ctx)
		defer cancel()
		shot := func(name string) chromedp.Action[chromedp.Void] {
			return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				png, err := chromedp.FullScreenshot(100)(ctx, tg) // 100: PNG
				if err != nil {
					return err
				}
				p := filepath.Join(artefacts, name)
				t.Logf("screenshot: %s", p)
				return os.WriteFile(p, png, 0o644)
			})
		}
		vm := func(name, state string) chromedp.CSS {
			return chromedp.CSS(`tr[data-vm="` + name + `"][data-state="` + state + `"]`)
		}
		err := chromedp.Do(ctx,
			chromedp.Navigate("https://127.0.0.1:"+strconv.Itoa(api.port)+"/"),
			chromedp.WaitVisible(chromedp.CSS("#token")),
			chromedp.SendKeys(chromedp.CSS("#token"), api.token),
			chromedp.Click(chromedp.CSS("#connect")),
			chromedp.WaitVisible(vm("web", "running")),
			chromedp.WaitVisible(vm("db", "running")),
			chromedp.WaitVisible(chromedp.CSS(`tr[data-port="web.0"]`)), // the switch's counters, within 10 s
			chromedp.Click(chromedp.CSS(`tr[data-vm="web"] button.console`)),
			chromedp.Poll[chromedp.Void](`document.querySelector("#console").textContent.includes("guest: action wait")`, chromedp.WithPollingTimeout(0)),
			shot("status-page.png"),
			chromedp.Click(chromedp.CSS(`tr[data-vm="web"] button.stop`)),
			chromedp.WaitVisible(vm("web", "stopped")),
			shot("status-page-stopped.png"),
		)
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		// The VM's exit comes before the API's answer, and its line
		// before the audit line.
		seen(t, m, `hyperroot: vm web exited code=0 reason=poweroff$`)
		seen(t, m, `hyperroot: api: e2e: POST /v1/vms/web/stop from 10\.0\.2\.2:\d+: HTTP 200$`)
		if l := lineWith(m.Lines(), `hyperroot: api: refused`); l != "" {
			t.Errorf("the page made a request without its token: %s", l)
		}
		if out := api.must(t, "vm", "get", "db"); !strings.HasPrefix(out, "vm db running") {
			t.Errorf("db: %q", out)
		}
		powerButton(t, m)
	})
}
