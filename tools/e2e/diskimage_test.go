package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/tools/qemu"
)

// TestDiskImage: VM disks made from an image that the appliance downloads
// over HTTP from a server on the host (through QEMU's user network). The
// first boot loses its power in the middle of the download; the next boot
// resumes it with a range request from what the first had synced, verifies
// it, and makes the VM's disk from it: the guest reads the image's first
// MiB. A second VM's disk from the same image needs no second download.
func TestDiskImage(t *testing.T) {
	parallel(t)
	const seed = 77
	const size = 64 << 20
	img := make([]byte, size)
	copy(img, fileContent(seed, "raw", 1<<20))
	rand.NewChaCha8([32]byte{7}).Read(img[1<<20:])
	sum := sha256.Sum256(img)
	digest := hex.EncodeToString(sum[:])
	srv := newStallingServer(t, img, 24<<20)
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 512<<20); err != nil {
		t.Fatal(err)
	}
	vm := func(name string) string {
		return diskVM(name, 1, "128M", "disk-raw-read", seed, []string{
			fmt.Sprintf("{path: vms/%s.img, image: {url: \"http://10.0.2.2:%d/debian.raw\", sha256: %s}}", name, srv.port, digest)})
	}
	cfg := "data: {device: /dev/vda, format: if-empty}\nvms:\n" + vm("one") + vm("two")
	opts := qemu.Options{UserNet: true, Append: "ip=dhcp", Drives: []string{data}}
	testbed(t, func(t testing.TB) {
		o := opts
		o.Config = configFile(t, cfg)
		m := start(t, o)
		expect(t, m, `hyperroot: vm one: image `+digest[:12]+`: downloading http://10\.0\.2\.2:\d+/debian\.raw$`)
		// The server has sent 24 MiB and holds the rest: past the
		// download's first sync (16 MiB), then the power fails.
		srv.waitStalled(t)
		seen(t, m, `hyperroot: vm one: image `+digest[:12]+`: \d+% \((1[6-9]|2[0-4]) of 64 MiB\)$`)
		m.Kill()
	})
	testbed(t, func(t testing.TB) {
		o := opts
		o.Config = configFile(t, cfg)
		m := start(t, o)
		expect(t, m, `hyperroot: data: /dev/vda1 \(labelled hyperroot-data\) mounted on /var/lib/hyperroot$`)
		expect(t, m, `hyperroot: vm one: image `+digest[:12]+`: 64 MiB in [0-9.]+ s, sha256 verified$`)
		expect(t, m, `hyperroot: vm one: disk /var/lib/hyperroot/vms/one\.img made from image `+digest[:12]+` \(`)
		want := sha(img[:1<<20])
		if got := expect(t, m, `^one\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, want) {
			t.Errorf("the VM's disk starts with %q, want the image's sha256 %s", got, want)
		}
		seen(t, m, `hyperroot: vm two: disk /var/lib/hyperroot/vms/two\.img made from image `+digest[:12]+` \(`)
		if got := seen(t, m, `^two\| guest: raw sha256 [0-9a-f]+$`); !strings.HasSuffix(got, want) {
			t.Errorf("the second VM's disk starts with %q, want %s", got, want)
		}
		powerButton(t, m)
	})
	// The first boot's request, then the second boot's, from where the
	// first had synced (16 MiB at least), and no other.
	reqs := srv.requests()
	if len(reqs) != 2 || reqs[0] != "" || !strings.HasPrefix(reqs[1], "bytes=") {
		t.Fatalf("the server's requests had ranges %q, want none, then one resuming", reqs)
	}
	var from int
	fmt.Sscanf(reqs[1], "bytes=%d-", &from)
	if from < 16<<20 || from > 24<<20 {
		t.Errorf("the second boot resumed from byte %d, want what the first had synced: 16 to 24 MiB", from)
	}
}

// stallingServer serves an image at any path on the host's loopback,
// ranges honoured; the first request gets only the first stallAt bytes,
// then nothing until its client goes away.
type stallingServer struct {
	img     []byte
	stallAt int
	port    int
	stalled chan struct{}
	mu      sync.Mutex
	ranges  []string
}

func newStallingServer(t *testing.T, img []byte, stallAt int) *stallingServer {
	t.Helper()
	// QEMU's user network reaches the host's loopback as 10.0.2.2.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallingServer{img: img, stallAt: stallAt, port: l.Addr().(*net.TCPAddr).Port, stalled: make(chan struct{})}
	hs := &http.Server{Handler: s}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return s
}

func (s *stallingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	first := len(s.ranges) == 1
	s.mu.Unlock()
	if !first {
		http.ServeContent(w, r, "image.raw", time.Time{}, strings.NewReader(string(s.img)))
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(s.img)))
	w.Write(s.img[:s.stallAt])
	w.(http.Flusher).Flush()
	close(s.stalled)
	<-r.Context().Done()
}

func (s *stallingServer) waitStalled(t testing.TB) {
	t.Helper()
	select {
	case <-s.stalled:
	case <-time.After(waitCap):
		t.Fatalf("the appliance did not fetch the image's first %d bytes within %s", s.stallAt, waitCap)
	}
}

func (s *stallingServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}
