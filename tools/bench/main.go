// Command hyperroot-bench runs the appliance benchmarks that compare
// hyperroot with peer VMMs (gokvm, QEMU) side by side in one appliance run.
// It is carried only by the bench image (`go run ./tools/mkimage -bench`),
// never by a product image, and PID 1 starts it through the kernel command
// line option hyperroot.run=/bench/hyperroot-bench,<names>.
//
// Usage: hyperroot-bench [-hyperroot /bin/hyperroot] boot|bootlog|disk|net|debian|passthrough[,...]
//
// Each benchmark writes its figures as "bench: ..." lines on stdout; the
// first that fails ends the run with exit status 1, since a broken
// benchmark's later figures would be read as real.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/hyperroot/hyperroot/internal/child"
)

// env is what every benchmark needs: where the hyperroot binary is (for
// its vmm and switch roles), how to start children, and where to report.
type env struct {
	hyperroot string
	starter   child.Starter
	logf      func(format string, a ...any)
	// diskBackends, if set, names the disk benchmark's contenders.
	diskBackends []string
}

func main() {
	fs := flag.NewFlagSet("hyperroot-bench", flag.ContinueOnError)
	hyperroot := fs.String("hyperroot", "/bin/hyperroot", "the hyperroot binary (its vmm and switch commands)")
	disks := fs.String("disk-backends", "", "the disk benchmark's contenders, +-separated (hyperroot.run splits at commas), in order;\n"+
		"default uring+pool+qemu+qcow2+qemu-qcow2; uring-nopoll is io_uring with the disk's poll off")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: hyperroot-bench [-hyperroot PATH] boot|bootlog|disk|net|debian|passthrough[,...] ...\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var names []string
	for _, a := range fs.Args() {
		names = append(names, strings.Split(a, ",")...)
	}
	if len(names) == 0 {
		fs.Usage()
		os.Exit(2)
	}
	e := &env{hyperroot: *hyperroot, starter: child.Direct{},
		logf: func(format string, a ...any) { fmt.Printf(format+"\n", a...) }}
	if *disks != "" {
		e.diskBackends = strings.Split(*disks, "+")
	}
	if err := run(e, names); err != nil {
		fmt.Fprintf(os.Stderr, "hyperroot-bench: %v\n", err)
		os.Exit(1)
	}
}

// run runs the named benchmarks in order: boot (boot.go), bootlog
// (bootlog.go), disk (disk.go), net (net.go), debian (debian.go),
// passthrough (passthrough.go).
func run(e *env, names []string) error {
	for _, name := range names {
		var err error
		switch name {
		case "boot":
			err = runBootBench(e)
		case "disk":
			err = runDiskBench(e)
		case "net":
			err = runNetBench(e)
		case "debian":
			err = runDebianBench(e)
		case "passthrough":
			err = runPassthroughBench(e)
		case "bootlog":
			err = runBootLogBench(e)
		default:
			err = fmt.Errorf("unknown benchmark %q (known: boot, bootlog, disk, net, debian, passthrough)", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
