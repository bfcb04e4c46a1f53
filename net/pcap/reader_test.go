package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// TestReaderReadsWriter: what the Writer writes, the Reader gives back
// record by record, byte for byte.
func TestReaderReadsWriter(t *testing.T) {
	var out testenv.Buffer
	w, err := New(&out, 100)
	if err != nil {
		t.Fatal(err)
	}
	frames := [][]byte{frame(0, 1, 60), frame(0, 2, 1514), frame(0, 3, 14)}
	for _, f := range frames {
		w.WriteFrame(f, time.Unix(1, 5))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	all := out.Bytes()
	r, err := NewReader(bytes.NewReader(all))
	if err != nil {
		t.Fatal(err)
	}
	got := bytes.Clone(r.Header())
	for i, f := range frames {
		rec, err := r.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if data := rec[recordHeader:]; !bytes.Equal(data, f[:min(len(f), 100)]) {
			t.Errorf("record %d: %d bytes, not the frame's first %d", i, len(data), min(len(f), 100))
		}
		got = append(got, rec...)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last record: %v, want EOF", err)
	}
	if !bytes.Equal(got, all) {
		t.Error("the records read do not add up to the stream")
	}
}

func TestReaderRefuses(t *testing.T) {
	var out testenv.Buffer
	w, _ := New(&out, 0)
	w.WriteFrame(frame(0, 1, 60), time.Unix(1, 0))
	w.Close()
	good := out.Bytes()
	for name, mutate := range map[string]func(b []byte) []byte{
		"magic":          func(b []byte) []byte { b[0] ^= 1; return b },
		"link type":      func(b []byte) []byte { b[20] = 101; return b },
		"snaplen":        func(b []byte) []byte { binary.LittleEndian.PutUint32(b[16:], MaxSnaplen+1); return b },
		"incl > snaplen": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[fileHeader+8:], 1<<31); return b },
		"incl > orig":    func(b []byte) []byte { binary.LittleEndian.PutUint32(b[fileHeader+12:], 10); return b },
		"nanoseconds":    func(b []byte) []byte { binary.LittleEndian.PutUint32(b[fileHeader+4:], 1e9); return b },
		"cut frame":      func(b []byte) []byte { return b[:len(b)-1] },
		"cut header":     func(b []byte) []byte { return b[:fileHeader+3] },
	} {
		b := mutate(bytes.Clone(good))
		r, err := NewReader(bytes.NewReader(b))
		if err == nil {
			_, err = r.Next()
		}
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: %v, want an error", name, err)
		}
	}
}

func FuzzReader(f *testing.F) {
	var out testenv.Buffer
	w, _ := New(&out, 0)
	w.WriteFrame(frame(0, 1, 60), time.Unix(1, 0))
	w.WriteFrame(frame(0, 2, 200), time.Unix(2, 0))
	w.Close()
	f.Add(out.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		total := fileHeader
		for {
			rec, err := r.Next()
			if err != nil {
				return
			}
			if len(rec) < recordHeader || len(rec) > recordHeader+MaxSnaplen {
				t.Fatalf("record of %d bytes", len(rec))
			}
			if total += len(rec); total > len(b) {
				t.Fatalf("read %d bytes of a %d-byte stream", total, len(b))
			}
		}
	})
}
