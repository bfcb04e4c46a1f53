package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Token is a bearer token the network listener accepts, known by its
// SHA-256 only, and whose it is.
type Token struct {
	Name   string
	SHA256 [32]byte
}

// Request is what an audit hears of one request on the network listener.
type Request struct {
	Who    string // the token's name; "" when refused
	Remote string // the client's address
	Method string
	Path   string
	Code   int // the HTTP status answered
}

// RequireToken serves h to requests that carry one of tokens as
// "Authorization: Bearer <token>"; every other request is answered 401
// before h sees it, so nothing happens on its behalf. audit, if not nil,
// hears of every refused request and of every accepted one that is not a
// GET (the changes, with who made them).
func RequireToken(tokens []Token, h http.Handler, audit func(Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, ok := bearer(tokens, r.Header.Get("Authorization"))
		rec := Request{Who: who, Remote: r.RemoteAddr, Method: r.Method, Path: r.URL.Path}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hyperroot"`)
			reply(w, http.StatusUnauthorized, Error{"a valid bearer token is required (Authorization: Bearer <token>)"})
			if audit != nil {
				rec.Code = http.StatusUnauthorized
				audit(rec)
			}
			return
		}
		if r.Method == http.MethodGet || audit == nil {
			h.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		rec.Code = sw.code
		audit(rec)
	})
}

// bearer finds the token of header among tokens. Every token is compared,
// in constant time, so the answer's timing says nothing of how close a
// guess came.
func bearer(tokens []Token, header string) (name string, ok bool) {
	scheme, tok, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(tok))
	for _, t := range tokens {
		if subtle.ConstantTimeCompare(sum[:], t.SHA256[:]) == 1 {
			name, ok = t.Name, true
		}
	}
	return name, ok
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}
