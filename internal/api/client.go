package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// SocketPath is where PID 1 serves the API to root on the appliance.
const SocketPath = "/run/hyperroot/api.sock"

// Client speaks the API.
type Client struct {
	http  *http.Client
	tr    http.RoundTripper // http's, for streams, which have no deadline
	base  string
	token string
}

// NewUnixClient is a client of the API served on the unix socket path.
func NewUnixClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	// The host part is not used: the socket is.
	return &Client{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, tr: tr, base: "http://hyperroot"}
}

// NewClient is a client of the API at base (https://host:port), with a
// bearer token. With a fingerprint ("sha256:<hex>", as the appliance's
// console prints it) the server's certificate must be that one, whatever
// its names and issuer; without one it must be valid for the system's
// roots.
func NewClient(base, token, fingerprint string) (*Client, error) {
	if !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("api address %q: want https://host:port (the network listener speaks TLS only)", base)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if fingerprint != "" {
		pin, err := parseFingerprint(fingerprint)
		if err != nil {
			return nil, err
		}
		// The pin replaces the chain's verification, not the
		// handshake's: the server still proves it holds the key.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return fmt.Errorf("the server's certificate is %s, not the pinned %s", Fingerprint(cs.PeerCertificates[0].Raw), fingerprint)
			}
			return nil
		}
	}
	tr := &http.Transport{TLSClientConfig: cfg, TLSHandshakeTimeout: 30 * time.Second}
	return &Client{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, tr: tr, base: strings.TrimSuffix(base, "/"), token: token}, nil
}

func parseFingerprint(s string) ([]byte, error) {
	h, ok := strings.CutPrefix(s, "sha256:")
	b, err := hex.DecodeString(strings.ReplaceAll(h, ":", ""))
	if !ok || err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("fingerprint %q: want sha256: and 64 hex digits, as the appliance's console prints it", s)
	}
	return b, nil
}

// maxReply bounds what the client reads of an answer.
const maxReply = 16 << 20

// Do sends method to path (/v1/...), with body (JSON) unless nil, and
// decodes a successful answer into out (unless nil); a failed one is an
// error with the server's message.
func (c *Client) Do(ctx context.Context, method, path string, body []byte, out any) error {
	data, err := c.send(ctx, method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(data, out)
}

// Get fetches path and returns a successful answer as it came: /metrics,
// which is Prometheus's text, not JSON.
func (c *Client) Get(ctx context.Context, path string) ([]byte, error) {
	return c.send(ctx, http.MethodGet, path, nil)
}

// Follow fetches path as a stream (a console): its body, to be read until
// the caller has enough or ctx ends, and closed.
func (c *Client) Follow(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, &http.Client{Transport: c.tr}, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, replyError(resp)
	}
	return resp.Body, nil
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return hc.Do(req)
}

// replyError is the error a failed answer carries.
func replyError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	var e Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
	}
	return fmt.Errorf("HTTP %d", resp.StatusCode)
}

func (c *Client) send(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	resp, err := c.do(ctx, c.http, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, replyError(resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxReply))
}
