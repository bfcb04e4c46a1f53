package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// image is a test image of n pseudo-random bytes and its digest.
func image(n int) ([]byte, string) {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{1}).Read(b)
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

// imageServer serves body at /img, honouring ranges unless noRanges; cut
// makes an answer stop (the connection closed) after that many bytes of
// the body on the first request, or stall with stall set. It records the
// Range header of each request.
type imageServer struct {
	body []byte
	serverOpts
	mu     sync.Mutex
	ranges []string
}

type serverOpts struct {
	noRanges bool
	cut      int
	stall    bool
}

func (s *imageServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/img" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	first := len(s.ranges) == 1
	s.mu.Unlock()
	start := 0
	if rg := r.Header.Get("Range"); rg != "" && !s.noRanges {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
		if err != nil || n > len(s.body) {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		if n == len(s.body) {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start = n
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(s.body)-1, len(s.body)))
		w.Header().Set("Content-Length", strconv.Itoa(len(s.body)-n))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(s.body)))
	}
	rest := s.body[start:]
	if first && s.cut > 0 {
		w.Write(rest[:s.cut])
		w.(http.Flusher).Flush()
		if s.stall {
			<-r.Context().Done()
			return
		}
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.Write(rest)
}

func (s *imageServer) rangesSeen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

func download(t *testing.T, srv *httptest.Server, path, sum string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return Download(ctx, srv.URL+"/img", path, Options{SHA256: sum, MinWait: time.Millisecond, Idle: 300 * time.Millisecond}, nil)
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != string(want) {
		t.Fatalf("%s: %d bytes (%v), want the image's %d", path, len(got), err, len(want))
	}
	if _, err := os.Stat(path + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.part left behind (%v)", path, err)
	}
}

func TestDownload(t *testing.T) {
	body, sum := image(3<<20 + 17)
	for _, tc := range []struct {
		name       string
		srv        serverOpts
		partial    int // bytes of a .part left by an earlier boot
		wantRanges []string
	}{
		{name: "whole", wantRanges: []string{""}},
		{name: "cut, resumed", srv: serverOpts{cut: 1 << 20}, wantRanges: []string{"", "bytes=1048576-"}},
		{name: "stalled, cut after the idle timeout, resumed", srv: serverOpts{cut: 5000, stall: true}, wantRanges: []string{"", "bytes=5000-"}},
		{name: "part from a power loss", partial: 2 << 20, wantRanges: []string{"bytes=2097152-"}},
		{name: "whole part from a power loss", partial: len(body), wantRanges: []string{fmt.Sprintf("bytes=%d-", len(body))}},
		{name: "server without ranges", srv: serverOpts{noRanges: true, cut: 1 << 20}, wantRanges: []string{"", "bytes=1048576-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &imageServer{body: body, serverOpts: tc.srv}
			srv := httptest.NewServer(s)
			defer srv.Close()
			path := filepath.Join(t.TempDir(), "img.raw")
			if tc.partial > 0 {
				os.WriteFile(path+".part", body[:tc.partial], 0o600)
			}
			if err := download(t, srv, path, sum); err != nil {
				t.Fatal(err)
			}
			checkFile(t, path, body)
			if got := s.rangesSeen(); fmt.Sprint(got) != fmt.Sprint(tc.wantRanges) {
				t.Errorf("requests' ranges %q, want %q", got, tc.wantRanges)
			}
		})
	}
}

// TestDownloadRefused: a digest that does not match leaves no file (after
// one more try from the start: a stale part may have been the cause), a
// missing image or a bad pin fail at once.
func TestDownloadRefused(t *testing.T) {
	body, sum := image(1 << 20)
	s := &imageServer{body: body}
	srv := httptest.NewServer(s)
	defer srv.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "img.raw")
	wrong := strings.Repeat("0", 64)
	if err := download(t, srv, path, wrong); err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("wrong digest: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an image with the wrong digest is at %s (%v)", path, err)
	}
	if got := len(s.rangesSeen()); got != 2 {
		t.Errorf("%d requests for a wrong digest, want 2 (the second from the start)", got)
	}
	// A stale part of something else: started again, and right.
	os.WriteFile(path+".part", []byte("something else entirely"), 0o600)
	if err := download(t, srv, path, sum); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, body)
	for _, tc := range []struct{ url, sum, want string }{
		{srv.URL + "/missing", sum, "HTTP 404"},
		{srv.URL + "/img", "abc", "want 64 hex digits"},
		{"ftp://x/img", sum, `scheme "ftp"`},
	} {
		err := Download(context.Background(), tc.url, filepath.Join(dir, "other.raw"), Options{SHA256: tc.sum, MinWait: time.Millisecond}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.url, err, tc.want)
		}
	}
	// Over the limit.
	err := Download(context.Background(), srv.URL+"/img", filepath.Join(dir, "big.raw"), Options{SHA256: sum, MaxBytes: 1000}, nil)
	if err == nil || !strings.Contains(err.Error(), "more than the limit of 1000") {
		t.Errorf("over the limit: %v", err)
	}
}

// TestDownloadSparse: blocks of zeros are not written, so an image that is
// mostly zeros takes little room; its bytes are all there.
func TestDownloadSparse(t *testing.T) {
	body := make([]byte, 16<<20)
	copy(body[5000:], "data across a block boundary")
	copy(body[len(body)-3:], "end")
	sum := sha256.Sum256(body)
	srv := httptest.NewServer(&imageServer{body: body})
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "img.raw")
	if err := download(t, srv, path, hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, body)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 64<<10 {
		t.Errorf("a 16 MiB image of 2 small pieces of data uses %d bytes", used)
	}
}

func TestWriteSparse(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 40000)
	for _, at := range []int{0, 4095, 4096, 9000, 20480, 39999} {
		want[at] = byte(at)
	}
	// Written in uneven pieces at uneven offsets.
	for off := 0; off < len(want); {
		n := min(7777, len(want)-off)
		if err := writeSparse(f, want[off:off+n], int64(off)); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	f.Truncate(int64(len(want)))
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, want) {
		t.Error("what writeSparse wrote reads back differently")
	}
}

func TestDownloadProgress(t *testing.T) {
	body, sum := image(1 << 20)
	srv := httptest.NewServer(&imageServer{body: body})
	defer srv.Close()
	var last, total int64
	err := Download(context.Background(), srv.URL+"/img", filepath.Join(t.TempDir(), "img.raw"), Options{SHA256: sum}, func(d, n int64) { last, total = d, n })
	if err != nil || last != int64(len(body)) || total != int64(len(body)) {
		t.Errorf("progress ended at %d of %d (%v), want %d of %d", last, total, err, len(body), len(body))
	}
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-9/*", "bytes 5-/10", "bytes -1-2/3", "bytes 9-1/5", "bits 0-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, size, ok := contentRange(s)
		if ok && (start < 0 || (size >= 0 && size < start) || size < -1) {
			t.Fatalf("%q: start %d size %d", s, start, size)
		}
	})
}
