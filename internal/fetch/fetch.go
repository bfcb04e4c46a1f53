// Package fetch gets files over HTTP(S) for the appliance: its
// configuration at boot, named by a URL on the kernel command line (Get),
// and the disk images VMs are made from (Download, resumable). A host
// that PXE-boots comes up together with the network it fetches from, so a
// failure that may pass (no route yet, a refused connection, a server
// error) is retried with back-off; one that will not (404, a TLS
// certificate the appliance does not trust, a file too big or with the
// wrong digest) ends the fetch at once, with an error that says which.
package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Options tune Get. The zero value fetches at most DefaultMaxBytes,
// unpinned, for as long as ctx allows.
type Options struct {
	// MaxBytes bounds the body; larger is an error (0: DefaultMaxBytes
	// for Get, no bound for Download).
	MaxBytes int64
	// SHA256, if set, is the body's digest in hex: any other body is
	// refused (a pin: the file cannot change without the command line).
	SHA256 string
	// Client makes the requests (nil: one with AttemptTimeout per
	// request and no proxy).
	Client *http.Client
	// Retry logs a failed attempt that will be retried, and the wait.
	Retry func(attempt int, err error, wait time.Duration)
	// MinWait and MaxWait bound the back-off between attempts (0: 1 s
	// and 30 s).
	MinWait, MaxWait time.Duration
	// Idle bounds how long a Download may receive nothing (0:
	// IdleTimeout).
	Idle time.Duration
}

// DefaultMaxBytes bounds a configuration: far above any real one, far
// below what would hurt PID 1.
const DefaultMaxBytes = 1 << 20

// AttemptTimeout bounds one request, connection to last byte.
const AttemptTimeout = 30 * time.Second

// Get fetches rawURL (http or https), retrying transient failures until
// ctx ends. The error of a failed fetch is the last attempt's.
func Get(ctx context.Context, rawURL string, o Options) ([]byte, error) {
	u, err := checkURL(rawURL)
	if err != nil {
		return nil, err
	}
	var want []byte
	if o.SHA256 != "" {
		if want, err = hex.DecodeString(o.SHA256); err != nil || len(want) != sha256.Size {
			return nil, fmt.Errorf("sha256 %q: want 64 hex digits", o.SHA256)
		}
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	client := o.Client
	if client == nil {
		client = &http.Client{Timeout: AttemptTimeout, Transport: &http.Transport{}}
	}
	var body []byte
	err = retry(ctx, rawURL, o, func() error {
		b, err := get(ctx, client, u.String(), o.MaxBytes)
		if err != nil {
			return err
		}
		if want != nil {
			if got := sha256.Sum256(b); !bytes.Equal(got[:], want) {
				return permanentError{fmt.Errorf("sha256 %x, pinned %x", got, want)}
			}
		}
		body = b
		return nil
	})
	return body, err
}

// retry runs attempt until it succeeds, fails for good (not transient), or
// ctx ends, waiting between attempts with back-off (o's MinWait to
// MaxWait) and telling o.Retry of each retry. Its error, naming rawURL,
// is the last attempt's.
func retry(ctx context.Context, rawURL string, o Options, attempt func() error) error {
	wait, maxWait := o.MinWait, o.MaxWait
	if wait <= 0 {
		wait = time.Second
	}
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	var last error // the last failure of an attempt ctx did not cut short
	gaveUp := func(n int) error {
		if last == nil {
			last = ctx.Err()
		}
		return fmt.Errorf("%s: %w (gave up after %d attempts)", rawURL, last, n)
	}
	for n := 1; ; n++ {
		err := attempt()
		if err == nil {
			return nil
		}
		if !transient(err) {
			return fmt.Errorf("%s: %w", rawURL, err)
		}
		if ctx.Err() != nil {
			return gaveUp(n - 1)
		}
		last = err
		if o.Retry != nil {
			o.Retry(n, err, wait)
		}
		select {
		case <-ctx.Done():
			return gaveUp(n)
		case <-time.After(wait):
		}
		wait = min(2*wait, maxWait)
	}
}

// statusError is an HTTP answer other than 200.
type statusError struct{ code int }

func (e statusError) Error() string {
	return fmt.Sprintf("HTTP %d %s", e.code, http.StatusText(e.code))
}

// permanentError is a failure a retry cannot mend.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func get(ctx context.Context, client *http.Client, u string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, permanentError{err}
	}
	req.Header.Set("User-Agent", "hyperroot")
	resp, err := client.Do(req)
	if err != nil {
		return nil, unwrapURL(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError{resp.StatusCode}
	}
	if resp.ContentLength > max {
		return nil, permanentError{fmt.Errorf("%d bytes, more than the limit of %d", resp.ContentLength, max)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, unwrapURL(err)
	}
	if int64(len(body)) > max {
		return nil, permanentError{fmt.Errorf("more than the limit of %d bytes", max)}
	}
	return body, nil
}

// unwrapURL drops url.Error's "Get <url>:" prefix: Get names the URL once.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// transient says whether err may pass: a network error other than a
// certificate or name the server does not vouch for, a timeout, or an
// HTTP status that means "not now" (408, 425, 429, 5xx).
func transient(err error) bool {
	var pe permanentError
	if errors.As(err, &pe) {
		return false
	}
	var se statusError
	if errors.As(err, &se) {
		return se.code == http.StatusRequestTimeout || se.code == http.StatusTooEarly ||
			se.code == http.StatusTooManyRequests || se.code >= 500
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return false
	}
	var recordErr tls.RecordHeaderError
	if errors.As(err, &recordErr) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false // an HTTPS URL on a plain HTTP server (net/http says so only in words)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		// A name that does not exist now may once the resolver is
		// reachable; one the server says does not exist will not.
		return !dnsErr.IsNotFound
	}
	return true
}

// Expand replaces each ${name} in s by vars[name], escaped as a URL path
// segment (a value may come from the network: a DHCP server's host name);
// an unknown name is an error, so that a typo does not fetch a wrong URL.
// The names are iPXE's spelling, so one URL template serves both.
func Expand(s string, vars map[string]string) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("%q: ${ without }", s)
		}
		name := s[i+2 : i+j]
		v, ok := vars[name]
		if !ok {
			return "", fmt.Errorf("${%s}: unknown (known: %s)", name, knownNames(vars))
		}
		b.WriteString(s[:i])
		b.WriteString(url.PathEscape(v))
		s = s[i+j+1:]
	}
}

func knownNames(vars map[string]string) string {
	names := slices.Sorted(maps.Keys(vars))
	for i, n := range names {
		names[i] = "${" + n + "}"
	}
	return strings.Join(names, ", ")
}
