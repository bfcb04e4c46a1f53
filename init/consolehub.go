package main

import (
	"errors"
	"sync"
	"sync/atomic"
)

// consoleHub fans each VM's serial console lines out to the API's readers
// (GET /v1/vms/{name}/console), and keeps the last lines for a reader that
// comes later. Publishing never waits: a reader that does not keep up
// loses lines (counted, and said in its stream), never the VM's console or
// the appliance's, and however many readers there are, a line costs one
// non-blocking send to each.
type consoleHub struct {
	mu  sync.Mutex
	vms map[string]*vmConsole
}

// vmConsole is one VM's tail and readers.
type vmConsole struct {
	tail    [consoleTail]string
	next    int // where the next line goes in tail
	full    bool
	readers map[*consoleReader]struct{}
}

// consoleReader is one reader's queue of lines.
type consoleReader struct {
	lines   chan string
	dropped atomic.Uint64
}

const (
	// consoleTail lines of each VM are kept: a screenful and more.
	consoleTail = 200
	// consoleReaderQueue lines wait for a reader; at 4 KiB a line at
	// most (cutLine), 1 MiB of PID 1's memory per reader at worst.
	consoleReaderQueue = 256
	// maxConsoleReaders bounds the readers of one VM's console.
	maxConsoleReaders = 128
)

// errTooManyReaders refuses a reader beyond maxConsoleReaders.
var errTooManyReaders = errors.New("too many readers of this console")

func newConsoleHub() *consoleHub { return &consoleHub{vms: map[string]*vmConsole{}} }

func (h *consoleHub) vm(name string) *vmConsole {
	v := h.vms[name]
	if v == nil {
		v = &vmConsole{readers: map[*consoleReader]struct{}{}}
		h.vms[name] = v
	}
	return v
}

// publish adds a line of VM name's console.
func (h *consoleHub) publish(name, line string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vm(name)
	v.tail[v.next] = line
	v.next = (v.next + 1) % consoleTail
	v.full = v.full || v.next == 0
	for r := range v.readers {
		select {
		case r.lines <- line:
		default:
			r.dropped.Add(1)
		}
	}
}

// subscribe returns up to tail of VM name's last lines and a reader of
// the lines that follow them; cancel ends the reading.
func (h *consoleHub) subscribe(name string, tail int) (past []string, r *consoleReader, cancel func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vm(name)
	if len(v.readers) >= maxConsoleReaders {
		return nil, nil, nil, errTooManyReaders
	}
	n := v.next
	if v.full {
		n = consoleTail
	}
	tail = min(max(tail, 0), n)
	for i := range tail {
		past = append(past, v.tail[(v.next-tail+i+consoleTail)%consoleTail])
	}
	r = &consoleReader{lines: make(chan string, consoleReaderQueue)}
	v.readers[r] = struct{}{}
	return past, r, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(v.readers, r)
	}, nil
}

// drop forgets VM name's console: its tail, and its readers, whose queues
// are closed (their streams end).
func (h *consoleHub) drop(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v := h.vms[name]; v != nil {
		for r := range v.readers {
			close(r.lines)
		}
		delete(h.vms, name)
	}
}
