// Package api is the appliance's management API: HTTP with JSON bodies,
// served by PID 1 (on a root-only unix socket for now) and spoken by
// `hyperroot ctl`. The resources are the ones docs/API.md lists; each
// operation is a call on a Backend, so the handlers hold no state of their
// own and the same operations stay available on the console.
//
// Everything a client sends is untrusted: names are checked against the
// configuration's rule before any lookup, bodies are bounded, and an
// error is a JSON object with a message, never a partial change.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/hyperroot/hyperroot/init/config"
)

// VM is one configured VM as the API shows it.
type VM struct {
	Name    string `json:"name"`
	State   string `json:"state"` // StateRunning or StateStopped
	PID     int    `json:"pid,omitempty"`
	CPUs    int    `json:"cpus"`
	Memory  uint64 `json:"memory_bytes"`
	Restart string `json:"restart"`
}

// VM states.
const (
	StateRunning = "running"
	StateStopped = "stopped"
)

// Host is what the appliance is and has.
type Host struct {
	Version string `json:"version"`
	Kernel  string `json:"kernel"`
	CPUs    int    `json:"cpus"`
	Memory  uint64 `json:"memory_bytes"`
	KVM     string `json:"kvm"` // the console's kvm line, or why KVM is unusable
}

// Backend does what the API asks. Its errors say what is wrong; ErrNotFound
// and ErrConflict (wrapped) choose the HTTP status.
type Backend interface {
	Host() Host
	VMs() []VM
	VM(name string) (VM, error)
	Start(name string) error
	Stop(name string) error
	Restart(name string) error
	// QoS reports a VM's limits and what it uses; with a qos (a mapping
	// as the configuration's qos:, in JSON or YAML) it first replaces
	// the VM's limits, at once if it runs. A qos that does not decode
	// is an ErrInvalid.
	QoS(name, qos string) (string, error)
}

// Errors a Backend wraps to say which kind of failure it is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict") // the resource is not in a state that allows it
	ErrInvalid  = errors.New("invalid")  // what the client sent does not decode or is out of range
)

// QoS is a VM's limits as the API shows them: the console's qos line.
type QoS struct {
	QoS string `json:"qos"`
}

// Error is the body of every failed request.
type Error struct {
	Error string `json:"error"`
}

// maxBody bounds a request body: the lifecycle operations take none, a
// VM's qos a few lines.
const maxBody = 4 << 10

// Handler serves the API for b.
func Handler(b Backend) http.Handler {
	actions := map[string]func(string) error{"start": b.Start, "stop": b.Stop, "restart": b.Restart}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/host", only("GET", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.Host())
	}))
	mux.HandleFunc("/v1/vms", only("GET", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.VMs())
	}))
	mux.HandleFunc("/v1/vms/{name}", only("GET", withVM(func(w http.ResponseWriter, r *http.Request, name string) {
		vm, err := b.VM(name)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, vm)
	})))
	mux.HandleFunc("/v1/vms/{name}/qos", withVM(func(w http.ResponseWriter, r *http.Request, name string) {
		var text string
		switch r.Method {
		case http.MethodGet:
		case http.MethodPut:
			body, ok := readBody(w, r)
			if !ok {
				return
			}
			if text = string(body); text == "" {
				reply(w, http.StatusBadRequest, Error{"PUT qos: want the VM's qos as a JSON object, such as {\"cpu\": {\"max\": \"50%\"}}"})
				return
			}
		default:
			w.Header().Set("Allow", "GET, PUT")
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only GET or PUT", r.Method, r.URL.Path)})
			return
		}
		line, err := b.QoS(name, text)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, QoS{line})
	}))
	mux.HandleFunc("/v1/vms/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		do, ok := actions[r.PathValue("action")]
		if !ok {
			notFound(w, r)
			return
		}
		only("POST", withVM(func(w http.ResponseWriter, r *http.Request, name string) {
			if _, ok := readBody(w, r); !ok {
				return
			}
			if err := do(name); err != nil {
				fail(w, err)
				return
			}
			vm, err := b.VM(name)
			if err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, vm)
		}))(w, r)
	})
	mux.HandleFunc("/", notFound)
	return mux
}

// readBody reads a request's body, up to maxBody; a longer one is
// answered 413 and ok is false.
func readBody(w http.ResponseWriter, r *http.Request) (body []byte, ok bool) {
	if r.Body == nil {
		return nil, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	switch {
	case len(body) > maxBody:
		reply(w, http.StatusRequestEntityTooLarge, Error{fmt.Sprintf("request body over %d bytes", maxBody)})
		return nil, false
	case err != nil:
		reply(w, http.StatusBadRequest, Error{fmt.Sprintf("request body: %v", err)})
		return nil, false
	}
	return body, true
}

func notFound(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusNotFound, Error{fmt.Sprintf("no resource %s %s (see docs/API.md)", r.Method, r.URL.Path)})
}

// only serves method on h; any other is a 405 that says which is allowed.
func only(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only %s", r.Method, r.URL.Path, method)})
			return
		}
		h(w, r)
	}
}

// withVM checks the {name} of the path before h sees it.
func withVM(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		// The configuration's rule: no path separators, no "..", no
		// control characters reach a lookup.
		if !config.ValidName(name) {
			reply(w, http.StatusBadRequest, Error{fmt.Sprintf("vm name %q: want 1-32 lower-case letters, digits and dashes", name)})
			return
		}
		h(w, r, name)
	}
}

func fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	}
	reply(w, code, Error{err.Error()})
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
