package fetch

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Download fetches rawURL into the file path, which appears only whole and
// verified. The bytes go to path + ".part" first, synced every SyncEvery;
// a later Download (after a failed attempt, or after a power loss) goes on
// from where that file ends with an HTTP range request, and a server that ignores ranges sends
// it all again. Once the whole body is there its SHA-256 must be
// o.SHA256, which is required: an image the appliance boots is pinned.
// Only then is the file synced and renamed to path. Transient failures
// are retried as Get retries them, each attempt resuming; an attempt
// that receives nothing for o.Idle (default IdleTimeout) is cut and retried. progress, if
// not nil, hears of the bytes there so far and the total (-1 when the
// server does not say) about once a second, and after each sync.
func Download(ctx context.Context, rawURL, path string, o Options, progress func(done, total int64)) error {
	u, err := checkURL(rawURL)
	if err != nil {
		return err
	}
	want, err := hex.DecodeString(o.SHA256)
	if err != nil || len(want) != sha256.Size {
		return fmt.Errorf("sha256 %q: want 64 hex digits", o.SHA256)
	}
	client := o.Client
	if client == nil {
		// No overall timeout: an image may take long. Headers must come
		// within AttemptTimeout, and the body must keep coming.
		client = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: AttemptTimeout}}
	}
	part := path + ".part"
	restarted := false
	return retry(ctx, rawURL, o, func() error {
		err := downloadOnce(ctx, client, u.String(), part, o, progress)
		if err == nil {
			err = verify(part, want)
			if errors.Is(err, errDigest) && !restarted {
				// A part left by another image at the same place, or
				// bytes the server changed under a resumed download:
				// once more from the start.
				restarted = true
				os.Remove(part)
				err = fmt.Errorf("%w: downloading it again from the start", err)
			} else if err != nil {
				if errors.Is(err, errDigest) {
					os.Remove(part) // twice wrong: nothing there to resume
				}
				err = permanentError{err}
			}
		}
		if err != nil {
			return err
		}
		return os.Rename(part, path)
	})
}

// IdleTimeout is how long a download may receive nothing before the
// attempt is cut and retried.
const IdleTimeout = 30 * time.Second

var errDigest = errors.New("sha256 mismatch")

// verify checks the digest of the file at path and syncs it.
func verify(path string, want []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return fmt.Errorf("%w: got %x, pinned %x", errDigest, got, want)
	}
	return f.Sync()
}

// downloadOnce is one attempt: it appends to part what the server sends
// from part's end on.
func downloadOnce(ctx context.Context, client *http.Client, u, part string, o Options, progress func(done, total int64)) error {
	max, idleAfter := o.MaxBytes, cmp.Or(o.Idle, IdleTimeout)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return permanentError{err}
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return permanentError{err}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return permanentError{err}
	}
	req.Header.Set("User-Agent", "hyperroot")
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := client.Do(req)
	if err != nil {
		return unwrapURL(err)
	}
	defer resp.Body.Close()
	total := int64(-1)
	switch {
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		return nil // nothing after part's end: it is whole, or Download's digest says otherwise
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, size, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			return permanentError{fmt.Errorf("partial content %q for a request from byte %d", resp.Header.Get("Content-Range"), have)}
		}
		total = size
	case resp.StatusCode == http.StatusOK:
		// All of it, from the start.
		if err := f.Truncate(0); err != nil {
			return permanentError{err}
		}
		have = 0
		if resp.ContentLength >= 0 {
			total = resp.ContentLength
		}
	default:
		return statusError{resp.StatusCode}
	}
	if max > 0 && total > max {
		return permanentError{fmt.Errorf("%d bytes, more than the limit of %d", total, max)}
	}
	idle := time.AfterFunc(idleAfter, func() { cancel(fmt.Errorf("nothing received for %s", idleAfter)) })
	defer idle.Stop()
	buf := make([]byte, 1<<20)
	last := time.Now()
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			idle.Reset(idleAfter)
			if err := writeSparse(f, buf[:n], have); err != nil {
				return permanentError{err}
			}
			have += int64(n)
			synced := have/SyncEvery != (have-int64(n))/SyncEvery
			if synced {
				// A checkpoint a power loss cannot take back.
				if err := f.Sync(); err != nil {
					return permanentError{err}
				}
			}
			if max > 0 && have > max {
				return permanentError{fmt.Errorf("more than the limit of %d bytes", max)}
			}
			if progress != nil && (synced || time.Since(last) >= time.Second) {
				last = time.Now()
				progress(have, total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return cause
			}
			return unwrapURL(rerr)
		}
	}
	if total >= 0 && have != total {
		return fmt.Errorf("ended at byte %d of %d", have, total)
	}
	// The zeros at the end, which writeSparse left unwritten.
	if err := f.Truncate(have); err != nil {
		return permanentError{err}
	}
	if progress != nil {
		progress(have, total)
	}
	return nil
}

// SyncEvery is how much a download writes between syncs of its part: at
// most this much is lost to a power failure, and fetched again. Progress
// is reported at each sync too.
const SyncEvery = 16 << 20

// sparseBlock is the unit writeSparse looks at: a filesystem block.
const sparseBlock = 4096

// writeSparse writes b at off in f, leaving out the blocks of zeros it
// holds, which stay holes: a raw disk image is mostly zeros, and its
// copies for VMs keep the holes (cloneOrCopy in PID 1). A file cut short
// by a power loss then ends at its last data: resuming from there fetches
// the zeros again, which is only wasteful.
func writeSparse(f *os.File, b []byte, off int64) error {
	run, runOff := 0, off // a run of blocks with data, written at once
	flush := func() error {
		if run == 0 {
			return nil
		}
		_, err := f.WriteAt(b[:run], runOff)
		return err
	}
	for i := 0; i < len(b); {
		// Up to the next block boundary of the file.
		n := min(len(b)-i, sparseBlock-int((off+int64(i))%sparseBlock))
		if allZero(b[i : i+n]) {
			if err := flush(); err != nil {
				return err
			}
			b, off, i, run = b[i+n:], off+int64(i+n), 0, 0
			runOff = off
			continue
		}
		i += n
		run = i
	}
	return flush()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// contentRange parses "bytes <start>-<end>/<size>" (size may be "*": -1).
func contentRange(s string) (start, size int64, ok bool) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, false
	}
	rng, sz, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false
	}
	first, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	size = -1
	if sz != "*" {
		if size, err = strconv.ParseInt(sz, 10, 64); err != nil || size < start {
			return 0, 0, false
		}
	}
	return start, size, true
}

// checkURL parses rawURL, which must be http(s) with a host.
func checkURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%s: scheme %q: want http or https", rawURL, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%s: no host", rawURL)
	}
	return u, nil
}
