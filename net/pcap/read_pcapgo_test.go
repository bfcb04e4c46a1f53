package pcap

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// readCapture reads a capture back with gopacket's pcapgo. It needs
// golang.org/x/net in go.sum (pcapgo's live-capture code imports it), so it
// is built with -tags pcapgo; read_test.go is the default reader.
func readCapture(t *testing.T, b []byte) (snaplen int, recs []record) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("pcapgo.NewReader: %v", err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", r.LinkType())
	}
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("record %d: %v", len(recs), err)
		}
		if ci.CaptureLength != len(data) {
			t.Fatalf("record %d: capture length %d, data %d", len(recs), ci.CaptureLength, len(data))
		}
		recs = append(recs, record{ts: ci.Timestamp, orig: ci.Length, data: data})
	}
	return int(r.Snaplen()), recs
}
