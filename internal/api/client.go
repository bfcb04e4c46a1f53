package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// SocketPath is where PID 1 serves the API to root on the appliance.
const SocketPath = "/run/hyperroot/api.sock"

// Client speaks the API.
type Client struct {
	http *http.Client
	base string
}

// NewUnixClient is a client of the API served on the unix socket path.
func NewUnixClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	// The host part is not used: the socket is.
	return &Client{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, base: "http://hyperroot"}
}

// maxReply bounds what the client reads of an answer.
const maxReply = 16 << 20

// Do sends method to path (/v1/...) and decodes a successful answer into
// out (unless nil); a failed one is an error with the server's message.
func (c *Client) Do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e Error
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}
