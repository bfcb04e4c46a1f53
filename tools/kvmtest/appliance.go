package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/internal/kvmtests"
	"github.com/hyperroot/hyperroot/tools/qemu"
)

// appliance stages the module's KVM tests or benchmarks, boots a oneshot
// appliance that runs them, and prints their output (the console's "run| "
// lines, without the prefix) and the verdict. It returns the exit status.
func appliance(args []string) int {
	fs := flag.NewFlagSet("kvmtest appliance", flag.ContinueOnError)
	bench := fs.Bool("bench", false, "run the KVM benchmarks instead of the tests")
	image := fs.String("image", "out/image", "the built appliance image")
	silence := fs.Duration("silence", 5*time.Minute, "give up when the console has been silent this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	mode := kvmtests.Tests
	if *bench {
		mode = kvmtests.Benchmarks
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "kvmtest:", err)
		return 1
	}
	pkgs, err := kvmtests.Find(".")
	if err != nil {
		return fail(err)
	}
	tmp, err := os.MkdirTemp("", "kvmtest-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	overlay := filepath.Join(tmp, "overlay")
	_, files, err := kvmtests.Stage("go", ".", overlay, pkgs, mode)
	if err != nil {
		return fail(err)
	}
	cfg := filepath.Join(tmp, "config.yaml")
	if err := os.WriteFile(cfg, []byte("vms: []\n"), 0o644); err != nil {
		return fail(err)
	}
	m, err := qemu.Start(context.Background(), qemu.Options{Image: *image, Config: cfg, Overlay: overlay, Files: files,
		Oneshot: true, Append: "hyperroot.run=" + kvmtests.Command, Silence: *silence,
		Console: &runLines{}})
	if err != nil {
		return fail(err)
	}
	r := m.Wait()
	if !r.OK() {
		fmt.Fprintf(os.Stderr, "kvmtest: appliance: %s\n", r.Why())
		return 1
	}
	return 0
}

// runLines prints the run job's lines of the console as they come.
type runLines struct{ partial []byte }

func (w *runLines) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(w.partial[:i]), "\r")
		w.partial = w.partial[i+1:]
		if rest, ok := strings.CutPrefix(line, "run| "); ok {
			fmt.Println(rest)
		} else if strings.Contains(line, "hyperroot: result ") || strings.Contains(line, "hyperroot: error: ") {
			fmt.Println(line)
		}
	}
}
