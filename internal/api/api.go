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
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

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
	// What its running VMM has used (its cgroup): CPU time since its
	// start, and memory now (guest RAM included).
	CPUSeconds float64  `json:"cpu_seconds,omitempty"`
	MemoryUsed uint64   `json:"memory_used_bytes,omitempty"`
	Disks      []Disk   `json:"disks,omitempty"`
	NICs       []NIC    `json:"nics,omitempty"`
	Devices    []Device `json:"devices,omitempty"`
}

// Device is one of a VM's passed-through host PCI devices.
type Device struct {
	Device  string `json:"device"`            // as configured: an address, or "VF <i> of <pf>"
	Address string `json:"address,omitempty"` // its host address, where it exists
	// State is DeviceAssigned while the VM has it (bound to vfio-pci for
	// its VMM, also between restarts), else DeviceFree.
	State  string `json:"state"`
	Driver string `json:"driver,omitempty"` // the host driver it has now
}

// Device states.
const (
	DeviceAssigned = "assigned"
	DeviceFree     = "free"
)

// Disk is one of a VM's disks.
type Disk struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

// NIC is one of a VM's network interfaces: a port of the switch.
type NIC struct {
	Network string `json:"network"`
	MAC     string `json:"mac"`
	Port    string `json:"port"`
}

// Lease is a DHCP lease the switch granted.
type Lease struct {
	Network  string `json:"network"`
	IP       string `json:"ip"`
	MAC      string `json:"mac"`
	VM       string `json:"vm,omitempty"` // the VM whose NIC has that MAC, if any
	Hostname string `json:"hostname,omitempty"`
	Expires  string `json:"expires"` // RFC 3339
}

// Network is one of the switch's networks: its addressing, the VM ports
// on it and how many leases are in force.
type Network struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	// DHCP is the range the switch leases from, "from-to"; "" without.
	DHCP   string   `json:"dhcp,omitempty"`
	VLAN   uint16   `json:"vlan,omitempty"`
	Uplink string   `json:"uplink,omitempty"`
	MTU    int      `json:"mtu"`
	Ports  []string `json:"ports"` // the VMs' NICs on it, as port names (<vm>.<index>)
	Leases int      `json:"leases"`
}

// Port is a switch port's counters, as the switch last reported them
// (every 10 s): rx is what it delivered, tx what it was sent.
type Port struct {
	Name      string            `json:"name"`
	RxPackets uint64            `json:"rx_packets"`
	RxBytes   uint64            `json:"rx_bytes"`
	TxPackets uint64            `json:"tx_packets"`
	TxBytes   uint64            `json:"tx_bytes"`
	Drops     map[string]uint64 `json:"drops,omitempty"` // by reason, those not zero
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
	// Ports are the switch's ports, by name; none without a switch.
	Ports() []Port
	// Leases are the switch's DHCP leases in force, by network and
	// address.
	Leases() ([]Lease, error)
	// Networks are the switch's networks, as configured.
	Networks() ([]Network, error)
	// Capture starts a live capture of a switch port's frames;
	// ErrNotFound for a port the switch does not have, ErrBusy when it
	// streams too many captures already.
	Capture(port string) (Capture, error)
	VM(name string) (VM, error)
	Start(name string) error
	Stop(name string) error
	Restart(name string) error
	// QoS reports a VM's limits and what it uses; with a qos (a mapping
	// as the configuration's qos:, in JSON or YAML) it first replaces
	// the VM's limits, at once if it runs. A qos that does not decode
	// is an ErrInvalid.
	QoS(name, qos string) (string, error)
	// Console follows a VM's serial console from its last tail lines;
	// ErrBusy when it has too many readers.
	Console(name string, tail int) (*Stream, error)
	// Send types lines on a VM's serial console; ErrConflict when it
	// does not run.
	Send(name string, lines []string) error
	// CreateVM adds a VM (its mapping, as an item of the configuration's
	// vms:, in JSON or YAML) to the configuration in force and starts it;
	// ErrInvalid when it does not decode, ErrConflict when its name is
	// taken or it does not start (it is then not added).
	CreateVM(text string) (VM, error)
	// DeleteVM stops a VM and drops it from the configuration in force.
	DeleteVM(name string) error
	// Config is the configuration in force, as YAML.
	Config() string
	// PutConfig puts a configuration in force: ErrInvalid when it does
	// not decode, ErrConflict when it changes what is made at boot only.
	PutConfig(text string) (ConfigResult, error)
}

// ConfigResult says what putting a configuration did, VM by VM.
type ConfigResult struct {
	Started   []string          `json:"started"`
	Stopped   []string          `json:"stopped"`
	Restarted []string          `json:"restarted"`
	QoS       []string          `json:"qos"`
	NICLimits []string          `json:"nic_limits"` // VMs whose NICs' limits changed live, at the switch
	Unchanged []string          `json:"unchanged"`
	Failed    map[string]string `json:"failed,omitempty"` // VMs whose stop, start or qos failed, and why
}

// String is the result as one line: "started a,b stopped c ...".
func (r ConfigResult) String() string {
	var b strings.Builder
	for _, part := range []struct {
		what  string
		names []string
	}{{"started", r.Started}, {"stopped", r.Stopped}, {"restarted", r.Restarted}, {"qos", r.QoS}, {"nic-limits", r.NICLimits}, {"unchanged", r.Unchanged}} {
		if len(part.names) > 0 {
			fmt.Fprintf(&b, "%s %s ", part.what, strings.Join(part.names, ","))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.Failed)) {
		fmt.Fprintf(&b, "failed %s (%s) ", name, r.Failed[name])
	}
	if b.Len() == 0 {
		return "no VMs"
	}
	return strings.TrimSpace(b.String())
}

// maxConfig bounds a configuration put through the API: far above any
// real one (a VM is a few hundred bytes).
const maxConfig = 1 << 20

// Stream is a VM's serial console as one reader follows it.
type Stream struct {
	Past    []string      // the last lines before the reader came
	Lines   <-chan string // the lines that follow, for as long as the reader reads; closed when the VM is removed
	Dropped func() uint64 // lines lost so far because the reader did not keep up
	Close   func()
}

// Capture is a live capture of a switch port: a pcap stream (nanosecond
// timestamps, Ethernet), record by record.
type Capture interface {
	Header() []byte        // the file header
	Next() ([]byte, error) // the next record, header and frame, valid until the next call
	Buffered() int         // bytes already read and not returned: Next will not wait for them
	Close() error          // ends it; a Next blocked in it returns
}

// Capture limits: how many frames a client may ask for, and for how long.
const (
	maxCaptureFrames  = 10_000_000
	maxCaptureSeconds = 24 * 60 * 60
)

// Errors a Backend wraps to say which kind of failure it is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict") // the resource is not in a state that allows it
	ErrInvalid  = errors.New("invalid")  // what the client sent does not decode or is out of range
	ErrBusy     = errors.New("busy")     // too many of what was asked for at once; try later
)

// Console tails: how many past lines a reader may ask for, and gets unless
// it says.
const (
	maxConsoleTail     = 1000
	defaultConsoleTail = 50
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
	mux.HandleFunc("/v1/vms", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			reply(w, http.StatusOK, b.VMs())
		case http.MethodPost:
			body, ok := readBodyUpTo(w, r, maxConfig)
			if !ok {
				return
			}
			vm, err := b.CreateVM(string(body))
			if err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, vm)
		default:
			w.Header().Set("Allow", "GET, POST")
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only GET or POST", r.Method, r.URL.Path)})
		}
	})
	mux.HandleFunc("/v1/leases", only("GET", func(w http.ResponseWriter, r *http.Request) {
		leases, err := b.Leases()
		if err != nil {
			fail(w, err)
			return
		}
		if leases == nil {
			leases = []Lease{}
		}
		reply(w, http.StatusOK, leases)
	}))
	mux.HandleFunc("/v1/networks", only("GET", func(w http.ResponseWriter, r *http.Request) {
		nets, err := b.Networks()
		if err != nil {
			fail(w, err)
			return
		}
		if nets == nil {
			nets = []Network{}
		}
		reply(w, http.StatusOK, nets)
	}))
	mux.HandleFunc("/v1/ports", only("GET", func(w http.ResponseWriter, r *http.Request) {
		ports := b.Ports()
		if ports == nil {
			ports = []Port{} // [], not null
		}
		reply(w, http.StatusOK, ports)
	}))
	mux.HandleFunc("/v1/ports/{name}/capture", only("GET", func(w http.ResponseWriter, r *http.Request) {
		port := r.PathValue("name")
		if !ValidPort(port) {
			reply(w, http.StatusBadRequest, Error{fmt.Sprintf("port %q: want <vm>.<nic index>, host or uplink:<interface>", port)})
			return
		}
		count, ok := queryInt(w, r, "count", maxCaptureFrames)
		if !ok {
			return
		}
		seconds, ok := queryInt(w, r, "seconds", maxCaptureSeconds)
		if !ok {
			return
		}
		c, err := b.Capture(port)
		if err != nil {
			fail(w, err)
			return
		}
		defer c.Close()
		streamCapture(w, r, c, port, count, time.Duration(seconds)*time.Second)
	}))
	mux.HandleFunc("/v1/vms/{name}", withVM(func(w http.ResponseWriter, r *http.Request, name string) {
		switch r.Method {
		case http.MethodGet:
			vm, err := b.VM(name)
			if err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, vm)
		case http.MethodDelete:
			if err := b.DeleteVM(name); err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, Deleted{name})
		default:
			w.Header().Set("Allow", "GET, DELETE")
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only GET or DELETE", r.Method, r.URL.Path)})
		}
	}))
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
	mux.HandleFunc("/v1/config", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, b.Config())
		case http.MethodPut:
			body, ok := readBodyUpTo(w, r, maxConfig)
			if !ok {
				return
			}
			res, err := b.PutConfig(string(body))
			if err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, res)
		default:
			w.Header().Set("Allow", "GET, PUT")
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only GET or PUT", r.Method, r.URL.Path)})
		}
	})
	mux.HandleFunc("/v1/vms/{name}/console", withVM(func(w http.ResponseWriter, r *http.Request, name string) {
		switch r.Method {
		case http.MethodGet:
			tail := defaultConsoleTail
			if v := r.URL.Query().Get("tail"); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 || n > maxConsoleTail {
					reply(w, http.StatusBadRequest, Error{fmt.Sprintf("tail %q: want 0 to %d lines", v, maxConsoleTail)})
					return
				}
				tail = n
			}
			s, err := b.Console(name, tail)
			if err != nil {
				fail(w, err)
				return
			}
			defer s.Close()
			streamConsole(w, r, s)
		case http.MethodPost:
			body, ok := readBody(w, r)
			if !ok {
				return
			}
			lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
			if len(body) == 0 {
				reply(w, http.StatusBadRequest, Error{"POST console: want the lines to type, as the body"})
				return
			}
			if err := b.Send(name, lines); err != nil {
				fail(w, err)
				return
			}
			reply(w, http.StatusOK, Sent{Lines: len(lines)})
		default:
			w.Header().Set("Allow", "GET, POST")
			reply(w, http.StatusMethodNotAllowed, Error{fmt.Sprintf("%s %s: only GET or POST", r.Method, r.URL.Path)})
		}
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

// Deleted is the answer to a VM's deletion.
type Deleted struct {
	Deleted string `json:"deleted"`
}

// Sent is the answer to lines typed on a console.
type Sent struct {
	Lines int `json:"lines"`
}

// streamConsole writes s as text, a line at a time, until the client goes:
// the past lines, then each new one as it comes (flushed once no other is
// waiting). Lines a slow reader lost are said where they were lost.
func streamConsole(w http.ResponseWriter, r *http.Request, s *Stream) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flush := func() {}
	if f, ok := w.(http.Flusher); ok {
		flush = f.Flush
	}
	for _, l := range s.Past {
		io.WriteString(w, l+"\n")
	}
	flush()
	var lost uint64
	for {
		select {
		case <-r.Context().Done():
			return
		case l, ok := <-s.Lines:
			if !ok {
				return // the VM is gone
			}
			if d := s.Dropped(); d > lost {
				fmt.Fprintf(w, "[hyperroot: %d lines not shown: this reader did not keep up]\n", d-lost)
				lost = d
			}
			if _, err := io.WriteString(w, l+"\n"); err != nil {
				return
			}
			if len(s.Lines) == 0 {
				flush()
			}
		}
	}
}

// streamCapture writes c as a pcap file until count records (0: no limit)
// or d (0: none) have passed, or the client or the switch goes. Each
// record is flushed once no other is waiting to be written, so a reader
// such as `tcpdump -r -` sees frames as they come.
func streamCapture(w http.ResponseWriter, r *http.Request, c Capture, port string, count int, d time.Duration) {
	ctx := r.Context()
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	// Next blocks in the switch's stream: closing it is what ends the
	// wait when the client goes or the time is up.
	defer context.AfterFunc(ctx, func() { c.Close() })()
	w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", strings.ReplaceAll(port, ":", "-")+".pcap"))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if _, err := w.Write(c.Header()); err != nil {
		return
	}
	rc.Flush()
	for n := 0; count == 0 || n < count; n++ {
		rec, err := c.Next()
		if err != nil {
			return
		}
		if _, err := w.Write(rec); err != nil {
			return
		}
		if c.Buffered() == 0 {
			rc.Flush()
		}
	}
	rc.Flush()
}

// ValidPort checks a port name before it reaches the switch: a VM NIC's
// (<vm>.<index>), "host" or an uplink's ("uplink:<interface>").
func ValidPort(name string) bool {
	if name == "host" {
		return true
	}
	if ifname, ok := strings.CutPrefix(name, "uplink:"); ok {
		return ifname != "" && len(ifname) < 16 && !strings.ContainsAny(ifname, "/ \x00") && ifname != "." && ifname != ".."
	}
	vm, index, ok := strings.Cut(name, ".")
	n, err := strconv.Atoi(index)
	return ok && config.ValidName(vm) && err == nil && n >= 0 && n < 64 && strconv.Itoa(n) == index
}

// queryInt reads an optional whole-number query parameter in [0, limit];
// a bad one is answered 400 and ok is false.
func queryInt(w http.ResponseWriter, r *http.Request, key string, limit int) (v int, ok bool) {
	s := r.URL.Query().Get(key)
	if s == "" {
		return 0, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > limit {
		reply(w, http.StatusBadRequest, Error{fmt.Sprintf("%s %q: want 0 to %d", key, s, limit)})
		return 0, false
	}
	return n, true
}

// readBody reads a request's body, up to maxBody; a longer one is
// answered 413 and ok is false.
func readBody(w http.ResponseWriter, r *http.Request) (body []byte, ok bool) {
	return readBodyUpTo(w, r, maxBody)
}

// readBodyUpTo is readBody with another limit.
func readBodyUpTo(w http.ResponseWriter, r *http.Request, limit int) (body []byte, ok bool) {
	if r.Body == nil {
		return nil, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	switch {
	case len(body) > limit:
		reply(w, http.StatusRequestEntityTooLarge, Error{fmt.Sprintf("request body over %d bytes", limit)})
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
	case errors.Is(err, ErrBusy):
		code = http.StatusTooManyRequests
	}
	reply(w, code, Error{err.Error()})
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
