// Package pcap records frames crossing the switch as a libpcap capture
// stream that tcpdump, Wireshark and gopacket's pcapgo read.
//
// The format is written here rather than through gopacket's pcapgo because
// pcapgo's package also holds its live-capture code, which pulls
// golang.org/x/net into the build; the file format itself is two fixed
// little-endian headers. The test reads captures back with an independent
// reader (pcapgo's when built with -tags pcapgo).
//
// Forwarding goroutines must never wait for a disk: WriteFrame only copies
// the frame into a bounded in-memory ring and a background goroutine writes
// the ring out. When the ring is full, frames are dropped and counted.
package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

const (
	// magicNanos marks a capture with nanosecond timestamps.
	magicNanos   = 0xa1b23c4d
	linkEthernet = 1
	fileHeader   = 24
	recordHeader = 16
	// DefaultSnaplen is used when New is given a snaplen <= 0: larger than
	// any frame the switch moves (64 KiB TSO super-frames included).
	DefaultSnaplen = 65535 + 14 + 12
	// MaxSnaplen is the largest snaplen readers accept (libpcap's limit).
	MaxSnaplen = 262144
	// minRing is the ring's smallest size: about 700 full-size frames,
	// enough to ride out a slow disk for a burst without dropping.
	minRing = 1 << 20
)

// ErrClosed is returned by WriteFrame after Close.
var ErrClosed = errors.New("pcap: writer closed")

// Writer writes an Ethernet capture. It is safe for concurrent use.
type Writer struct {
	w       io.Writer
	snaplen int

	mu      sync.Mutex
	ready   sync.Cond // signalled when data is queued or on close
	drained sync.Cond // signalled when the flusher consumed data
	ring    []byte
	head    uint64 // bytes ever queued
	tail    uint64 // bytes ever written out (or discarded after an error)
	closed  bool
	err     error // first write error, sticky
	dropped uint64
	done    chan struct{}
}

// New writes the capture file header to w and starts the goroutine that
// drains queued frames into w. Frames longer than snaplen are truncated
// (the record keeps their original length). The caller keeps ownership of
// w; Close flushes but does not close it.
func New(w io.Writer, snaplen int) (*Writer, error) {
	if snaplen <= 0 {
		snaplen = DefaultSnaplen
	}
	if snaplen > MaxSnaplen {
		return nil, fmt.Errorf("pcap: snaplen %d above %d", snaplen, MaxSnaplen)
	}
	var h [fileHeader]byte
	binary.LittleEndian.PutUint32(h[0:], magicNanos)
	binary.LittleEndian.PutUint16(h[4:], 2) // version 2.4
	binary.LittleEndian.PutUint16(h[6:], 4)
	// thiszone and sigfigs stay zero: timestamps are UTC.
	binary.LittleEndian.PutUint32(h[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(h[20:], linkEthernet)
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap: write file header: %w", err)
	}
	p := &Writer{
		w:       w,
		snaplen: snaplen,
		ring:    make([]byte, max(minRing, 4*(recordHeader+snaplen))),
		done:    make(chan struct{}),
	}
	p.ready.L = &p.mu
	p.drained.L = &p.mu
	go p.flusher()
	return p, nil
}

// WriteFrame queues one frame seen at t. It never blocks on the output: if
// the ring has no room the frame is dropped (see Dropped) and nil is
// returned, since losing a frame from a capture must not slow the switch.
// It returns the first output error, once one occurred, and ErrClosed
// after Close. It does not allocate.
func (p *Writer) WriteFrame(frame []byte, t time.Time) error {
	caplen := min(len(frame), p.snaplen)
	var h [recordHeader]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(h[4:], uint32(t.Nanosecond()))
	binary.LittleEndian.PutUint32(h[8:], uint32(caplen))
	binary.LittleEndian.PutUint32(h[12:], uint32(len(frame)))

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.err != nil {
		return p.err
	}
	if uint64(len(p.ring))-(p.head-p.tail) < uint64(recordHeader+caplen) {
		p.dropped++
		return nil
	}
	p.put(h[:])
	p.put(frame[:caplen])
	p.ready.Signal()
	return nil
}

// put copies b into the ring at head, wrapping around. Called with mu held
// and enough free room.
func (p *Writer) put(b []byte) {
	at := int(p.head % uint64(len(p.ring)))
	n := copy(p.ring[at:], b)
	copy(p.ring, b[n:])
	p.head += uint64(len(b))
}

// flusher writes queued bytes out in the order they were queued. It
// writes without holding mu: producers only ever fill the free part of the
// ring, never the part between tail and head being written.
func (p *Writer) flusher() {
	defer close(p.done)
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for p.head == p.tail && !p.closed {
			p.ready.Wait()
		}
		if p.head == p.tail {
			return // closed and empty
		}
		at := p.tail % uint64(len(p.ring))
		n := min(p.head-p.tail, uint64(len(p.ring))-at)
		chunk := p.ring[at : at+n]
		failed := p.err != nil
		p.mu.Unlock()
		var err error
		if !failed {
			_, err = p.w.Write(chunk)
		}
		p.mu.Lock()
		if err != nil && p.err == nil {
			p.err = fmt.Errorf("pcap: write: %w", err)
		}
		p.tail += n
		p.drained.Broadcast()
	}
}

// Flush waits until every frame queued so far has been written out and
// returns the first output error, if any.
func (p *Writer) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	target := p.head
	for p.tail < target {
		p.drained.Wait()
	}
	return p.err
}

// Close flushes queued frames and stops the writer. Later WriteFrame calls
// return ErrClosed. It returns the first output error, if any.
func (p *Writer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		return p.err
	}
	p.closed = true
	p.ready.Signal()
	p.mu.Unlock()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Dropped returns how many frames were dropped because the ring was full.
func (p *Writer) Dropped() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
}
