package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/board"
	"github.com/hyperroot/hyperroot/image"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// QEMU's user-mode network: the appliance's NIC has this MAC, and the
// host's loopback is 10.0.2.2 to it.
const (
	userNetMAC  = "52:54:00:12:34:56"
	userNetHost = "10.0.2.2"
)

// bootServer is an HTTP server on the host's loopback, which the
// appliance reaches at 10.0.2.2: the files of dir, plus handlers a test
// adds, and a record of every request.
type bootServer struct {
	t    testing.TB
	port int
	mux  *http.ServeMux
	mu   sync.Mutex
	seen []string
}

func newBootServer(t testing.TB, dir string) *bootServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &bootServer{t: t, port: l.Addr().(*net.TCPAddr).Port, mux: http.NewServeMux()}
	if dir != "" {
		s.mux.Handle("/", http.FileServer(http.Dir(dir)))
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, r.URL.Path)
		s.mu.Unlock()
		s.mux.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return s
}

// url is path on this server as the appliance reaches it.
func (s *bootServer) url(path string) string {
	return fmt.Sprintf("http://%s:%d%s", userNetHost, s.port, path)
}

func (s *bootServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// TestPXEBoot: QEMU's iPXE ROM boots the appliance from the network boot
// files ./build.sh pxe writes (image.WritePXE, into a directory of the
// test's), served over HTTP from this host: its DHCP boot file (QEMU's
// user network) is an operator's script that sets the configuration's URL,
// one file per host by MAC, and chains the generated boot.ipxe, which
// loads the kernel and initramfs beside it. The appliance comes up,
// fetches that configuration over HTTP and runs its VM.
func TestPXEBoot(t *testing.T) {
	parallel(t)
	imgDir := imageDir(t)
	data, err := os.ReadFile(filepath.Join(imgDir, "board.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := board.Parse("board.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := image.WritePXE(imgDir, dir, b, "test"); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o755)
	mac := strings.ReplaceAll(userNetMAC, ":", "-")
	cfg := "vms:\n" + loadVM("netbooted", "poweroff", 1, "128M", "")
	if err := os.WriteFile(filepath.Join(hosts, mac+".yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	testbed(t, func(t testing.TB) {
		s := newBootServer(t, dir)
		// What an operator's DHCP boot file does: settings, then the
		// generated script.
		s.mux.HandleFunc("/site.ipxe", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "#!ipxe\nset hyperroot-config %s\nset hyperroot-args hyperroot.oneshot=1 hyperroot.timeout=%s\nchain %s\n",
				s.url("/hosts/${mac:hexhyp}.yaml"), qemu.ApplianceTimeout(waitCap), image.PXEScript)
		})
		m := start(t, qemu.Options{PXE: s.url("/site.ipxe")})
		expect(t, m, `hyperroot: net: eth0 \(`+userNetMAC+`\) 10\.0\.2\.15/24 via 10\.0\.2\.2 by DHCP from 10\.0\.2\.2, dns \[10\.0\.2\.3\], to fetch the configuration$`)
		url := s.url("/hosts/" + mac + ".yaml")
		expect(t, m, `hyperroot: config: fetched `+url+`: \d+ bytes, sha256 [0-9a-f]{64}, not pinned`)
		expect(t, m, `hyperroot: net: eth0: address released`)
		expect(t, m, `hyperroot: config: `+url+` \(1 VMs, 0 networks\)$`)
		expect(t, m, `^netbooted\| guest: action poweroff$`)
		r := m.Wait()
		if !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
		got := strings.Join(s.requests(), " ")
		if want := "/site.ipxe /boot.ipxe /vmlinuz /initramfs.cpio /hosts/" + mac + ".yaml"; got != want {
			t.Errorf("the server was asked for %s, want %s", got, want)
		}
	})
}

// TestConfigURL: hyperroot.config= names a URL with ${mac:hexhyp}, which
// the appliance expands itself; the server answers 503 twice (it is still
// starting), which the appliance retries with back-off, saying so, before
// it gets the configuration, checks it against its pinned digest and runs
// its VM. A second appliance's pin does not match what the server gives:
// it says so with both digests and runs nothing.
func TestConfigURL(t *testing.T) {
	parallel(t)
	cfg := []byte("vms:\n" + loadVM("fetched", "poweroff", 1, "128M", ""))
	sum := sha256.Sum256(cfg)
	pin := hex.EncodeToString(sum[:])
	mac := strings.ReplaceAll(userNetMAC, ":", "-")
	testbed(t, func(t testing.TB) {
		s := newBootServer(t, "")
		var mu sync.Mutex
		asked := 0
		s.mux.HandleFunc("/hosts/"+mac+".yaml", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			asked++
			n := asked
			mu.Unlock()
			if n <= 2 {
				http.Error(w, "starting", http.StatusServiceUnavailable)
				return
			}
			w.Write(cfg)
		})
		tmpl := s.url("/hosts/${mac:hexhyp}.yaml")
		m := start(t, qemu.Options{Oneshot: true, UserNet: true, Append: "hyperroot.config=" + tmpl + " hyperroot.config.sha256=" + pin})
		url := s.url("/hosts/" + mac + ".yaml")
		expect(t, m, `hyperroot: config: fetching `+url+` \(from `+strings.ReplaceAll(strings.ReplaceAll(tmpl, "$", `\$`), "{", `\{`)+`\)$`)
		expect(t, m, `hyperroot: config: `+url+`: HTTP 503 Service Unavailable; attempt 1 failed, again in 1s$`)
		expect(t, m, `hyperroot: config: `+url+`: HTTP 503 Service Unavailable; attempt 2 failed, again in 2s$`)
		expect(t, m, `hyperroot: config: fetched `+url+`: \d+ bytes, sha256 `+pin+`, as pinned$`)
		expect(t, m, `^fetched\| guest: action poweroff$`)
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}

		wrong := strings.Repeat("0", 64)
		m = start(t, qemu.Options{Oneshot: true, UserNet: true, Append: "hyperroot.config=" + url + " hyperroot.config.sha256=" + wrong})
		expect(t, m, `hyperroot: error: config: `+url+`: sha256 `+pin+`, pinned `+wrong+`$`)
		r := m.Wait()
		if !strings.HasPrefix(r.Verdict, "fail errors=1 ") || !r.PowerOff {
			t.Fatalf("a configuration that does not match its pin: verdict %q, want a failure and a power-off: %s", r.Verdict, r.Why())
		}
	})
}

// TestConfigURLHTTPS: a configuration over HTTPS from a server whose
// certificate a site CA signed, the CA added to the image as an operator
// would (a file in /etc/ssl/certs beside the public CAs the image
// carries): the appliance checks the server's certificate and runs the VM.
func TestConfigURLHTTPS(t *testing.T) {
	parallel(t)
	caPEM, leaf := siteCA(t, net.ParseIP(userNetHost))
	ca := filepath.Join(t.TempDir(), "site-ca.pem")
	if err := os.WriteFile(ca, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := []byte("vms:\n" + loadVM("secure", "poweroff", 1, "128M", ""))
	testbed(t, func(t testing.TB) {
		l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf}})
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(cfg) })}
		go srv.Serve(l)
		defer srv.Close()
		url := fmt.Sprintf("https://%s:%d/c.yaml", userNetHost, l.Addr().(*net.TCPAddr).Port)
		m := start(t, qemu.Options{Oneshot: true, UserNet: true, Append: "hyperroot.config=" + url,
			Files: []string{ca + ":/etc/ssl/certs/site-ca.pem"}})
		expect(t, m, `hyperroot: config: fetched `+url+`: \d+ bytes, sha256 [0-9a-f]{64}, not pinned`)
		expect(t, m, `^secure\| guest: action poweroff$`)
		if r := m.Wait(); !r.OK() {
			t.Fatalf("appliance: %s", r.Why())
		}
	})
}

// siteCA makes a CA and a server certificate it signs for ip: the CA in
// PEM, the server's certificate and key for tls.
func siteCA(t testing.TB, ip net.IP) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hyperroot test site CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip.String()},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{ip},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
