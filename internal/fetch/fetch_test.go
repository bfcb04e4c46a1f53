package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fast retries for the tests.
func fast(o Options) Options {
	o.MinWait, o.MaxWait = time.Millisecond, 4*time.Millisecond
	return o
}

func TestGetRetriesTransient(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("vms: []\n"))
	}))
	defer srv.Close()
	var retries []string
	o := fast(Options{Retry: func(n int, err error, wait time.Duration) { retries = append(retries, err.Error()) }})
	body, err := Get(context.Background(), srv.URL+"/c.yaml", o)
	if err != nil || string(body) != "vms: []\n" {
		t.Fatalf("got %q, %v", body, err)
	}
	if len(retries) != 2 || retries[0] != "HTTP 503 Service Unavailable" {
		t.Errorf("retries %q, want two 503s", retries)
	}
}

func TestGetRetriesUntilServerListens(t *testing.T) {
	// A port nothing listens on yet: connection refused, retried, until
	// the server comes up there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var tries atomic.Int32
	o := fast(Options{Retry: func(n int, err error, wait time.Duration) {
		if tries.Add(1) == 3 {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("up")) }))
		}
	}})
	body, err := Get(context.Background(), "http://"+addr+"/", o)
	if err != nil || string(body) != "up" {
		t.Fatalf("got %q, %v", body, err)
	}
}

func TestGetPermanent(t *testing.T) {
	big := strings.Repeat("x", 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/missing":
			http.NotFound(w, r)
		case "/big":
			w.Write([]byte(big))
		case "/chunked":
			w.(http.Flusher).Flush() // no Content-Length: the limit counts the bytes
			w.Write([]byte(big))
		default:
			w.Write([]byte("hello"))
		}
	}))
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsSrv.Close()
	sum := sha256.Sum256([]byte("hello"))
	other := sha256.Sum256([]byte("other"))
	for _, tc := range []struct {
		name, url string
		o         Options
		want      string
	}{
		{"404", srv.URL + "/missing", Options{}, "/missing: HTTP 404 Not Found"},
		{"too big", srv.URL + "/big", Options{MaxBytes: 64}, "100 bytes, more than the limit of 64"},
		{"too big, no length", srv.URL + "/chunked", Options{MaxBytes: 64}, "more than the limit of 64 bytes"},
		{"pin mismatch", srv.URL + "/", Options{SHA256: hex.EncodeToString(other[:])}, "sha256 " + hex.EncodeToString(sum[:]) + ", pinned " + hex.EncodeToString(other[:])},
		{"bad pin", srv.URL + "/", Options{SHA256: "abc"}, `sha256 "abc": want 64 hex digits`},
		{"untrusted certificate", tlsSrv.URL + "/", Options{}, "certificate signed by unknown authority"},
		{"https on http", "https://" + srv.Listener.Addr().String() + "/", Options{}, "server gave HTTP response to HTTPS client"},
		{"scheme", "ftp://x/c.yaml", Options{}, `scheme "ftp": want http or https`},
		{"no host", "http:///c.yaml", Options{}, "no host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			retried := false
			o := fast(tc.o)
			o.Retry = func(int, error, time.Duration) { retried = true }
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := Get(ctx, tc.url, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if retried {
				t.Errorf("retried a permanent failure: %v", err)
			}
		})
	}
	body, err := Get(context.Background(), srv.URL+"/", Options{SHA256: hex.EncodeToString(sum[:])})
	if err != nil || string(body) != "hello" {
		t.Errorf("pinned fetch: %q, %v", body, err)
	}
}

func TestGetGivesUp(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Get(ctx, srv.URL+"/", fast(Options{}))
	if err == nil || !strings.Contains(err.Error(), "HTTP 502 Bad Gateway (gave up after ") {
		t.Errorf("error %v, want the last 502 and the attempts", err)
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"mac": "52:54:00:12:34:56", "mac:hexhyp": "52-54-00-12-34-56", "hostname": "../etc/x y"}
	for _, tc := range []struct{ in, want, err string }{
		{"http://s/${mac:hexhyp}.yaml", "http://s/52-54-00-12-34-56.yaml", ""},
		{"http://s/c/${mac}/${mac}", "http://s/c/52:54:00:12:34:56/52:54:00:12:34:56", ""},
		{"http://s/${hostname}.yaml", "http://s/..%2Fetc%2Fx%20y.yaml", ""},
		{"http://s/plain.yaml", "http://s/plain.yaml", ""},
		{"http://s/${uuid}", "", "${uuid}: unknown (known: ${hostname}, ${mac}, ${mac:hexhyp})"},
		{"http://s/${mac", "", "${ without }"},
	} {
		got, err := Expand(tc.in, vars)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"http://s/${mac}", "${", "}${}", "${a}${b}", "$${mac}}"} {
		f.Add(s)
	}
	vars := map[string]string{"mac": "52:54:00:12:34:56", "a": "x/y"}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := Expand(s, vars)
		if err == nil && strings.Contains(out, "/y") && !strings.Contains(s, "/y") {
			t.Errorf("%q expanded to %q: a value's slash was not escaped", s, out)
		}
	})
}
