package main

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestConsoleHubTail(t *testing.T) {
	h := newConsoleHub()
	for i := range 5 {
		h.publish("a", fmt.Sprint(i))
	}
	past, r, cancel, err := h.subscribe("a", 3)
	if err != nil || !slices.Equal(past, []string{"2", "3", "4"}) {
		t.Fatalf("tail 3 of 5: %q, %v", past, err)
	}
	h.publish("a", "5")
	h.publish("b", "other")
	if l := <-r.lines; l != "5" {
		t.Errorf("next line %q", l)
	}
	cancel()
	h.publish("a", "6")
	if len(r.lines) != 0 {
		t.Error("a cancelled reader got a line")
	}
	for i := range consoleTail + 7 {
		h.publish("a", fmt.Sprint(100+i))
	}
	past, _, _, _ = h.subscribe("a", 10*consoleTail)
	if len(past) != consoleTail || past[0] != "107" || past[consoleTail-1] != fmt.Sprint(100+consoleTail+6) {
		t.Errorf("tail after wrapping: %d lines, %q ... %q", len(past), past[0], past[len(past)-1])
	}
	if past, _, _, _ := h.subscribe("new", 50); len(past) != 0 {
		t.Errorf("a console with no lines has a tail: %q", past)
	}
}

// TestConsoleHubSlowReaders: readers that never read do not slow the
// publisher, which is the VM's relay; they lose lines, counted.
func TestConsoleHubSlowReaders(t *testing.T) {
	h := newConsoleHub()
	var readers []*consoleReader
	for range maxConsoleReaders {
		_, r, _, err := h.subscribe("a", 0)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, r)
	}
	if _, _, _, err := h.subscribe("a", 0); err != errTooManyReaders {
		t.Errorf("reader %d: %v", maxConsoleReaders+1, err)
	}
	const lines = 20000
	began := time.Now()
	for i := range lines {
		h.publish("a", fmt.Sprint(i))
	}
	took := time.Since(began)
	t.Logf("%d lines to %d stalled readers: %s (%s a line)", lines, len(readers), took, took/lines)
	for _, r := range readers {
		if len(r.lines) != consoleReaderQueue || r.dropped.Load() != lines-consoleReaderQueue {
			t.Fatalf("a stalled reader holds %d lines and dropped %d", len(r.lines), r.dropped.Load())
		}
	}
}

func BenchmarkConsoleHubPublish(b *testing.B) {
	h := newConsoleHub()
	for range 100 {
		h.subscribe("a", 0)
	}
	b.ReportAllocs()
	for b.Loop() {
		h.publish("a", "guest: a line of a VM's console")
	}
}
