package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Reader reads a capture this package's Writer wrote, record by record,
// for whoever relays one it did not make: PID 1 passes a jailed switch's
// live capture on to an API client, so the stream is checked as hostile
// input (the file header, each record's lengths) and never trusted to say
// how much to read.
type Reader struct {
	r       io.Reader
	header  [fileHeader]byte
	snaplen uint32
	buf     []byte // the last record, header included; reused
}

// ErrFormat is wrapped by the errors about a stream that is not a capture
// the Writer makes.
var ErrFormat = errors.New("pcap: not a nanosecond Ethernet capture")

// NewReader reads and checks the file header.
func NewReader(r io.Reader) (*Reader, error) {
	p := &Reader{r: r}
	if _, err := io.ReadFull(r, p.header[:]); err != nil {
		return nil, fmt.Errorf("pcap: file header: %w", err)
	}
	h := p.header[:]
	p.snaplen = binary.LittleEndian.Uint32(h[16:])
	if binary.LittleEndian.Uint32(h[0:]) != magicNanos || binary.LittleEndian.Uint16(h[4:]) != 2 ||
		binary.LittleEndian.Uint32(h[20:]) != linkEthernet || p.snaplen == 0 || p.snaplen > MaxSnaplen {
		return nil, fmt.Errorf("%w: file header % x", ErrFormat, h)
	}
	return p, nil
}

// Header is the file header as read.
func (p *Reader) Header() []byte { return p.header[:] }

// Next reads the next record and returns it whole (record header and
// frame), valid until the next call. A record longer than the snaplen, or
// claiming more than the frame's original length, is ErrFormat; the end
// of the stream between records is io.EOF.
func (p *Reader) Next() ([]byte, error) {
	var h [recordHeader]byte
	if _, err := io.ReadFull(p.r, h[:]); err != nil {
		return nil, err // io.EOF between records, ErrUnexpectedEOF inside
	}
	incl, orig := binary.LittleEndian.Uint32(h[8:]), binary.LittleEndian.Uint32(h[12:])
	if incl > p.snaplen || incl > orig || binary.LittleEndian.Uint32(h[4:]) >= 1e9 {
		return nil, fmt.Errorf("%w: record header % x (snaplen %d)", ErrFormat, h, p.snaplen)
	}
	n := recordHeader + int(incl)
	if cap(p.buf) < n {
		p.buf = make([]byte, n, max(n, 2048))
	}
	p.buf = p.buf[:n]
	copy(p.buf, h[:])
	if _, err := io.ReadFull(p.r, p.buf[recordHeader:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return p.buf, nil
}
