package api

import (
	"embed"
	"net/http"
)

// The status page: plain HTML, CSS and JavaScript (no framework) that
// call the API from the browser with the token typed into the page. The
// files hold no data, so they are served without a token; the browser
// may run nothing but them (Content-Security-Policy).

//go:embed status/index.html status/status.js status/status.css status/favicon.svg
var statusFiles embed.FS

// statusFile is one file of the page, and the pattern it is served at.
type statusFile struct{ pattern, file, typ string }

var statusPage = []statusFile{
	{"GET /{$}", "index.html", "text/html; charset=utf-8"},
	{"GET /status.js", "status.js", "text/javascript; charset=utf-8"},
	{"GET /status.css", "status.css", "text/css; charset=utf-8"},
	{"GET /favicon.ico", "favicon.svg", "image/svg+xml"}, // asked for by every browser, token or not
}

// StatusPaths are the patterns StatusPage serves, for a listener that
// routes them past its token check.
func StatusPaths() []string {
	var p []string
	for _, f := range statusPage {
		p = append(p, f.pattern)
	}
	return p
}

// StatusPage serves the status page: GET / and its files.
func StatusPage() http.Handler {
	mux := http.NewServeMux()
	for _, f := range statusPage {
		data, err := statusFiles.ReadFile("status/" + f.file)
		if err != nil {
			panic(err) // embedded: cannot happen
		}
		mux.HandleFunc(f.pattern, func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", f.typ)
			h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("Cache-Control", "no-cache")
			w.Write(data)
		})
	}
	return mux
}
