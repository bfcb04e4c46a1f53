package config

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExamples parses every configuration under examples/: what the README
// points users at must stay valid.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Parse(filepath.Base(f), data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(c.VMs) == 0 {
			t.Errorf("%s: no VMs", f)
		}
	}
}
